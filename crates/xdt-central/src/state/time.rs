//! Times and rates as `f64`: agents' nanosecond clocks, central's Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

#[expect(
    clippy::cast_precision_loss,
    reason = "rates and times for display: 53 bits of precision are plenty"
)]
pub(crate) fn to_f64(value: u64) -> f64 {
    value as f64
}

/// How far past central's clock an agent's `taken_at` may be (clock skew between hosts).
pub(super) const FUTURE_TOLERANCE_NS: u64 = 5_000_000_000;

/// Unix seconds as nanoseconds (0 before the epoch).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a time of day in nanoseconds fits u64 until 2554; negative ones become 0"
)]
pub(super) fn unix_ns(seconds: f64) -> u64 {
    (seconds * 1e9).max(0.0) as u64
}

/// Nanoseconds as seconds.
#[must_use]
pub fn seconds(ns: u64) -> f64 {
    to_f64(ns) / 1e9
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
