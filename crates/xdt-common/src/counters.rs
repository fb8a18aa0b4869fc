//! `XDT_COUNTERS`: the interface's per-CPU packet counters (one entry, index 0).
//!
//! Counters only grow while the probe is attached. Invariants user space and tests rely on:
//! `tcp + udp + icmp + other == total_packets` and `ipv4 + ipv6 + non_ip == total_packets`.

use crate::user_pod;

pub const MAP: &str = "XDT_COUNTERS";
pub const MAX_ENTRIES: u32 = 1;

/// Index of each counter in [`Counters::values`].
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    TotalPackets,
    TotalBytes,
    Ipv4Packets,
    Ipv6Packets,
    /// Ethertype neither IPv4 nor IPv6 (ARP, LLDP, ...), or a frame too short for Ethernet.
    NonIpPackets,
    TcpPackets,
    UdpPackets,
    /// ICMP and ICMPv6.
    IcmpPackets,
    /// Everything that is not TCP, UDP or ICMP, including non-IP and unparseable frames.
    OtherPackets,
    /// Frames carrying one or two 802.1Q / 802.1ad tags.
    VlanPackets,
    /// IPv4 or IPv6 fragments (first and later); later fragments have no L4 header.
    FragmentPackets,
    /// A header announced by the frame ends past the frame's end.
    TruncatedPackets,
    /// Headers that contradict themselves: IPv4 IHL below 5, IP version not matching ethertype.
    MalformedPackets,
    /// IPv6 packets whose extension header chain is longer than the probe walks.
    ExtHeaderLimitPackets,
    /// Packets that matched a rule.
    MatchedPackets,
    /// Packets dropped by a `drop` rule.
    DroppedPackets,
    /// Sampled events written to the ring buffer.
    SampledEvents,
    /// Sampled events lost because the ring buffer was full.
    LostEvents,
    /// Packets of `steer` rules redirected to the agent's AF_XDP socket.
    SteeredPackets,
    /// Packets of `steer` rules passed to the kernel stack instead: no live agent socket on the
    /// RX queue, an expired agent lease, or no room for the metadata (fail-open).
    SteerFallbackPackets,
    /// Internal errors (a map lookup that failed); the packet was passed.
    Errors,
}

pub const COUNT: usize = 21;

/// Stable names, as printed by `xdt stats --json` (the otel demo's names for the first ones).
pub const NAMES: [&str; COUNT] = [
    "total_packets",
    "total_bytes",
    "ipv4_packets",
    "ipv6_packets",
    "non_ip_packets",
    "tcp_packets",
    "udp_packets",
    "icmp_packets",
    "other_packets",
    "vlan_packets",
    "fragment_packets",
    "truncated_packets",
    "malformed_packets",
    "ext_header_limit_packets",
    "matched_packets",
    "dropped_packets",
    "sampled_events",
    "lost_events",
    "steered_packets",
    "steer_fallback_packets",
    "errors",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNT],
}

impl Counters {
    pub const ZERO: Self = Self { values: [0; COUNT] };

    #[must_use]
    pub const fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::ZERO
    }
}

user_pod!(Counters);

const _: () = assert!(Counter::Errors as usize == COUNT - 1);
const _: () = assert!(core::mem::size_of::<Counters>() == COUNT * 8);
