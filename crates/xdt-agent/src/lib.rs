//! `xdt-agent`: reads the counters and sampled events of the probe attached to one interface
//! (or a foreign `pkt_stats` map), batches them every interval and streams them to central with
//! at-least-once delivery (docs/telemetry-protocol.md).
//!
//! Three tasks share an [`outbox::Outbox`]: the event reader (ring buffer via `AsyncFd`), the
//! ticker (one batch per interval) and the uplink (connect, handshake, send, take acks,
//! reconnect with backoff). The binary parses arguments, turns signals into [`Control`]s and
//! calls [`run`], which opens everything, drops every capability (unless told not to), tells
//! systemd it is ready and keeps its watchdog fed from the ticker's loop.

pub mod heartbeat;
mod labels;
pub mod outbox;
pub mod privileges;
pub mod source;
mod split;
pub mod steer;
mod uplink;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use tokio::{io::unix::AsyncFd, sync::Notify};
use xdt_datapath::{
    attached::AttachedProbe,
    events::{Event as ProbeEvent, EventReader},
};
use xdt_systemd::notify::Notifier;
use xdt_wire::{AgentStats, Batch, Event, Hello};

use crate::{
    outbox::Outbox,
    source::{MapSelector, Source},
};

/// Everything the agent needs, from flags or environment (see `main.rs`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The interface whose pinned probe is read; also reported to central.
    pub interface: String,
    pub central: String,
    pub agent_id: String,
    /// The shared token (read from the token file).
    pub token: String,
    pub interval: Duration,
    /// Export this foreign map instead of xdt's probe.
    pub foreign_map: Option<MapSelector>,
    /// Unacknowledged batches kept (default: one hour at one per second).
    pub max_batches: usize,
    /// Events kept in unacknowledged batches and not yet batched, together.
    pub max_events: usize,
    /// AF_XDP steering of `steer` rules; `None` leaves them to the kernel path (fail-open).
    pub steer: Option<steer::SteerConfig>,
    /// Drop every capability once the maps, ring buffer and sockets are open.
    pub drop_capabilities: bool,
    /// Where to write a heartbeat wherever the watchdog is fed (see [`heartbeat`]).
    pub heartbeat: Option<std::path::PathBuf>,
}

/// What the binary asks of a running agent (from signals).
#[derive(Debug)]
pub enum Control {
    /// Flush and stop (SIGTERM, SIGINT).
    Stop,
    /// Apply a re-read configuration (SIGHUP) without dropping the connection to central:
    /// interval and buffer bounds change in place, label names are read again; a change of
    /// anything else is reported as needing a restart.
    Reload(Box<Config>),
    /// Test-only fault (`XDT_TEST_FAULTS=hang-on-sigusr2`): the main loop stops for good, as a
    /// deadlock would, so systemd's watchdog has something to catch.
    Hang,
}

/// Reads and validates the token file: its content without surrounding whitespace.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use xdt_systemd::input;
    let text = input::read_text(path, input::MAX_TOKEN_BYTES)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// How long a stop waits for central to acknowledge what is left.
const FLUSH: Duration = Duration::from_secs(5);

/// State the tasks share.
#[derive(Debug)]
struct Shared {
    outbox: Mutex<Outbox>,
    /// Events read from the ring and not batched yet.
    /// A deque: dropping the oldest of a full buffer is O(dropped), not a shift of the rest.
    pending: Mutex<VecDeque<Event>>,
    /// Events dropped from `pending` because it was full.
    pending_dropped: AtomicU64,
    reconnects: AtomicU64,
    /// Whether a session with central is up (for the status line).
    connected: AtomicBool,
    new_batch: Notify,
    /// Events held (pending or in the outbox), as recorded in the probe's ledger.
    held: AtomicU64,
    /// The probe's `XDT_AGENT` (absent for a foreign map, or a probe attached without it).
    ledger: Mutex<Option<xdt_datapath::ledger::Ledger>>,
}

impl Shared {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dropped_events(&self) -> u64 {
        self.outbox().dropped_events + self.pending_dropped.load(Ordering::Relaxed)
    }

    /// Changes the outbox and records the change in events held.
    fn change_outbox<T>(&self, change: impl FnOnce(&mut Outbox) -> T) -> T {
        self.change_outbox_taking(0, change)
    }

    /// [`Shared::change_outbox`] with `taken` events that left `pending` for it, recorded in
    /// the same update.
    fn change_outbox_taking<T>(&self, taken: usize, change: impl FnOnce(&mut Outbox) -> T) -> T {
        let mut outbox = self.outbox();
        let before = outbox.events();
        let result = change(&mut outbox);
        let after = outbox.events();
        drop(outbox);
        self.held_changed(after, before + taken);
        result
    }

