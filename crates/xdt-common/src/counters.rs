//! `XDT_COUNTERS`: the interface's per-CPU packet counters (one entry, index 0).
//!
//! Counters only grow while the probe is attached. Invariants user space and tests rely on:
//! `tcp + udp + icmp + other == total_packets` and `ipv4 + ipv6 + non_ip == total_packets`.

use crate::user_pod;

pub const MAP: &str = "XDT_COUNTERS";
pub const MAX_ENTRIES: u32 = 1;

/// Declares the counters: each entry is a variant of [`Counter`] (its index in
/// [`Counters::values`], so the order is the ABI) and its [`Info`] in [`CATALOGUE`]. Adding a
/// counter is one entry here and its increment in the probe: `NAMES`, `xdt stats`, the agent,
/// central's `/metrics.json`, Prometheus, OTLP and the dashboard all read this table.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $info:expr,)+) => {
        /// Index of each counter in [`Counters::values`].
        #[repr(usize)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)+
        }

        pub const COUNT: usize = [$(Counter::$variant),+].len();

        /// Every counter, in [`Counter`] order.
        pub const CATALOGUE: [Info; COUNT] = [$($info.of(Counter::$variant),)+];
    };
}

counters! {
    TotalPackets = Info::new("total_packets", "{packet}", "Packets seen by the XDP probe.")
        .prometheus("xdp_packets", "Packets seen by the XDP probe.")
        .otlp("xdp.packets.total", "Total packets processed"),
    TotalBytes = Info::new("total_bytes", "By", "Bytes seen by the XDP probe.")
        .prometheus("xdp_bytes", "Bytes seen by the XDP probe.")
        .otlp("xdp.bytes.total", "Total bytes processed"),
    Ipv4Packets = Info::new("ipv4_packets", "{packet}", "IPv4 packets.")
        .prometheus("xdp_packets_ipv4", "IPv4 packets.")
        .otlp("xdp.packets.ipv4", "IPv4 packets"),
    Ipv6Packets = Info::new("ipv6_packets", "{packet}", "IPv6 packets.")
        .prometheus("xdp_packets_ipv6", "IPv6 packets.")
        .otlp("xdp.packets.ipv6", "IPv6 packets"),
    /// Ethertype neither IPv4 nor IPv6 (ARP, LLDP, ...), or a frame too short for Ethernet.
    NonIpPackets = Info::new("non_ip_packets", "{packet}",
        "Frames neither IPv4 nor IPv6 (ARP, LLDP, ...), or too short for Ethernet."),
    TcpPackets = Info::new("tcp_packets", "{packet}", "TCP packets.")
        .prometheus("xdp_packets_tcp", "TCP packets.")
        .otlp("xdp.packets.tcp", "TCP packets")
        .protocol("TCP"),
    UdpPackets = Info::new("udp_packets", "{packet}", "UDP packets.")
        .prometheus("xdp_packets_udp", "UDP packets.")
        .otlp("xdp.packets.udp", "UDP packets")
        .protocol("UDP"),
    /// ICMP and ICMPv6.
    IcmpPackets = Info::new("icmp_packets", "{packet}", "ICMP and ICMPv6 packets.")
        .prometheus("xdp_packets_icmp", "ICMP and ICMPv6 packets.")
        .otlp("xdp.packets.icmp", "ICMP packets")
        .protocol("ICMP"),
    /// Everything that is not TCP, UDP or ICMP, including non-IP and unparseable frames.
    OtherPackets = Info::new("other_packets", "{packet}", "Packets neither TCP, UDP nor ICMP.")
        .prometheus("xdp_packets_other", "Packets neither TCP, UDP nor ICMP.")
        .otlp("xdp.packets.other", "Other protocol packets")
        .protocol("Other"),
    /// Frames carrying one or two 802.1Q / 802.1ad tags.
    VlanPackets = Info::new("vlan_packets", "{packet}",
        "Frames carrying one or two 802.1Q / 802.1ad tags."),
    /// IPv4 or IPv6 fragments (first and later); later fragments have no L4 header.
    FragmentPackets = Info::new("fragment_packets", "{packet}",
        "IPv4 or IPv6 fragments, first and later."),
    /// A header announced by the frame ends past the frame's end.
    TruncatedPackets = Info::new("truncated_packets", "{packet}",
        "Frames with a header that ends past the frame's end."),
    /// Headers that contradict themselves: IPv4 IHL below 5, IP version not matching ethertype.
    MalformedPackets = Info::new("malformed_packets", "{packet}",
        "Frames whose headers contradict themselves."),
    /// IPv6 packets whose extension header chain is longer than the probe walks.
    ExtHeaderLimitPackets = Info::new("ext_header_limit_packets", "{packet}",
        "IPv6 packets with more extension headers than the probe walks."),
    /// Packets that matched a rule.
    MatchedPackets = Info::new("matched_packets", "{packet}", "Packets that matched a rule."),
    /// Packets dropped by a `drop` rule.
    DroppedPackets = Info::new("dropped_packets", "{packet}", "Packets dropped by a drop rule.")
        .prometheus("xdp_packets_dropped", "Packets dropped by a drop rule.")
        .shown(Panel::Losses { label: "Dropped packets", hint: "by drop rules (intended)", severity: Severity::Warn }),
    /// Sampled events written to the ring buffer.
    SampledEvents = Info::new("sampled_events", "{event}",
        "Sampled events written to the probe's ring buffer."),
    /// Sampled events lost because the ring buffer was full.
    LostEvents = Info::new("lost_events", "{event}",
        "Sampled events lost in the kernel because the probe's ring buffer was full.")
        .prometheus("xdp_lost_events",
            "Sampled events lost in the kernel because the probe's ring buffer was full.")
        .shown(Panel::Losses { label: "Probe lost events", hint: "ring buffer full in the kernel", severity: Severity::Loss }),
    /// Packets of `steer` rules redirected to the agent's AF_XDP socket.
    SteeredPackets = Info::new("steered_packets", "{packet}",
        "Packets of steer rules the probe redirected to the agent's AF_XDP socket.")
        .prometheus("xdp_steered_packets",
            "Packets of steer rules the probe redirected to the agent's AF_XDP socket."),
    /// Packets of `steer` rules passed to the kernel stack instead: no live agent socket on the
    /// RX queue, an expired agent lease, or no room for the metadata (fail-open).
    SteerFallbackPackets = Info::new("steer_fallback_packets", "{packet}",
        "Packets of steer rules passed to the stack instead: no live agent socket or lease.")
        .prometheus("xdp_steer_fallback_packets",
            "Packets of steer rules passed to the stack instead: no live agent socket or lease."),
    /// Internal errors (a map lookup that failed); the packet was passed.
    Errors = Info::new("errors", "{error}",
        "Internal errors of the probe (a failed map lookup); the packet was passed.")
        .prometheus("xdp_errors",
            "Internal errors of the probe (a failed map lookup); the packet was passed.")
        .shown(Panel::Losses { label: "Probe errors", hint: "packet passed, counted", severity: Severity::Warn }),
    /// Packets of a flow that had no record and found the flow table full (or, never seen on
    /// a preallocated table, out of memory): the packet is counted everywhere else, only its
    /// flow is missing. Nothing is evicted to make room.
    FlowTableFull = Info::new("flow_table_full", "{packet}",
        "Packets whose flow was not recorded because the probe's flow table was full.")
        .prometheus("xdp_flow_table_full",
            "Packets whose flow was not recorded because the probe's flow table was full.")
        .shown(Panel::Losses { label: "Flow table full", hint: "packets of unrecorded flows", severity: Severity::Loss }),
}

