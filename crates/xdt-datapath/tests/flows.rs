//! The probe's flow tables with crafted frames through BPF_PROG_TEST_RUN: keys, exact packet
//! and byte counts, TCP flags, labels, handshake time, a full table, the two generations, the
//! batch read across many records, and flows off. Needs root (loads the probe).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use xdt_common::{
    counters::Counter,
    flows::{FlowKey, FlowRecord, GENERATION_MAP, TABLE_MAPS},
};
use xdt_datapath::{
    Error,
    probe::{Capacity, LoadedProbe},
    testing::{TestProbe, XDP_PASS},
};
use xdt_testkit::{frames::*, root_or_skip};

/// The probe with flow tables of `flows` entries and a rule set.
fn probe_with(flows: u32, rules: &str) -> TestProbe {
    TestProbe::new(
        Capacity {
            flows,
            ..Capacity::default()
        },
        rules,
    )
}

/// The flow checks of these tests.
trait FlowChecks {
    fn pass(&self, frame: &[u8]);
    fn flows(&mut self) -> HashMap<FlowKey, FlowRecord>;
    fn table_len(&self, generation: usize) -> usize;
    fn set_generation(&mut self, generation: u32);
    fn counter(&self, counter: Counter) -> u64;
    fn label_id(&self, name: &str) -> u32;
}

impl FlowChecks for TestProbe {
    /// One frame through the probe, which passes it.
    fn pass(&self, frame: &[u8]) {
        assert_eq!(self.run(frame), XDP_PASS);
    }

    fn flows(&mut self) -> HashMap<FlowKey, FlowRecord> {
        self.probe
            .flows()
            .expect("flow tables")
            .read()
            .expect("read flows")
            .into_iter()
            .collect()
    }

    fn table_len(&self, generation: usize) -> usize {
        let map = self.probe.ebpf.map(TABLE_MAPS[generation]).expect("map");
        let table: aya::maps::HashMap<_, FlowKey, FlowRecord> =
            aya::maps::HashMap::try_from(map).expect("hash map");
        table.keys().count()
    }

    fn set_generation(&mut self, generation: u32) {
        let map = self.probe.ebpf.map_mut(GENERATION_MAP).expect("map");
        let mut array: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map).expect("array");
        array.set(0, generation, 0).expect("write generation");
    }

    fn counter(&self, counter: Counter) -> u64 {
        self.maps.counters().expect("counters").get(counter)
    }

    fn label_id(&self, name: &str) -> u32 {
        self.maps
            .label_names()
            .expect("labels")
            .named()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id)
            .expect("label")
    }
}

fn key(src: IpAddr, dst: IpAddr, protocol: u8, ports: (u16, u16), vlans: [u16; 2]) -> FlowKey {
    let words = |a: IpAddr| {
        let bytes: [u8; 16] = match a {
            IpAddr::V4(a) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&a.octets());
                b
            }
            IpAddr::V6(a) => a.octets(),
        };
        let mut w = [0u32; 4];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        }
        w
    };
    FlowKey {
        src: words(src),
        dst: words(dst),
        src_port: ports.0,
        dst_port: ports.1,
        vlans,
        ip_version: if src.is_ipv4() { 4 } else { 6 },
        protocol,
        padding: 0,
    }
}

fn ip4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}
fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::from(a)
}

