//! The agent's clocks: wall-clock nanoseconds (batch times) and the offset that turns the
//! probe's CLOCK_MONOTONIC timestamps (`bpf_ktime_get_ns`) into Unix time.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unix time minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads), in nanoseconds.
pub(crate) fn monotonic_to_unix_offset() -> u64 {
    let monotonic = xdt_datapath::sys::monotonic_ns().unwrap_or(0);
    unix_ns().saturating_sub(monotonic)
}