/// What user space needs to know of a counter: its stable name, what it means, and how each
/// exporter and the dashboard show it. Constants only: the probe never reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub counter: Counter,
    /// Stable name: `xdt stats --json`, the agent's batches, `/metrics.json` (the otel demo's
    /// names for the first ones).
    pub name: &'static str,
    /// UCUM unit (OTLP's convention): `{packet}`, `By`, ...
    pub unit: &'static str,
    pub help: &'static str,
    /// The Prometheus family (without the `_total` counters get) and its help, if exported.
    pub prometheus: Option<Export>,
    /// The OTLP instrument and its description, if exported.
    pub otlp: Option<Export>,
    /// Where the dashboard shows it, besides the raw counters.
    pub panel: Option<Panel>,
}

/// A name and a description in one exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub name: &'static str,
    pub help: &'static str,
}

/// A panel of the dashboard's agent view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    /// A bar of the protocol breakdown.
    Protocols { label: &'static str },
    /// A figure of the AF_XDP steering card's throughput (central's steering catalogue).
    Flow { label: &'static str },
    /// A tile of the loss panel; `hint` says where or why.
    Losses {
        label: &'static str,
        hint: &'static str,
        severity: Severity,
    },
}

/// How a figure above zero is flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Telemetry lost (red, counted in the agent's loss).
    Loss,
    /// Worth a look (amber).
    Warn,
    /// Neutral.
    Info,
}

