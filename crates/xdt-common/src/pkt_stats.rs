//! The otel demo's `struct pkt_stats`: eight `u64` counters in entry 0 of an array map of
//! another XDP program, which the agent exports instead of xdt's own probe (`--map-name`,
//! `--map-id`). Not a map of xdt's probe: its layout is the demo's, named here once for the
//! agent that reads it and the tests that check what becomes of it.

/// The fields of `struct pkt_stats`, in order: the counter names they are exported as.
pub const FIELDS: [&str; 8] = [
    "total_packets",
    "total_bytes",
    "icmp_packets",
    "tcp_packets",
    "udp_packets",
    "other_packets",
    "ipv4_packets",
    "ipv6_packets",
];
