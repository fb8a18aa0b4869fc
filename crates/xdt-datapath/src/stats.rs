//! Counter snapshots and the arithmetic on them (sums, deltas, rates): pure functions, tested
//! without root.

use std::time::Duration;

use serde::Serialize;
use xdt_common::counters::{COUNT, Counter, Counters, NAMES};

use crate::maps::LabelCount;

/// Counters of one interface at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Counters,
    pub labels: Vec<LabelCount>,
}

impl Snapshot {
    /// The `xdt stats --json` object: every counter by its stable name, then `labels`.
    #[must_use]
    pub fn to_json(&self, iface: &str) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("interface".into(), iface.into());
        for (name, value) in NAMES.iter().zip(self.counters.values) {
            object.insert((*name).into(), value.into());
        }
        object.insert(
            "labels".into(),
            serde_json::to_value(&self.labels).unwrap_or_default(),
        );
        serde_json::Value::Object(object)
    }
}

/// Packet and byte rates between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rates {
    pub packets_per_second: f64,
    pub bits_per_second: f64,
}

/// `later - earlier`, counter by counter; counters never go back while attached, so a smaller
/// later value means a re-attach and counts from zero.
#[must_use]
pub fn delta(earlier: &Counters, later: &Counters) -> Counters {
    let mut out = Counters::ZERO;
    for i in 0..COUNT {
        out.values[i] = if later.values[i] >= earlier.values[i] {
            later.values[i] - earlier.values[i]
        } else {
            later.values[i]
        };
    }
    out
}

#[must_use]
pub fn rates(earlier: &Counters, later: &Counters, elapsed: Duration) -> Rates {
    let d = delta(earlier, later);
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return Rates {
            packets_per_second: 0.0,
            bits_per_second: 0.0,
        };
    }
    #[expect(clippy::cast_precision_loss, reason = "rates are shown, not summed")]
    Rates {
        packets_per_second: d.get(Counter::TotalPackets) as f64 / seconds,
        bits_per_second: d.get(Counter::TotalBytes) as f64 * 8.0 / seconds,
    }
}

/// A rate with an SI suffix: 1234567.0 -> "1.23M".
#[must_use]
pub fn human(value: f64) -> String {
    let (scaled, unit) = match value {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if unit.is_empty() {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.2}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(total: u64, bytes: u64) -> Counters {
        let mut c = Counters::ZERO;
        c.values[Counter::TotalPackets as usize] = total;
        c.values[Counter::TotalBytes as usize] = bytes;
        c
    }

    #[test]
    fn rates_over_an_interval() {
        let r = rates(
            &counters(100, 10_000),
            &counters(1100, 110_000),
            Duration::from_millis(500),
        );
        assert!((r.packets_per_second - 2000.0).abs() < 1e-9);
        assert!((r.bits_per_second - 1_600_000.0).abs() < 1e-6);
        assert!(
            rates(&counters(1, 1), &counters(2, 2), Duration::ZERO)
                .packets_per_second
                .abs()
                < f64::EPSILON
        );
    }

    #[test]
    fn delta_restarts_after_reattach() {
        let d = delta(&counters(500, 1), &counters(20, 3));
        assert_eq!(d.get(Counter::TotalPackets), 20);
        assert_eq!(d.get(Counter::TotalBytes), 2);
    }

    #[test]
    fn json_keeps_the_otel_demo_names() {
        let s = Snapshot {
            counters: counters(7, 700),
            labels: vec![LabelCount {
                label: "web".into(),
                packets: 3,
                bytes: 300,
            }],
        };
        let v = s.to_json("eth0");
        for name in [
            "total_packets",
            "total_bytes",
            "tcp_packets",
            "udp_packets",
            "icmp_packets",
            "other_packets",
            "ipv4_packets",
            "ipv6_packets",
            "lost_events",
        ] {
            assert!(v.get(name).is_some(), "{name} missing");
        }
        assert_eq!(v["total_packets"], 7);
        assert_eq!(v["labels"][0]["label"], "web");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1234.0), "1.23k");
        assert_eq!(human(2_500_000.0), "2.50M");
        assert_eq!(human(3e9), "3.00G");
    }
}