impl Panel {
    /// The panel's name in central's `/catalogue.json`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Protocols { .. } => "protocols",
            Self::Flow { .. } => "flow",
            Self::Losses { .. } => "losses",
        }
    }
}

impl Severity {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Warn => "warn",
            Self::Info => "info",
        }
    }
}

impl Info {
    const fn new(name: &'static str, unit: &'static str, help: &'static str) -> Self {
        Self {
            counter: Counter::TotalPackets,
            name,
            unit,
            help,
            prometheus: None,
            otlp: None,
            panel: None,
        }
    }

    const fn of(self, counter: Counter) -> Self {
        Self { counter, ..self }
    }

    const fn prometheus(self, name: &'static str, help: &'static str) -> Self {
        Self {
            prometheus: Some(Export { name, help }),
            ..self
        }
    }

    const fn otlp(self, name: &'static str, help: &'static str) -> Self {
        Self {
            otlp: Some(Export { name, help }),
            ..self
        }
    }

    const fn protocol(self, label: &'static str) -> Self {
        self.shown(Panel::Protocols { label })
    }

    const fn shown(self, panel: Panel) -> Self {
        Self {
            panel: Some(panel),
            ..self
        }
    }
}

impl Counter {
    /// The counter's catalogue entry.
    #[must_use]
    pub const fn info(self) -> &'static Info {
        &CATALOGUE[self as usize]
    }

    /// Its stable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        self.info().name
    }
}

/// Stable names, as printed by `xdt stats --json`, in [`Counter`] order.
pub const NAMES: [&str; COUNT] = {
    let mut names = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        names[i] = CATALOGUE[i].name;
        i += 1;
    }
    names
};

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

const _: () = assert!(core::mem::size_of::<Counters>() == COUNT * 8);

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are keys in every export: a repeated one would hide a counter.
    #[test]
    fn names_and_exported_names_are_unique() {
        for (i, a) in CATALOGUE.iter().enumerate() {
            assert_eq!(a.counter as usize, i, "{}", a.name);
            for b in &CATALOGUE[i + 1..] {
                assert_ne!(a.name, b.name);
                let name = |e: Option<Export>| e.map(|e| e.name);
                if a.prometheus.is_some() {
                    assert_ne!(name(a.prometheus), name(b.prometheus), "{}", a.name);
                }
                if a.otlp.is_some() {
                    assert_ne!(name(a.otlp), name(b.otlp), "{}", a.name);
                }
            }
        }
        assert_eq!(Counter::LostEvents.name(), "lost_events");
        assert_eq!(NAMES[Counter::Errors as usize], "errors");
    }
}