    /// Records `added` events more and `removed` fewer held, in the probe's ledger too: what a successor counts as
    /// lost if this process dies now. Written under the ledger's lock with the latest total, so
    /// the map never goes back to an older figure.
    fn held_changed(&self, added: usize, removed: usize) {
        if added == removed {
            return;
        }
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some((held + added as u64).saturating_sub(removed as u64))
            });
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ledger) = ledger.as_mut() {
            let held = self.held.load(Ordering::Relaxed);
            if let Err(e) = ledger.set_undelivered(held) {
                warn!("updating the agent ledger failed: {e}");
            }
        }
    }
}

/// Opens the probe's ledger and takes over from the previous agent: the events it held
/// undelivered when it ended are lost, and counted here (`dropped_events`).
fn take_over_ledger(probe: &AttachedProbe, shared: &Shared) {
    let iface = probe.interface();
    match probe.ledger() {
        Ok(Some(mut ledger)) => {
            match ledger.undelivered() {
                Ok(0) => {}
                Ok(lost) => {
                    warn!(
                        "the previous agent of {iface} ended holding {lost} events central never \
                         acknowledged (killed, or stopped before central took them): lost, \
                         counted in dropped_events"
                    );
                    shared.pending_dropped.fetch_add(lost, Ordering::Relaxed);
                }
                Err(e) => warn!("reading the agent ledger failed: {e}"),
            }
            if let Err(e) = ledger.set_undelivered(0) {
                warn!("resetting the agent ledger failed: {e}");
            }
            *shared.ledger.lock().unwrap_or_else(PoisonError::into_inner) = Some(ledger);
        }
        Ok(None) => warn!(
            "the probe on {iface} was attached without an agent ledger (XDT_AGENT): events a \
             killed agent held cannot be counted; attach it again to have one"
        ),
        Err(e) => warn!("opening the agent ledger failed: {e}"),
    }
}