#[test]
fn flows_are_keyed_and_counted_exactly() {
    if !root_or_skip("flows_are_keyed_and_counted_exactly") {
        return;
    }
    let mut lab = probe_with(64, "web proto tcp dport 80\n");
    let web = lab.label_id("web");
    // (frame, key, IP bytes) of each packet; several flows per family and protocol.
    let mut sent: Vec<(Vec<u8>, FlowKey, u64)> = Vec::new();
    let mut add = |frame: Vec<u8>, key: FlowKey, ip_bytes: usize| {
        sent.push((frame, key, ip_bytes as u64));
    };
    for (port, payload) in [(40000u16, &b"GET /"[..]), (40001, b"")] {
        let segment = tcp(port, 80, 0x18, payload);
        let len = 20 + segment.len();
        for _ in 0..3 {
            add(
                ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &segment)),
                key(ip4(A4), ip4(B4), TCP, (port, 80), [0, 0]),
                len,
            );
        }
    }
    let datagram = udp(5353, 53, b"query");
    add(
        ethernet(ETH_P_IP, &ipv4(A4, B4, UDP, &datagram)),
        key(ip4(A4), ip4(B4), UDP, (5353, 53), [0, 0]),
        20 + datagram.len(),
    );
    // ICMP is keyed by type and code: echo request 8/0.
    let echo = icmp_echo(false, b"ping");
    for _ in 0..2 {
        add(
            ethernet(ETH_P_IP, &ipv4(A4, B4, ICMP, &echo)),
            key(ip4(A4), ip4(B4), ICMP, (0, 8 << 8), [0, 0]),
            20 + echo.len(),
        );
    }
    let echo6 = icmp_echo(true, b"ping6");
    add(
        ethernet(ETH_P_IPV6, &ipv6(A6, B6, ICMPV6, &echo6)),
        key(ip6(A6), ip6(B6), ICMPV6, (0, 128 << 8), [0, 0]),
        40 + echo6.len(),
    );
    for port in [443u16, 8443] {
        let segment = tcp(50000, port, 0x10, b"data");
        add(
            ethernet(ETH_P_IPV6, &ipv6(A6, B6, TCP, &segment)),
            key(ip6(A6), ip6(B6), TCP, (50000, port), [0, 0]),
            40 + segment.len(),
        );
    }
    let datagram6 = udp(1000, 2000, b"x");
    add(
        ethernet(ETH_P_IPV6, &ipv6(B6, A6, UDP, &datagram6)),
        key(ip6(B6), ip6(A6), UDP, (1000, 2000), [0, 0]),
        40 + datagram6.len(),
    );
    // The same 5-tuple on two VLANs (and QinQ) is three flows.
    for tags in [
        &[(ETH_P_8021Q, 7u16)][..],
        &[(ETH_P_8021Q, 9)],
        &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)],
    ] {
        let vlans = [tags[0].1, tags.get(1).map_or(0, |t| t.1)];
        add(
            ethernet_vlan(tags, ETH_P_IP, &ipv4(A4, B4, UDP, &datagram)),
            key(ip4(A4), ip4(B4), UDP, (5353, 53), vlans),
            20 + datagram.len(),
        );
    }
    let start = now_ns();
    for (frame, _, _) in &sent {
        lab.pass(frame);
    }
    let end = now_ns();

    let mut expected: HashMap<FlowKey, (u64, u64)> = HashMap::new();
    for (_, key, bytes) in &sent {
        let e = expected.entry(*key).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let flows = lab.flows();
    assert_eq!(flows.len(), expected.len(), "{flows:#?}");
    for (key, (packets, bytes)) in &expected {
        let record = flows.get(key).unwrap_or_else(|| panic!("no flow {key:?}"));
        assert_eq!(
            (record.packets, record.bytes),
            (*packets, *bytes),
            "{key:?}"
        );
        assert!(start <= record.first_seen_ns && record.first_seen_ns <= record.last_seen_ns);
        assert!(record.last_seen_ns <= end);
        let tcp80 = key.protocol == TCP && key.dst_port == 80;
        assert_eq!(record.label, if tcp80 { web } else { 0 }, "{key:?}");
        assert_eq!(record.handshake_ns, 0);
    }
    assert_eq!(lab.counter(Counter::FlowTableFull), 0);
    assert_eq!(lab.counter(Counter::TotalPackets), sent.len() as u64);
}

