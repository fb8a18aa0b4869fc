//! The xdt XDP probe: counts every frame, labels IP packets by the first matching rule, samples
//! metadata of `sample` rules into a ring buffer, redirects packets of `steer` rules to the
//! agent's AF_XDP socket (passing them when the agent cannot take them) and drops only for
//! `drop` rules.
//!
//! It reads top to bottom like the packet: Ethernet, VLAN tags, IPv4 or IPv6 (extension headers,
//! fragments), L4 ports, rule match, count, sample, verdict, and, when the operator sized a flow
//! table, the packet's flow record. Any frame the probe cannot follow is
//! counted for what it is (truncated, malformed, non-IP, ...) and passed: it never drops traffic
//! by accident. Map layouts come from `xdt-common`.
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write types (their fetching forms need BPF v3
// and Linux 5.12); the intrinsic with its result unused compiles to the plain atomic add
// every BPF kernel has.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd: see above")]

mod runtime;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_adjust_meta},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf, XskMap},
    programs::XdpContext,
};
use xdt_common::{
    agent::AgentLedger,
    config::{Config, Generation},
    counters::{Counter, Counters},
    events::{RING_BYTES, SampledEvent},
    flows::{FlowKey, FlowRecord, OFF_ENTRIES, spread_tcp_flags},
    labels::{LabelName, LabelStats, MAX_LABELS},
    rules::{
        ACTION_DROP, ACTION_SAMPLE, ACTION_STEER, CandidateList, DEFAULT_MAX_RULES, MATCH_DST,
        MATCH_PORT, MATCH_PROTOCOL, MATCH_SRC, MAX_CANDIDATES, Rule, max_lists,
    },
    steer::{MAX_QUEUES, META_MAGIC, SteerLease, SteerMeta},
    trie::{
        CHILD, DEFAULT_TRIE_NODES, IPV4_CHILD_LEVELS, IPV6_CHILD_LEVELS, NODES_PER_ROOT, PATH,
        Root, TrieNode, nodes_per_generation, path,
    },
};

// Sizes of the rule maps are the defaults; user space sets the real ones before loading.
#[map]
static XDT_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static XDT_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static XDT_LABEL_STATS: PerCpuArray<LabelStats> = PerCpuArray::with_max_entries(MAX_LABELS, 0);
#[map]
static XDT_LABEL_NAMES: Array<LabelName> = Array::with_max_entries(MAX_LABELS, 0);
#[map]
static XDT_RULES: Array<Rule> = Array::with_max_entries(2 * DEFAULT_MAX_RULES, 0);
#[map]
static XDT_CANDIDATES: Array<CandidateList> =
    Array::with_max_entries(2 * max_lists(DEFAULT_MAX_RULES), 0);
#[map]
static XDT_TRIE: Array<TrieNode> =
    Array::with_max_entries(2 * nodes_per_generation(DEFAULT_TRIE_NODES), 0);
/// Per rule slot, per CPU: matches since the last sampled event.
#[map]
static XDT_SAMPLE_HITS: PerCpuArray<u32> = PerCpuArray::with_max_entries(2 * DEFAULT_MAX_RULES, 0);
#[map]
static XDT_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
/// The agent's AF_XDP sockets by RX queue.
#[map]
static XDT_XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
/// The agent's steering lease (see `xdt_common::steer`).
#[map]
static XDT_STEER: Array<SteerLease> = Array::with_max_entries(1, 0);
/// What the agent holds undelivered, for its successor (see `xdt_common::agent`); never read
/// here.
#[map]
static XDT_AGENT: Array<AgentLedger> = Array::with_max_entries(1, 0);
/// Flow records of generations 0 and 1 (see `xdt_common::flows`); sized by user space before
/// loading, touched only while `Config::flow_entries` is not 0. Plain hashes, not LRU: a full
/// table never evicts.
#[map]
static XDT_FLOWS_0: HashMap<FlowKey, FlowRecord> = HashMap::with_max_entries(OFF_ENTRIES, 0);
#[map]
static XDT_FLOWS_1: HashMap<FlowKey, FlowRecord> = HashMap::with_max_entries(OFF_ENTRIES, 0);
/// The generation whose table the probe writes; switched by the reader that drains tables.
#[map]
static XDT_FLOW_GEN: Array<u32> = Array::with_max_entries(1, 0);
/// One word that stays 0 (nothing writes it), which the parsed packet is ORed with before the
/// rules and flows (see `xdt`); the probe's alone, never pinned.
#[map]
static XDT_ZERO: Array<u64> = Array::with_max_entries(1, 0);

