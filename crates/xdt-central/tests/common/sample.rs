//! What the benchmarks send: a sampled event of a busy HTTPS service and the probe's counters
//! (their names from the probe's catalogue). Included by each benchmark with `#[path]`.

#![allow(
    dead_code,
    reason = "each benchmark uses a different part of this file"
)]

use xdt_wire::Event;

/// The `i`-th sampled TCP segment of a bulk HTTPS transfer, read at `timestamp_unix_ns`.
pub fn event(timestamp_unix_ns: u64, i: u64) -> Event {
    Event {
        timestamp_unix_ns,
        label: "web".into(),
        rule: 3,
        action: "sample".into(),
        rx_queue: 1,
        protocol: 6,
        src: "198.51.100.23".parse().expect("ip"),
        dst: "203.0.113.10".parse().expect("ip"),
        src_port: 40_000 + u16::try_from(i % 20_000).expect("below 20,000"),
        dst_port: 443,
        ip_len: 1500,
        payload_len: 1448,
        tcp_flags: 0x10,
        inspection: None,
    }
}

/// Every counter of the probe, the `n`-th (from 0) at `value(n)`.
pub fn counters(value: impl Fn(u64) -> u64) -> Vec<(String, u64)> {
    xdt_common::counters::NAMES
        .iter()
        .zip(0..)
        .map(|(name, n)| ((*name).to_owned(), value(n)))
        .collect()
}
