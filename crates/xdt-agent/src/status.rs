//! The one-line status systemd shows (`STATUS=`, `systemctl status`).

use std::{fmt::Write as _, sync::atomic::Ordering};

use crate::{
    config::Config,
    flows::{self, FlowStats, Flows},
    shared::Shared,
    source::Snapshot,
    steer::Steering,
};

/// The one-line `STATUS=` for `systemctl status`: packet and bit rates, central, steering.
pub(crate) struct StatusLine {
    iface: String,
    central: String,
    steering: Option<String>,
    flows: Option<std::sync::Arc<FlowStats>>,
    last: Option<(u64, u64, std::time::Instant)>,
}

impl StatusLine {
    pub(crate) fn new(config: &Config, steering: Option<&Steering>, flows: Option<&Flows>) -> Self {
        Self {
            iface: config.interface.clone(),
            central: config.central.clone(),
            steering: steering.map(|s| {
                let stats = s.stats();
                format!("steering {} socket(s) {}", stats.sockets, stats.mode)
            }),
            flows: flows.map(Flows::shared_stats),
            last: None,
        }
    }

    pub(crate) fn line(&mut self, snapshot: Option<&Snapshot>, shared: &Shared) -> String {
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
        if let Some(stats) = &self.flows {
            let _ = write!(line, "; flows: {}", flows::summary(stats));
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