/// 1 where the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11): flows then read the coarse
/// clock for their last-seen time (see `last_seen_clock`), which costs about half as much per
/// packet. Set by the loader; read-only to the program, so the verifier knows the value and
/// never looks at the other branch (an older kernel would refuse the helper it does not have).
#[unsafe(no_mangle)]
static XDT_COARSE_CLOCK: u8 = 0;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q and 802.1ad (QinQ): one outer and one inner tag.
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on an IPv6 packet's upper-layer protocol.
const MAX_IPV6_EXT_HEADERS: usize = 8;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// The flags that tell a SYN, and the ACK that completes a handshake, from other segments.
const TCP_HANDSHAKE_FLAGS: u8 = TCP_SYN | TCP_RST | TCP_ACK;
/// bpf_map_update_elem's answers the flow table can give (negated).
const EEXIST: i32 = 17;
const E2BIG: i32 = 7;
const ENOMEM: i32 = 12;
const BPF_NOEXIST: u64 = 1;

/// What the probe learnt of an IP packet; everything the rules and events look at.
#[derive(Default, Clone, Copy)]
struct Packet {
    /// 0 until an IP header was read, then 4 or 6.
    version: u8,
    /// Upper-layer protocol; for IPv6 the one after the extension headers.
    protocol: u8,
    tcp_flags: u8,
    /// Ports were read (TCP or UDP, first fragment, header present).
    has_ports: bool,
    /// ICMP and ICMPv6: `type << 8 | code`, 0 when the header is missing.
    icmp_type_code: u16,
    /// VLAN ids of the outer and inner tag, 0 where there is none.
    vlans: [u16; 2],
    /// Addresses as raw native-endian loads of the packet's bytes (IPv4 in word 0).
    src: [u32; 4],
    dst: [u32; 4],
    src_port: u16,
    dst_port: u16,
    ip_len: u16,
    payload_len: u16,
}

impl Packet {
    /// The same packet in values the verifier cannot see through: each field ORed with `zero`,
    /// which is 0 (see `xdt`).
    #[inline(always)]
    fn opaque(&self, zero: u64) -> Packet {
        let (z8, z16, z32) = (zero as u8, zero as u16, zero as u32);
        Packet {
            version: self.version | z8,
            protocol: self.protocol | z8,
            tcp_flags: self.tcp_flags | z8,
            has_ports: self.has_ports | (z8 & 1 != 0),
            icmp_type_code: self.icmp_type_code | z16,
            vlans: self.vlans.map(|v| v | z16),
            src: self.src.map(|a| a | z32),
            dst: self.dst.map(|a| a | z32),
            src_port: self.src_port | z16,
            dst_port: self.dst_port | z16,
            ip_len: self.ip_len | z16,
            payload_len: self.payload_len | z16,
        }
    }
}

// Headers as the wire lays them out, with fields of their natural width so that LLVM reads
// them with one load each (a byte-array read becomes one load per byte on BPF).
#[repr(C)]
struct VlanTag {
    tci: u16,
    ethertype: u16,
}

#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    fragment: u16,
    ttl: u8,
    protocol: u8,
    checksum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
