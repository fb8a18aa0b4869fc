//! The agent's health where there is no systemd watchdog (a Kubernetes liveness probe): at each
//! point where the agent would feed the watchdog, it also writes the time to a heartbeat file,
//! and `xdt-agent --check-heartbeat FILE --max-age SECONDS` says whether that time is recent.
//!
//! The file holds CLOCK_MONOTONIC nanoseconds (the clock the steering thread's liveness uses
//! too), not a wall-clock time and not the file's mtime: a clock step by NTP must neither restart
//! a healthy agent nor keep a hung one alive. The probe runs in the agent's container, so it
//! reads the same clock.
//!
//! The main loop never waits on the file system: it hands the time to a writer thread through a
//! one-slot channel and goes on. A writer stuck on the file system leaves the slot full, later
//! beats are skipped, the file ages and the probe fails, as it should.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::mpsc::{SyncSender, TrySendError, sync_channel},
    time::Duration,
};

use log::{info, warn};

/// How often the agent beats without a systemd watchdog (with one, at least as often as it
/// feeds the watchdog). A probe's max age should be several of these.
pub const PERIOD: Duration = Duration::from_secs(2);

/// A heartbeat file holds one decimal number and a newline; anything longer is not ours.
const MAX_BYTES: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error(
        "no heartbeat file {0}: the agent is not running with --heartbeat {0}, or has not \
         reached its main loop yet"
    )]
    Missing(PathBuf),
    #[error("reading the heartbeat file {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the heartbeat file {path} does not hold a time in nanoseconds: {content:?}")]
    Malformed { path: PathBuf, content: String },
    #[error(
        "the heartbeat in {path} is {age:.1?} old, more than {max_age:?}: the agent's main loop \
         or its steering thread has stopped (or the agent is stopped or gone)"
    )]
    Stale {
        path: PathBuf,
        age: Duration,
        max_age: Duration,
    },
    #[error(
        "the heartbeat in {0} is ahead of this machine's clock: written before a reboot, not by \
         an agent running now"
    )]
    Ahead(PathBuf),
    #[error("reading CLOCK_MONOTONIC failed")]
    Clock(#[source] xdt_datapath::Error),
}

/// The writing side, owned by the main loop.
#[derive(Debug)]
pub struct Heartbeat {
    beats: SyncSender<u64>,
    path: PathBuf,
    /// Whether the last beat could not be handed over (said once, not at every beat).
    stuck: std::cell::Cell<bool>,
}

impl Heartbeat {
    /// Removes a heartbeat an earlier agent left (it must not vouch for this one) and starts the
    /// writer thread. Call it after capabilities are dropped: the thread needs none, and should
    /// hold none.
    pub fn start(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (beats, received) = sync_channel::<u64>(1);
        let target = path.to_owned();
        let temporary = sibling_temporary(path);
        std::thread::Builder::new()
            .name("xdt-heartbeat".into())
            .spawn(move || {
                let mut failing = false;
                for now in received {
                    // Written beside and renamed over: a probe never reads half a number.
                    let written = std::fs::write(&temporary, format!("{now}\n"))
                        .and_then(|()| std::fs::rename(&temporary, &target));
                    match written {
                        Err(e) if !failing => {
                            warn!("writing the heartbeat {} failed: {e}", target.display());
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
            })?;
        Ok(Self {
            beats,
            path: path.to_owned(),
            stuck: std::cell::Cell::new(false),
        })
    }

    /// Records that the agent is alive now; never waits.
    pub fn beat(&self) {
        let Ok(now) = xdt_datapath::sys::monotonic_ns() else {
            return;
        };
        let stuck = match self.beats.try_send(now) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some("is still writing the previous beat"),
            Err(TrySendError::Disconnected(_)) => Some("is gone"),
        };
        match (stuck, self.stuck.replace(stuck.is_some())) {
            (Some(why), false) => warn!(
                "the heartbeat writer {why}: {} ages until it takes beats again",
                self.path.display()
            ),
            (None, true) => info!("the heartbeat writer takes beats again"),
            _ => {}
        }
    }
}

fn sibling_temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    path.with_file_name(name)
}

/// How old the heartbeat in `path` is, if no older than `max_age`.
pub fn check(path: &Path, max_age: Duration) -> Result<Duration, HeartbeatError> {
    let read_error = |source| HeartbeatError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(HeartbeatError::Missing(path.to_owned()));
        }
        Err(e) => return Err(read_error(e)),
    };
    let mut content = String::new();
    file.take(MAX_BYTES)
        .read_to_string(&mut content)
        .map_err(read_error)?;
    let beat: u64 = content
        .trim()
        .parse()
        .map_err(|_| HeartbeatError::Malformed {
            path: path.to_owned(),
            content: content.clone(),
        })?;
    let now = xdt_datapath::sys::monotonic_ns().map_err(HeartbeatError::Clock)?;
    let Some(age) = now.checked_sub(beat).map(Duration::from_nanos) else {
        return Err(HeartbeatError::Ahead(path.to_owned()));
    };
    if age > max_age {
        return Err(HeartbeatError::Stale {
            path: path.to_owned(),
            age,
            max_age,
        });
    }
    Ok(age)
}