#[test]
fn tcp_flags_are_ored_and_the_handshake_timed() {
    if !root_or_skip("tcp_flags_are_ored_and_the_handshake_timed") {
        return;
    }
    let mut lab = probe_with(16, "");
    let frame = |flags: u8| ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(41000, 22, flags, b"")));
    let flow = key(ip4(A4), ip4(B4), TCP, (41000, 22), [0, 0]);
    let syn_sent = Instant::now();
    lab.pass(&frame(0x02));
    std::thread::sleep(Duration::from_millis(20));
    lab.pass(&frame(0x10));
    let ack_sent = syn_sent.elapsed();
    lab.pass(&frame(0x18));
    lab.pass(&frame(0x11));
    let record = lab.flows()[&flow];
    assert_eq!(record.tcp_flags(), 0x02 | 0x10 | 0x08 | 0x01);
    assert_eq!(record.packets, 4);
    let handshake = Duration::from_nanos(record.handshake_ns);
    assert!(
        handshake >= Duration::from_millis(20) && handshake <= ack_sent,
        "handshake {handshake:?}, the ACK went {ack_sent:?} after the SYN"
    );

    // A SYN answered by the client's reset is no handshake.
    let refused = |flags: u8| ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(41002, 22, flags, b"")));
    lab.pass(&refused(0x02));
    lab.pass(&refused(0x14));
    let reset = lab.flows()[&key(ip4(A4), ip4(B4), TCP, (41002, 22), [0, 0])];
    assert_ne!(reset.syn_ns, 0);
    assert_eq!(reset.handshake_ns, 0);

    // A flow seen from its middle (no SYN) has no handshake.
    lab.pass(&ethernet(
        ETH_P_IP,
        &ipv4(A4, B4, TCP, &tcp(41001, 22, 0x10, b"")),
    ));
    let late = lab.flows()[&key(ip4(A4), ip4(B4), TCP, (41001, 22), [0, 0])];
    assert_eq!((late.syn_ns, late.handshake_ns), (0, 0));
}

#[test]
fn a_full_table_counts_what_it_refuses_and_evicts_nothing() {
    const ENTRIES: u16 = 8;
    const EXTRA: u16 = 3;
    const PACKETS: u64 = 4;
    if !root_or_skip("a_full_table_counts_what_it_refuses_and_evicts_nothing") {
        return;
    }
    let mut lab = probe_with(u32::from(ENTRIES), "any proto udp\n");
    for round in 0..PACKETS {
        for port in 0..ENTRIES + EXTRA {
            lab.pass(&ethernet(
                ETH_P_IP,
                &ipv4(A4, B4, UDP, &udp(1000 + port, 53, &[round as u8])),
            ));
        }
    }
    let flows = lab.flows();
    assert_eq!(flows.len(), usize::from(ENTRIES));
    for port in 0..ENTRIES {
        let record = flows[&key(ip4(A4), ip4(B4), UDP, (1000 + port, 53), [0, 0])];
        assert_eq!(
            record.packets, PACKETS,
            "the first flows keep their records"
        );
    }
    assert_eq!(
        lab.counter(Counter::FlowTableFull),
        u64::from(EXTRA) * PACKETS
    );
    // Everything else counted every packet.
    let all = u64::from(ENTRIES + EXTRA) * PACKETS;
    assert_eq!(lab.counter(Counter::TotalPackets), all);
    assert_eq!(lab.counter(Counter::UdpPackets), all);
    assert_eq!(lab.counter(Counter::MatchedPackets), all);
    assert_eq!(lab.counter(Counter::Errors), 0);
}