struct Ipv6Header {
    version_class_flow: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

#[repr(C)]
struct ExtHeader {
    next_header: u8,
    len: u8,
}

#[repr(C)]
struct FragmentHeader {
    next_header: u8,
    reserved: u8,
    offset_flags: u16,
    id: u32,
}

#[repr(C)]
struct TcpHeader {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    data_offset: u8,
    flags: u8,
    window: u16,
    checksum: u16,
    urgent: u16,
}

#[repr(C)]
struct UdpHeader {
    src_port: u16,
    dst_port: u16,
    len: u16,
    checksum: u16,
}

/// A pointer to a whole `T` at `offset`, or `None` if the frame ends first.
#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a field of a header returned by [`header`].
macro_rules! field {
    ($header:expr, $field:ident) => {
        // SAFETY: `header` checked that the whole header lies inside the packet. Fields may sit
        // at addresses that are not multiples of their size (the IP header follows a 14-byte
        // Ethernet header); XDP permits such packet loads on the architectures it JITs for
        // efficiently, and the verifier accepts them without BPF_F_STRICT_ALIGNMENT.
        unsafe { core::ptr::addr_of!((*$header).$field).read() }
    };
}

#[inline(always)]
fn bump(counters: &mut Counters, counter: Counter) {
    counters.values[counter as usize] += 1;
}

#[xdp]
pub fn xdt(ctx: XdpContext) -> u32 {
    let Some(counters) = XDT_COUNTERS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: a per-CPU value, touched only by this CPU while this program runs on it.
    let counters = unsafe { &mut *counters };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    bump(counters, Counter::TotalPackets);
    counters.values[Counter::TotalBytes as usize] += frame_len;

    let mut packet = Packet::default();
    parse(&ctx, counters, &mut packet);
    let l4 = match (packet.version, packet.protocol) {
        (4 | 6, IPPROTO_TCP) => Counter::TcpPackets,
        (4 | 6, IPPROTO_UDP) => Counter::UdpPackets,
        (4, IPPROTO_ICMP) | (6, IPPROTO_ICMPV6) => Counter::IcmpPackets,
        _ => Counter::OtherPackets,
    };
    bump(counters, l4);
    if packet.version == 0 {
        return XDP_PASS;
    }
    let Some(config) = XDT_CONFIG.get(0) else {
        bump(counters, Counter::Errors);
        return XDP_PASS;
    };
    let generation = if config.active == 0 {
        &config.generations[0]
    } else {
        &config.generations[1]
    };
    // No rule in force and flows off: nothing below has work to do.
    if generation.rule_count == 0 && config.flow_entries == 0 {
        return XDP_PASS;
    }
    // The verifier knows the parser's result exactly on each of the parser's many paths (IPv4
    // or IPv6, VLAN tags, extension headers, protocols) and would check the rules and the flow
    // code once per path: with flows that passed its limit of a million instructions on Linux
    // 6.1. ORed with a word loaded from a map, which the verifier cannot know, every field is
    // unknown to it, and it checks the rest once for all paths. (Copying the packet through
    // map memory does the same at several times the cost; a global function or a tail call
    // costs a call, which is dear where returns are mitigated, as on AMD: docs/benchmarks.md.)
    let Some(&zero) = XDT_ZERO.get(0) else {
        bump(counters, Counter::Errors);
        return XDP_PASS;
    };
    let packet = packet.opaque(zero);
    let (verdict, label) = match classify(&ctx, counters, config, &packet, frame_len) {
        Ok(classified) => classified,
        Err(()) => {
            bump(counters, Counter::Errors);
            (XDP_PASS, 0)
        }
    };
    // The one check flows cost when they are off. Every packet that arrived is recorded,
    // whatever its verdict: flows describe what reached the hook.
    if config.flow_entries != 0 {
        record_flow(counters, &packet, label);
    }
    verdict
}

/// Ethernet and VLAN tags, then the IP header; fills `packet` as far as the frame allows.
#[inline(always)]
fn parse(ctx: &XdpContext, counters: &mut Counters, packet: &mut Packet) {
    let Some(ethertype) = header::<u16>(ctx, 12) else {
        bump(counters, Counter::NonIpPackets);
        bump(counters, Counter::TruncatedPackets);
        return;
    };
    // SAFETY: as in `field!`: inside the packet, checked by `header`.
    let mut ethertype = u16::from_be(unsafe { ethertype.read() });
    let mut offset = ETH_HLEN;
    let mut tagged = false;
    for i in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        tagged = true;
        let Some(tag) = header::<VlanTag>(ctx, offset) else {
            bump(counters, Counter::VlanPackets);
            bump(counters, Counter::NonIpPackets);
            bump(counters, Counter::TruncatedPackets);
            return;
        };
        ethertype = u16::from_be(field!(tag, ethertype));
        packet.vlans[i] = u16::from_be(field!(tag, tci)) & 0x0fff;
        offset += 4;
    }
    if tagged {
        bump(counters, Counter::VlanPackets);
    }
    match ethertype {
        ETH_P_IP => {
            bump(counters, Counter::Ipv4Packets);
            parse_ipv4(ctx, counters, packet, offset);
        }
        ETH_P_IPV6 => {
            bump(counters, Counter::Ipv6Packets);
            parse_ipv6(ctx, counters, packet, offset);
        }
        // Anything else, a third VLAN tag included, is not followed.
        _ => bump(counters, Counter::NonIpPackets),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, counters: &mut Counters, packet: &mut Packet, offset: usize) {
    let Some(ip) = header::<Ipv4Header>(ctx, offset) else {
        bump(counters, Counter::TruncatedPackets);
        return;
    };
    let version_ihl = field!(ip, version_ihl);
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        bump(counters, Counter::MalformedPackets);
        return;
    }
    if header::<u8>(ctx, offset + ihl - 1).is_none() {
        bump(counters, Counter::TruncatedPackets);
        return;
    }
    packet.version = 4;
    packet.protocol = field!(ip, protocol);
    packet.ip_len = u16::from_be(field!(ip, total_len));
    packet.src[0] = field!(ip, src);
    packet.dst[0] = field!(ip, dst);
    let fragment = u16::from_be(field!(ip, fragment));
    let more_fragments = fragment & 0x2000 != 0;
    let fragment_offset = fragment & 0x1fff;
    if more_fragments || fragment_offset != 0 {
        bump(counters, Counter::FragmentPackets);
    }
    let l4_len = packet.ip_len.saturating_sub(ihl as u16);
    packet.payload_len = l4_len;
    if fragment_offset != 0 {
        // A later fragment: its bytes are payload, there is no L4 header to read.
        return;
    }
    parse_l4(ctx, counters, packet, offset + ihl, l4_len);
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, counters: &mut Counters, packet: &mut Packet, offset: usize) {
    let Some(ip) = header::<Ipv6Header>(ctx, offset) else {
        bump(counters, Counter::TruncatedPackets);
        return;
    };
    if u32::from_be(field!(ip, version_class_flow)) >> 28 != 6 {
        bump(counters, Counter::MalformedPackets);
        return;
    }
    let payload_len = u16::from_be(field!(ip, payload_len));
    packet.version = 6;
    packet.ip_len = payload_len.saturating_add(40);
    packet.src = field!(ip, src);
    packet.dst = field!(ip, dst);

    let mut next = field!(ip, next_header);
    let mut offset = offset + 40;
    let mut ext_len: u16 = 0;
    let mut walked_all = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let Some(ext) = header::<ExtHeader>(ctx, offset) else {
                    packet.protocol = next;
                    bump(counters, Counter::TruncatedPackets);
                    return;
                };
                let len = if next == IPPROTO_AH {
                    (usize::from(field!(ext, len)) + 2) * 4
                } else {
                    (usize::from(field!(ext, len)) + 1) * 8
                };
                next = field!(ext, next_header);
                len
            }
            IPPROTO_FRAGMENT => {
                let Some(fragment) = header::<FragmentHeader>(ctx, offset) else {
                    packet.protocol = next;
                    bump(counters, Counter::TruncatedPackets);
                    return;
                };
                bump(counters, Counter::FragmentPackets);
                next = field!(fragment, next_header);
                if u16::from_be(field!(fragment, offset_flags)) >> 3 != 0 {
                    // A later fragment: no upper-layer header follows.
                    packet.protocol = next;
                    packet.payload_len = payload_len.saturating_sub(ext_len + 8);
                    return;
                }
                8
            }
            _ => {
                walked_all = true;
                break;
            }
        };
        offset += len;
        ext_len = ext_len.saturating_add(len as u16);
    }
    packet.protocol = next;
    if !walked_all {
        // Still an extension header after MAX_IPV6_EXT_HEADERS: the protocol stays unknown.
        if matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) {
            bump(counters, Counter::ExtHeaderLimitPackets);
            return;
        }
    }
    let l4_len = payload_len.saturating_sub(ext_len);
    packet.payload_len = l4_len;
    parse_l4(ctx, counters, packet, offset, l4_len);
}

