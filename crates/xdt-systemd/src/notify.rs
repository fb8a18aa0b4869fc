//! sd_notify(3) messages. Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing, so
//! the daemons call them unconditionally.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's side of a daemon's life: readiness, a one-line status, watchdog
/// keep-alives and the stop.
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    /// Reads `$WATCHDOG_USEC` (and `$WATCHDOG_PID`) once, at start.
    #[must_use]
    pub fn new() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often to send [`Notifier::watchdog`]: half of `WatchdogSec=`, or `None` without
    /// a watchdog.
    #[must_use]
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|limit| limit / 2)
    }

    /// `READY=1` with a first status line.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=`: one line for `systemctl status`.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` (with the monotonic time systemd 253+ asks for), before a reload.
    pub fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// `READY=1` again once a reload is applied, with the new status.
    pub fn reloaded(&self, status: &str) {
        self.ready(status);
    }

    /// `WATCHDOG=1`: the main loop is alive. Only the loop whose liveness matters calls it.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1` with what is left to do.
    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}