#[test]
fn generations_split_tables_and_keep_the_handshake() {
    if !root_or_skip("generations_split_tables_and_keep_the_handshake") {
        return;
    }
    let mut lab = probe_with(16, "");
    let frame = |flags: u8| ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(42000, 443, flags, b"")));
    lab.pass(&frame(0x02));
    lab.pass(&frame(0x02));
    assert_eq!((lab.table_len(0), lab.table_len(1)), (1, 0));
    // The reader that drains tables switches to generation 1: the ACK lands in table 1 and
    // finds its SYN in table 0.
    lab.set_generation(1);
    std::thread::sleep(Duration::from_millis(5));
    lab.pass(&frame(0x10));
    lab.pass(&frame(0x18));
    assert_eq!((lab.table_len(0), lab.table_len(1)), (1, 1));
    let tables = lab.probe.flows().expect("tables");
    assert_eq!(tables.generation().expect("generation"), 1);
    let old = tables.read_table(0).expect("table 0");
    let new = tables.read_table(1).expect("table 1");
    assert_eq!((old[0].1.packets, new[0].1.packets), (2, 2));
    assert!(new[0].1.handshake_ns >= 5_000_000, "{:?}", new[0].1);
    assert_eq!(new[0].1.syn_ns, old[0].1.syn_ns);
    let merged = lab.flows();
    let record = merged[&key(ip4(A4), ip4(B4), TCP, (42000, 443), [0, 0])];
    assert_eq!(record.packets, 4);
    assert_eq!(record.tcp_flags(), 0x1a);
    assert_eq!(record.first_seen_ns, old[0].1.first_seen_ns);
    assert_eq!(record.handshake_ns, new[0].1.handshake_ns);
}

#[test]
fn many_flows_read_in_batches() {
    const FLOWS: u32 = 5000;
    if !root_or_skip("many_flows_read_in_batches") {
        return;
    }
    let mut lab = probe_with(FLOWS, "");
    for i in 0..FLOWS {
        let src = [10, 9, (i >> 8) as u8, i as u8];
        lab.pass(&ethernet(ETH_P_IP, &ipv4(src, B4, UDP, &udp(7, 9, b""))));
    }
    let flows = lab.flows();
    assert_eq!(flows.len(), FLOWS as usize);
    assert!(flows.values().all(|r| r.packets == 1 && r.bytes == 28));
    assert_eq!(lab.counter(Counter::FlowTableFull), 0);
}

#[test]
fn flows_off_touch_nothing() {
    if !root_or_skip("flows_off_touch_nothing") {
        return;
    }
    let mut lab = probe_with(0, "web proto tcp\n");
    for port in 0..10 {
        lab.pass(&ethernet(
            ETH_P_IP,
            &ipv4(A4, B4, TCP, &tcp(port, 80, 0x02, b"")),
        ));
    }
    assert_eq!((lab.table_len(0), lab.table_len(1)), (0, 0));
    assert_eq!(lab.counter(Counter::FlowTableFull), 0);
    assert_eq!(lab.counter(Counter::TotalPackets), 10);
    assert!(matches!(lab.probe.flows(), Err(Error::FlowsOff { .. })));
    let too_big = LoadedProbe::load(Capacity {
        flows: xdt_common::flows::MAX_ENTRIES + 1,
        ..Capacity::default()
    });
    assert!(matches!(too_big, Err(Error::FlowTableTooLarge { .. })));
}

/// The verifier checks the rules and the flow code once for all of the parser's paths, not
/// once per path: per path that was about 700k instructions on Linux 6.18 and over its limit
/// of a million on 6.1. Older verifiers count more for the same program (202k on 6.18, 432k on
/// 6.1): the bound is half the limit.
#[test]
fn the_verifier_checks_rules_and_flows_once() {
    if !root_or_skip("the_verifier_checks_rules_and_flows_once") {
        return;
    }
    let probe = LoadedProbe::load(Capacity {
        flows: xdt_common::flows::MAX_ENTRIES,
        ..Capacity::default()
    })
    .expect("load the probe with flows");
    let info = probe
        .program()
        .expect("program")
        .info()
        .expect("program info");
    // The kernel reports the count from Linux 5.16 on.
    let Some(verified) = info.verified_instruction_count() else {
        eprintln!("the kernel does not report the verifier's instruction count; not checked");
        return;
    };
    eprintln!("the verifier processed {verified} instructions");
    assert!(
        verified < 500_000,
        "the verifier processed {verified} instructions (limit 1,000,000)"
    );
}

fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    u64::try_from(Duration::from(t).as_nanos()).expect("u64 ns")
}