/// Ports, TCP flags and the payload length of the first (or only) fragment.
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    counters: &mut Counters,
    packet: &mut Packet,
    offset: usize,
    l4_len: u16,
) {
    match packet.protocol {
        IPPROTO_TCP => {
            let Some(tcp) = header::<TcpHeader>(ctx, offset) else {
                bump(counters, Counter::TruncatedPackets);
                return;
            };
            packet.has_ports = true;
            packet.src_port = u16::from_be(field!(tcp, src_port));
            packet.dst_port = u16::from_be(field!(tcp, dst_port));
            packet.tcp_flags = field!(tcp, flags);
            packet.payload_len =
                l4_len.saturating_sub(u16::from(field!(tcp, data_offset) >> 4) * 4);
        }
        IPPROTO_UDP => {
            let Some(udp) = header::<UdpHeader>(ctx, offset) else {
                bump(counters, Counter::TruncatedPackets);
                return;
            };
            packet.has_ports = true;
            packet.src_port = u16::from_be(field!(udp, src_port));
            packet.dst_port = u16::from_be(field!(udp, dst_port));
            packet.payload_len = l4_len.saturating_sub(8);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type and code key ICMP flows, as NetFlow and IPFIX exporters do; a missing header
            // is left for the counters above to describe (they do not look at ICMP's).
            if let Some(type_code) = header::<u16>(ctx, offset) {
                // SAFETY: as in `field!`: inside the packet, checked by `header`.
                packet.icmp_type_code = u16::from_be(unsafe { type_code.read() });
            }
        }
        _ => {}
    }
}