/// Runs until [`Control::Stop`] (or the sender is dropped), then flushes unacknowledged
/// batches for up to 5 s.
pub async fn run(
    mut config: Config,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
) -> Result<()> {
    let notifier = Notifier::new();
    let source = match &config.foreign_map {
        Some(selector) => Source::pkt_stats(selector)?,
        None => Source::xdt_probe(&config.interface)?,
    };
    info!(
        "xdt-agent {} starting: interface {}, central {}, agent id {}, source {source:?}",
        env!("CARGO_PKG_VERSION"),
        config.interface,
        config.central,
        config.agent_id
    );
    let shared = Arc::new(Shared {
        outbox: Mutex::new(Outbox::new(config.max_batches, config.max_events)),
        pending: Mutex::new(VecDeque::new()),
        pending_dropped: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        new_batch: Notify::new(),
        held: AtomicU64::new(0),
        ledger: Mutex::new(None),
    });
    if let Some(probe) = source.probe() {
        take_over_ledger(probe, &shared);
    }
    let hello = Hello {
        agent_id: config.agent_id.clone(),
        hostname: hostname(),
        interface: config.interface.clone(),
        probe_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance: random_u64(),
        token: config.token.clone(),
    };

    let steering = match (&config.steer, source.probe()) {
        (Some(steer_config), Some(probe)) => {
            let steer_config = &steer::SteerConfig {
                drop_capabilities: config.drop_capabilities,
                ..steer_config.clone()
            };
            let sink_shared = shared.clone();
            let max_pending = config.max_events;
            let sink: steer::EventSink =
                Arc::new(move |events| push_pending(&sink_shared, events, max_pending));
            Some(
                steer::Steering::start(probe, steer_config, sink)
                    .await
                    .with_context(|| format!("AF_XDP steering on {}", config.interface))?,
            )
        }
        _ => None,
    };

    let ring = source.probe().map(open_events);
    // Everything is open: from here on no capability is needed, and no thread has been started
    // yet by this one (the uplink's name lookups run on threads the runtime starts later).
    if config.drop_capabilities {
        privileges::drop_all().context("dropping capabilities")?;
        info!("capabilities dropped");
    }
    let heartbeat = match &config.heartbeat {
        Some(path) => Some(
            heartbeat::Heartbeat::start(path)
                .with_context(|| format!("starting the heartbeat {}", path.display()))?,
        ),
        None => None,
    };
    let events = ring.flatten().map(|(ring, names)| {
        tokio::spawn(read_events(ring, names, shared.clone(), config.max_events))
    });
    let (stop_uplink, uplink_stop) = tokio::sync::watch::channel(false);
    let mut uplink = tokio::spawn(uplink::run(
        config.central.clone(),
        hello,
        shared.clone(),
        uplink_stop,
    ));

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog_period = notifier.watchdog_period();
    // Without systemd the heartbeat alone sets the pace; with both, the faster one.
    let health_period = match (watchdog_period, &heartbeat) {
        (Some(w), Some(_)) => Some(w.min(heartbeat::PERIOD)),
        (None, Some(_)) => Some(heartbeat::PERIOD),
        (period, None) => period,
    };
    let mut watchdog = tokio::time::interval(health_period.unwrap_or(Duration::from_hours(1)));
    let mut sequence = 0u64;
    let mut runtime = RuntimeSampler::default();
    let mut status = StatusLine::new(&config, steering.as_ref());
    notifier.ready(&status.line(None, &shared));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = watchdog.tick() => {
                // The loop is alive if it got here; steering's thread must be too.
                let period = health_period.unwrap_or(Duration::MAX);
                if steering.as_ref().is_none_or(|s| s.alive(period)) {
                    notifier.watchdog();
                    if let Some(heartbeat) = &heartbeat {
                        heartbeat.beat();
                    }
                } else {
                    warn!(
                        "the steering thread has not run for {period:?}: not feeding the \
                         watchdog or the heartbeat"
                    );
                }
                continue;
            }
            command = control.recv() => match command {
                None | Some(Control::Stop) => break,
                Some(Control::Reload(new)) => {
                    notifier.reloading();
                    reload(&mut config, &new, &shared, &mut ticker);
                    status = StatusLine::new(&config, steering.as_ref());
                    notifier.reloaded(&status.line(None, &shared));
                    continue;
                }
                Some(Control::Hang) => {
                    warn!("test fault: the main loop hangs now (XDT_TEST_FAULTS=hang-on-sigusr2)");
                    loop {
                        std::thread::park();
                    }
                }
            },
        }
        let steer_stats = steering.as_ref().map(steer::Steering::stats);
        let snapshot = make_batches(
            &source,
            &shared,
            &mut sequence,
            &mut runtime,
            steer_stats.as_ref(),
        )?;
        notifier.status(&status.line(Some(&snapshot), &shared));
    }
    notifier.stopping("flushing unacknowledged batches");
    // Steering off first (the probe passes steered packets from here on), then a last batch
    // with what is pending, then what is left of FLUSH to deliver everything. Nothing in here
    // waits on central beyond it: the uplink drops its connection when told to stop, even in
    // the middle of a write to a central that stopped reading.
    let deadline = tokio::time::Instant::now() + FLUSH;
    let steer_stats = match steering {
        Some(steering) => Some(steering.stop().await),
        None => None,
    };
    make_batches(
        &source,
        &shared,
        &mut sequence,
        &mut runtime,
        steer_stats.as_ref(),
    )?;
    if let Some(events) = events {
        events.abort();
    }
    while !shared.outbox().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_uplink.send(true);
    if tokio::time::timeout(Duration::from_millis(500), &mut uplink)
        .await
        .is_err()
    {
        uplink.abort();
    }
    let (left, events) = {
        let outbox = shared.outbox();
        (outbox.len(), outbox.events())
    };
    if left > 0 {
        warn!(
            "stopping with {left} batches central did not acknowledge within {FLUSH:?}: \
             {events} sampled or steered events in them are lost (counters are not: they are \
             cumulative)"
        );
    }
    info!("xdt-agent stopped after {sequence} batches");
    Ok(())
}