/// Finds the winning rule, counts it under its label and applies its action; the verdict and
/// the label (0 for none).
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    counters: &mut Counters,
    config: &Config,
    packet: &Packet,
    frame_len: u64,
) -> Result<(u32, u32), ()> {
    let generation = if config.active == 0 {
        &config.generations[0]
    } else {
        &config.generations[1]
    };
    if generation.rule_count == 0 {
        return Ok((XDP_PASS, 0));
    }
    let (dst_root, src_root, levels) = if packet.version == 4 {
        (Root::Ipv4Dst, Root::Ipv4Src, IPV4_CHILD_LEVELS)
    } else {
        (Root::Ipv6Dst, Root::Ipv6Src, IPV6_CHILD_LEVELS)
    };
    let mut best = Best {
        slot: u32::MAX,
        rule: None,
    };
    if generation.roots_in_use & (1 << dst_root as u32) != 0 {
        let list = lookup(generation, dst_root, &packet.dst, levels)?;
        scan(generation, list, &mut best, packet)?;
    }
    if generation.roots_in_use & (1 << src_root as u32) != 0 {
        let list = lookup(generation, src_root, &packet.src, levels)?;
        scan(generation, list, &mut best, packet)?;
    }
    scan(generation, generation.wildcard_list, &mut best, packet)?;
    let Some(rule) = best.rule else {
        return Ok((XDP_PASS, 0));
    };
    let slot = generation.rule_base + best.slot;

    bump(counters, Counter::MatchedPackets);
    let stats = XDT_LABEL_STATS.get_ptr_mut(rule.label).ok_or(())?;
    // SAFETY: per-CPU value, touched only by this CPU while this program runs on it.
    let stats = unsafe { &mut *stats };
    stats.packets += 1;
    stats.bytes += frame_len;

    let verdict = match rule.action {
        ACTION_DROP => {
            bump(counters, Counter::DroppedPackets);
            XDP_DROP
        }
        ACTION_SAMPLE => {
            let hits = XDT_SAMPLE_HITS.get_ptr_mut(slot).ok_or(())?;
            // SAFETY: per-CPU value, as above.
            let hits = unsafe { &mut *hits };
            *hits += 1;
            if *hits >= rule.sample_every {
                *hits = 0;
                emit(ctx, counters, packet, rule);
            }
            XDP_PASS
        }
        ACTION_STEER => steer(ctx, counters, rule),
        _ => XDP_PASS,
    };
    Ok((verdict, rule.label))
}

/// Counts the packet in its flow's record, creating the record on the flow's first packet. A
/// full table refuses the new flow (counted), it never evicts one.
#[inline(always)]
fn record_flow(counters: &mut Counters, packet: &Packet, label: u32) {
    let key = FlowKey {
        src: packet.src,
        dst: packet.dst,
        src_port: packet.src_port,
        dst_port: if packet.has_ports {
            packet.dst_port
        } else {
            packet.icmp_type_code
        },
        vlans: packet.vlans,
        ip_version: packet.version,
        protocol: packet.protocol,
        padding: 0,
    };
    let tcp_flags = if packet.protocol == IPPROTO_TCP && packet.has_ports {
        Some(packet.tcp_flags)
    } else {
        None
    };
    let flow = NewFlow {
        key,
        bytes: u64::from(packet.ip_len),
        tcp_flags,
        label,
    };
    // A call site of its own per table: the verifier then inlines the lookup for the one map
    // it sees there; where it sees two, every lookup goes through the helper and an indirect
    // call.
    if XDT_FLOW_GEN.get(0).is_some_and(|g| *g & 1 == 1) {
        record_in(&XDT_FLOWS_1, &XDT_FLOWS_0, counters, &flow);
    } else {
        record_in(&XDT_FLOWS_0, &XDT_FLOWS_1, counters, &flow);
    }
}