/// Applies what a reload can change in place and names what needs a restart.
fn reload(config: &mut Config, new: &Config, shared: &Shared, ticker: &mut tokio::time::Interval) {
    let restart: Vec<&str> = [
        (new.interface != config.interface, "interface"),
        (new.central != config.central, "central"),
        (new.agent_id != config.agent_id, "agent id"),
        (new.token != config.token, "token"),
        (new.foreign_map != config.foreign_map, "map"),
        (new.heartbeat != config.heartbeat, "heartbeat"),
        (new.steer != config.steer, "steering"),
        (
            new.drop_capabilities != config.drop_capabilities,
            "capabilities",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, name)| changed.then_some(name))
    .collect();
    if new.interval != config.interval {
        *ticker = tokio::time::interval(new.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        config.interval = new.interval;
    }
    config.max_batches = new.max_batches;
    config.max_events = new.max_events;
    shared.change_outbox(|o| o.set_limits(config.max_batches, config.max_events));
    labels::reread_all();
    if restart.is_empty() {
        info!(
            "reloaded: interval {:?}, buffers {} batches / {} events; label names read again",
            config.interval, config.max_batches, config.max_events
        );
    } else {
        warn!(
            "reloaded interval, buffers and label names; changed {} take effect at the next restart",
            restart.join(", ")
        );
    }
}

/// The one-line `STATUS=` for `systemctl status`: packet and bit rates, central, steering.
struct StatusLine {
    iface: String,
    central: String,
    steering: Option<String>,
    last: Option<(u64, u64, std::time::Instant)>,
}

impl StatusLine {
    fn new(config: &Config, steering: Option<&steer::Steering>) -> Self {
        Self {
            iface: config.interface.clone(),
            central: config.central.clone(),
            steering: steering.map(|s| {
                let stats = s.stats();
                format!("steering {} socket(s) {}", stats.sockets, stats.mode)
            }),
            last: None,
        }
    }

    fn line(&mut self, snapshot: Option<&source::Snapshot>, shared: &Shared) -> String {
        let counter = |name: &str| {
            snapshot.and_then(|s| s.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
        };
        let mut line = self.iface.clone();
        if let (Some(packets), Some(bytes)) = (counter("total_packets"), counter("total_bytes")) {
            let now = std::time::Instant::now();
            if let Some((p0, b0, t0)) = self.last {
                let seconds = now.duration_since(t0).as_secs_f64().max(1e-3);
                #[expect(clippy::cast_precision_loss, reason = "rates for display")]
                let (pps, bps) = (
                    packets.saturating_sub(p0) as f64 / seconds,
                    bytes.saturating_sub(b0) as f64 * 8.0 / seconds,
                );
                let _ = write!(line, ": {} pps, {} bit/s", si(pps), si(bps));
            }
            self.last = Some((packets, bytes, now));
        }
        let central = if shared.connected.load(Ordering::Relaxed) {
            "connected"
        } else {
            "connecting"
        };
        let _ = write!(line, "; central {} {central}", self.central);
        let unacked = shared.outbox().len();
        if unacked > 1 {
            let _ = write!(line, " ({unacked} batches queued)");
        }
        if let Some(steering) = &self.steering {
            let _ = write!(line, "; {steering}");
        }
        let dropped = shared.dropped_events();
        if dropped > 0 {
            let _ = write!(line, "; {dropped} events dropped");
        }
        line
    }
}

/// 12345.6 -> "12.3k".
fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Batches everything pending: one batch, or as many as the events need to keep every frame
/// within the wire's maximum (all with the same counter snapshot; see [`split`]). Returns the
/// counters it read (for the status line).
fn make_batches(
    source: &Source,
    shared: &Shared,
    sequence: &mut u64,
    runtime: &mut RuntimeSampler,
    steering: Option<&xdt_wire::SteeringStats>,
) -> Result<source::Snapshot> {
    let snapshot = source.snapshot()?;
    let events: Vec<Event> = std::mem::take(&mut *shared.pending()).into();
    let moved = events.len();
    let probe_ns_per_packet = source.probe().and_then(|p| runtime.sample(p));
    let taken_at_unix_ns = unix_ns();
    let agent = |dropped_events, unacked_batches| AgentStats {
        dropped_events,
        unacked_batches,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        probe_ns_per_packet,
        steering: steering.cloned(),
    };
    // The widest numbers any of these batches can carry: varints grow with the value.
    let template = Batch {
        sequence: u64::MAX,
        taken_at_unix_ns,
        counters: snapshot.counters.clone(),
        labels: snapshot.labels.clone(),
        events: Vec::new(),
        agent: agent(u64::MAX, u32::MAX),
    };
    let groups = split::split(&template, events, xdt_wire::MAX_FRAME)?;
    if groups.unfit > 0 {
        warn!(
            "{} events do not fit in a frame even alone: dropped",
            groups.unfit
        );
        shared
            .pending_dropped
            .fetch_add(groups.unfit as u64, Ordering::Relaxed);
    }
    let dropped_events = shared.dropped_events();
    shared.change_outbox_taking(moved, |outbox| {
        for events in groups.groups {
            *sequence += 1;
            let unacked_batches = u32::try_from(outbox.len()).unwrap_or(u32::MAX);
            outbox.push(Batch {
                sequence: *sequence,
                events,
                agent: agent(dropped_events, unacked_batches),
                ..template.clone()
            });
        }
    });
    shared.new_batch.notify_one();
    Ok(snapshot)
}

/// The probe's mean cost per packet over the last interval, from the program's run time and
/// count (which the kernel keeps only while kernel.bpf_stats_enabled=1).
#[derive(Default)]
struct RuntimeSampler {
    last: Option<(Duration, u64)>,
}

impl RuntimeSampler {
    fn sample(&mut self, probe: &AttachedProbe) -> Option<f64> {
        let now = probe.program_runtime().ok()?;
        let last = self.last.replace(now)?;
        let runs = now.1.checked_sub(last.1).filter(|r| *r > 0)?;
        let time = now.0.checked_sub(last.0)?;
        #[expect(clippy::cast_precision_loss, reason = "a mean for display")]
        Some(time.as_nanos() as f64 / runs as f64)
    }
}

/// Opens the probe's ring buffer and label names (before capabilities go); `None`, with a
/// warning, if the ring buffer cannot be read.
fn open_events(probe: &AttachedProbe) -> Option<(AsyncFd<EventReader>, labels::LabelNames)> {
    let iface = probe.interface();
    let opened = probe
        .events()
        .and_then(|r| Ok((r, probe.label_names()?)))
        .map_err(anyhow::Error::from)
        .and_then(|(r, names)| {
            // SAFETY: the reader owns the ring buffer's descriptor and keeps it open, unchanged,
            // for as long as it lives, and the AsyncFd owns the reader.
            unsafe { AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE) }
                .map(|ring| (ring, labels::LabelNames::new(names)))
                .map_err(|e| anyhow::Error::from(e.into_parts().1))
        });
    match opened {
        Ok(opened) => Some(opened),
        Err(e) => {
            warn!("sampled events unavailable on {iface}: {e:#}");
            None
        }
    }
}

/// Reads sampled events from the probe's ring buffer into `shared.pending` until aborted.
async fn read_events(
    mut ring: AsyncFd<EventReader>,
    mut names: labels::LabelNames,
    shared: Arc<Shared>,
    max_pending: usize,
) {
    let offset = monotonic_to_unix_offset();
    let mut fresh = Vec::new();
    loop {
        // A wake-up lost between draining and re-arming costs at most 200 ms.
        if let Ok(Ok(mut guard)) =
            tokio::time::timeout(Duration::from_millis(200), ring.readable_mut()).await
        {
            guard.clear_ready();
        }
        let reader = ring.get_mut();
        reader.drain(&mut |raw| {
            let e = ProbeEvent::decode(raw, names.covering(raw.label));
            fresh.push(Event {
                timestamp_unix_ns: e.timestamp_ns.wrapping_add(offset),
                label: e.label,
                rule: e.rule,
                action: e.action.to_owned(),
                rx_queue: e.rx_queue,
                protocol: e.protocol,
                src: e.src,
                dst: e.dst,
                src_port: e.src_port,
                dst_port: e.dst_port,
                ip_len: e.ip_len,
                payload_len: e.payload_len,
                tcp_flags: e.tcp_flags,
                inspection: None,
            });
        });
        if fresh.is_empty() {
            continue;
        }
        push_pending(&shared, std::mem::take(&mut fresh), max_pending);
    }
}

/// Adds events to the next batch, dropping (and counting) the oldest beyond `max_pending`.
fn push_pending(shared: &Shared, fresh: Vec<Event>, max_pending: usize) {
    let mut pending = shared.pending();
    let before = pending.len();
    pending.extend(fresh);
    if pending.len() > max_pending {
        let excess = pending.len() - max_pending;
        pending.drain(..excess);
        shared
            .pending_dropped
            .fetch_add(excess as u64, Ordering::Relaxed);
    }
    let after = pending.len();
    drop(pending);
    shared.held_changed(after, before);
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unix time minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads), in nanoseconds.
pub(crate) fn monotonic_to_unix_offset() -> u64 {
    let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec().cast_unsigned() * 1_000_000_000 + t.tv_nsec().cast_unsigned()
    });
    unix_ns().saturating_sub(monotonic)
}

fn hostname() -> String {
    nix::unistd::gethostname().map_or_else(
        |_| "unknown".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// The default agent id, `host/IF`: one interface, one agent at central (the agents of a
/// host's interfaces would collide under the host name alone).
#[must_use]
pub fn default_agent_id(interface: &str) -> String {
    format!("{}/{interface}", hostname())
}

pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return u64::from_ne_bytes(bytes);
    }
    unix_ns() ^ u64::from(std::process::id()) << 32
}