/// A packet's flow and what it adds to the flow's record.
struct NewFlow {
    key: FlowKey,
    bytes: u64,
    tcp_flags: Option<u8>,
    label: u32,
}

/// [`record_flow`] in `table`, the generation the probe writes; `previous` is the other one.
#[inline(always)]
fn record_in(
    table: &HashMap<FlowKey, FlowRecord>,
    previous: &HashMap<FlowKey, FlowRecord>,
    counters: &mut Counters,
    flow: &NewFlow,
) {
    let NewFlow {
        ref key,
        bytes,
        tcp_flags,
        label,
    } = *flow;
    if let Some(record) = table.get_ptr_mut(key) {
        update_flow(record, bytes, tcp_flags);
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let flags = tcp_flags.unwrap_or(0);
    let (syn_ns, handshake_ns) = match flags & TCP_HANDSHAKE_FLAGS {
        TCP_SYN => (now, 0),
        // A handshake whose SYN the table of the previous generation holds (the generation
        // switched in between): finish it here. Only on a record's creation, so it costs a
        // lookup per flow, not per packet.
        // SAFETY: read only, while the program runs (elements outlive an RCU grace period).
        TCP_ACK => match unsafe { previous.get(key) } {
            Some(old) if old.syn_ns != 0 && old.handshake_ns == 0 => {
                (old.syn_ns, now.saturating_sub(old.syn_ns).max(1))
            }
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    let record = FlowRecord {
        packets: 1,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        syn_ns,
        handshake_ns,
        tcp_flag_seen: spread_tcp_flags(flags).to_le_bytes(),
        label,
        padding: 0,
    };
    match table.insert(key, &record, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created the record between the lookup and the insert: add to it.
        Err(e) if e == -EEXIST => match table.get_ptr_mut(key) {
            Some(record) => update_flow(record, bytes, tcp_flags),
            // ... and user space deleted it again at once.
            None => bump(counters, Counter::Errors),
        },
        Err(e) if e == -E2BIG || e == -ENOMEM => bump(counters, Counter::FlowTableFull),
        Err(_) => bump(counters, Counter::Errors),
    }
}

/// Adds one packet to an existing record. Other CPUs may update the same record at the same
/// time: the counters take atomic adds, the times plain stores, the TCP flags idempotent byte
/// stores.
#[inline(always)]
fn update_flow(record: *mut FlowRecord, bytes: u64, tcp_flags: Option<u8>) {
    use core::{
        intrinsics::{AtomicOrdering::Relaxed, atomic_xadd},
        ptr::addr_of_mut,
    };
    // SAFETY: `record` points to a value of the flow map, which stays valid while the program
    // runs (hash map elements are freed only after an RCU grace period); the map's values are
    // 8-byte aligned, and every field of FlowRecord at its natural alignment. Concurrent
    // writers only add atomically, store whole words, or store one byte each.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(addr_of_mut!((*record).packets), 1);
        atomic_xadd::<u64, u64, { Relaxed }>(addr_of_mut!((*record).bytes), bytes);
        // The coarse clock lags the other by up to a tick: never before the first packet.
        let first = addr_of_mut!((*record).first_seen_ns).read_volatile();
        addr_of_mut!((*record).last_seen_ns).write_volatile(last_seen_clock().max(first));
        let Some(flags) = tcp_flags else {
            return;
        };
        let lanes = spread_tcp_flags(flags);
        let seen = addr_of_mut!((*record).tcp_flag_seen);
        if seen.cast::<u64>().read_volatile() & lanes != lanes {
            let bytes = lanes.to_le_bytes();
            for i in 0..8 {
                if bytes[i] != 0 {
                    seen.cast::<u8>().add(i).write_volatile(1);
                }
            }
        }
        match flags & TCP_HANDSHAKE_FLAGS {
            // A client opens (or retries) a connection: time its handshake from here.
            TCP_SYN => {
                let now = bpf_ktime_get_ns();
                addr_of_mut!((*record).syn_ns).write_volatile(now);
                addr_of_mut!((*record).handshake_ns).write_volatile(0);
            }
            // The first ACK after a SYN completes the handshake (a reset does not).
            TCP_ACK => {
                let syn = addr_of_mut!((*record).syn_ns).read_volatile();
                let handshake = addr_of_mut!((*record).handshake_ns);
                if syn != 0 && handshake.read_volatile() == 0 {
                    let now = bpf_ktime_get_ns();
                    handshake.write_volatile(now.saturating_sub(syn).max(1));
                }
            }
            _ => {}
        }
    }
}

/// The time for a flow's last-seen: CLOCK_MONOTONIC at the last timer tick where the loader
/// set [`XDT_COARSE_CLOCK`], else to the nanosecond. Packets that time a handshake, and a
/// flow's first packet, read the precise clock.
#[inline(always)]
fn last_seen_clock() -> u64 {
    // SAFETY: a read-only global of the object, read volatile so the compiler does not fold
    // in its initial value; the helpers have no preconditions.
    unsafe {
        if core::ptr::read_volatile(&raw const XDT_COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// Redirects the frame to the agent's socket of its RX queue with the label and rule in front
/// of it as metadata, or passes it (fail-open) when the agent cannot take it.
#[inline(always)]
fn steer(ctx: &XdpContext, counters: &mut Counters, rule: &Rule) -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let queue = ctx.rx_queue_index();
    let leased = XDT_STEER.get(0).is_some_and(|lease| now < lease.expires_ns);
    // A socket bound to another queue would make the redirect drop the frame.
    if !leased || XDT_XSKS.get(queue) != Some(queue) {
        bump(counters, Counter::SteerFallbackPackets);
        return XDP_PASS;
    }
    const META_LEN: i32 = core::mem::size_of::<SteerMeta>() as i32;
    // SAFETY: ctx.ctx is the program's context; the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -META_LEN) } != 0 {
        bump(counters, Counter::SteerFallbackPackets);
        return XDP_PASS;
    }
    // Packet pointers are invalid after adjust_meta: read them again.
    let meta = ctx.metadata();
    if meta + META_LEN as usize > ctx.data() {
        // Unreachable after a successful adjust (the verifier needs the check): the packet
        // still leaves as it came, without the metadata.
        // SAFETY: as above; shrinking by what was added cannot fail.
        unsafe { bpf_xdp_adjust_meta(ctx.ctx, META_LEN) };
        bump(counters, Counter::SteerFallbackPackets);
        return XDP_PASS;
    }
    // SAFETY: [meta, meta + META_LEN) lies inside the metadata area, checked just above; the
    // verifier requires that check and accepts unaligned stores there.
    unsafe {
        (meta as *mut SteerMeta).write_unaligned(SteerMeta {
            timestamp_ns: now,
            label: rule.label,
            rule: rule.id,
            rx_queue: queue,
            magic: META_MAGIC,
        });
    }
    match XDT_XSKS.redirect(queue, u64::from(XDP_PASS)) {
        Ok(XDP_REDIRECT) => {
            bump(counters, Counter::SteeredPackets);
            XDP_REDIRECT
        }
        _ => {
            // The socket left between the lookup and the redirect: give the metadata back.
            // SAFETY: as above; shrinking by what was added cannot fail.
            unsafe { bpf_xdp_adjust_meta(ctx.ctx, META_LEN) };
            bump(counters, Counter::SteerFallbackPackets);
            XDP_PASS
        }
    }
}

/// The candidate list of the longest prefixes covering `addr` in one root, 0 for none.
#[inline(always)]
fn lookup(generation: &Generation, root: Root, addr: &[u32; 4], levels: u32) -> Result<u32, ()> {
    // The address as two big-endian halves, so its n-th byte is a shift away.
    let high = (u64::from(u32::from_be(addr[0])) << 32) | u64::from(u32::from_be(addr[1]));
    let low = (u64::from(u32::from_be(addr[2])) << 32) | u64::from(u32::from_be(addr[3]));
    let root_node = generation.node_base + root as u32 * NODES_PER_ROOT + (high >> 56) as u32;
    let node = XDT_TRIE.get(root_node).ok_or(())?;
    let mut entry = node.entries[((high >> 48) & 0xff) as usize];
    for level in 0..IPV6_CHILD_LEVELS {
        if entry & CHILD == 0 {
            return Ok(entry);
        }
        if level >= levels {
            // A child below the last byte: the trie is corrupt; treat as no match.
            return Err(());
        }
        let node = XDT_TRIE
            .get(generation.node_base + (entry & !(CHILD | PATH)))
            .ok_or(())?;
        if entry & PATH != 0 {
            // A path record: the address either has the bits of its levels or gets its miss.
            let e = &node.entries;
            let differ = ((addr[0] & e[path::MASK]) ^ e[path::NET])
                | ((addr[1] & e[path::MASK + 1]) ^ e[path::NET + 1])
                | ((addr[2] & e[path::MASK + 2]) ^ e[path::NET + 2])
                | ((addr[3] & e[path::MASK + 3]) ^ e[path::NET + 3]);
            // Records end at the last level of their prefixes (their match is a list), so the
            // walk ends here and `level` stays a constant of each unrolled step (walking on with
            // a level read from the record, the probe did not load).
            return Ok(if differ == 0 {
                e[path::MATCH]
            } else {
                e[path::MISS]
            });
        }
        // Byte 2 + level of the address.
        let byte = if level < 6 {
            high >> (40 - 8 * level)
        } else {
            low >> (56 - 8 * (level - 6))
        };
        entry = node.entries[(byte & 0xff) as usize];
    }
    if entry & CHILD == 0 {
        Ok(entry)
    } else {
        Err(())
    }
}

/// The winning rule so far: the lowest matching slot.
struct Best {
    slot: u32,
    rule: Option<&'static Rule>,
}

/// Lowers `best` to the first rule of `list` that matches (lists are in slot order).
#[inline(always)]
fn scan(generation: &Generation, list: u32, best: &mut Best, packet: &Packet) -> Result<(), ()> {
    if list == 0 {
        return Ok(());
    }
    let list = XDT_CANDIDATES.get(generation.list_base + list).ok_or(())?;
    for i in 0..MAX_CANDIDATES {
        if i as u32 >= list.len {
            break;
        }
        let slot = list.rules[i];
        if slot >= best.slot {
            break;
        }
        let rule = XDT_RULES.get(generation.rule_base + slot).ok_or(())?;
        if matches(rule, packet) {
            *best = Best {
                slot,
                rule: Some(rule),
            };
            break;
        }
    }
    Ok(())
}

#[inline(always)]
fn matches(rule: &Rule, packet: &Packet) -> bool {
    if rule.family != 0 && rule.family != packet.version {
        return false;
    }
    if rule.match_flags & MATCH_PROTOCOL != 0 && rule.protocol != packet.protocol {
        return false;
    }
    if rule.match_flags & MATCH_PORT != 0
        && (!packet.has_ports || packet.dst_port < rule.port_lo || packet.dst_port > rule.port_hi)
    {
        return false;
    }
    if rule.match_flags & MATCH_DST != 0 && !in_prefix(&packet.dst, &rule.dst_net, &rule.dst_mask) {
        return false;
    }
    if rule.match_flags & MATCH_SRC != 0 && !in_prefix(&packet.src, &rule.src_net, &rule.src_mask) {
        return false;
    }
    true
}

#[inline(always)]
fn in_prefix(addr: &[u32; 4], net: &[u32; 4], mask: &[u32; 4]) -> bool {
    (addr[0] & mask[0]) == net[0]
        && (addr[1] & mask[1]) == net[1]
        && (addr[2] & mask[2]) == net[2]
        && (addr[3] & mask[3]) == net[3]
}

#[inline(always)]
fn emit(ctx: &XdpContext, counters: &mut Counters, packet: &Packet, rule: &Rule) {
    let Some(mut entry) = XDT_EVENTS.reserve::<SampledEvent>(0) else {
        bump(counters, Counter::LostEvents);
        return;
    };
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    for i in 0..4 {
        src_addr[i * 4..i * 4 + 4].copy_from_slice(&packet.src[i].to_ne_bytes());
        dst_addr[i * 4..i * 4 + 4].copy_from_slice(&packet.dst[i].to_ne_bytes());
    }
    entry.write(SampledEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        rx_queue: ctx.rx_queue_index(),
        label: rule.label,
        rule: rule.id,
        src_addr,
        dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        ip_len: packet.ip_len,
        payload_len: packet.payload_len,
        ip_version: packet.version,
        protocol: packet.protocol,
        action: rule.action,
        tcp_flags: packet.tcp_flags,
        padding: [0; 4],
    });
    entry.submit(0);
    bump(counters, Counter::SampledEvents);
}
