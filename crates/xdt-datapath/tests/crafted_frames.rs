//! Crafted frames through BPF_PROG_TEST_RUN: every parsing case of the probe, well-formed and
//! broken, with the exact counters and verdict it must produce. Needs root (loads the probe).

use std::time::Duration;

use xdt_common::counters::{Counter, Counters, NAMES};
use xdt_datapath::{
    events::Event,
    probe::Capacity,
    rules::parse_rules,
    testing::{TestProbe, XDP_DROP, XDP_PASS},
};
use xdt_testkit::{frames::*, root_or_skip};

/// The probe with a rule set.
fn probe_with(rules: &str) -> TestProbe {
    TestProbe::new(Capacity::default(), rules)
}

/// The counter and label checks of these tests.
trait Checks {
    fn counters(&self) -> Counters;
    fn expect(&self, expected: &[(Counter, u64)]);
    fn label(&self, name: &str) -> (u64, u64);
}

impl Checks for TestProbe {
    fn counters(&self) -> Counters {
        let c = self.maps.counters().expect("counters");
        let total = c.get(Counter::TotalPackets);
        let l4 = [
            Counter::TcpPackets,
            Counter::UdpPackets,
            Counter::IcmpPackets,
            Counter::OtherPackets,
        ];
        assert_eq!(
            l4.iter().map(|&k| c.get(k)).sum::<u64>(),
            total,
            "tcp+udp+icmp+other != total: {c:?}"
        );
        let l3 = [
            Counter::Ipv4Packets,
            Counter::Ipv6Packets,
            Counter::NonIpPackets,
        ];
        assert_eq!(
            l3.iter().map(|&k| c.get(k)).sum::<u64>(),
            total,
            "ipv4+ipv6+non_ip != total: {c:?}"
        );
        c
    }

    /// Asserts the counters named in `expected` and that every other counter is zero.
    fn expect(&self, expected: &[(Counter, u64)]) {
        let c = self.counters();
        for (i, (name, value)) in NAMES.iter().zip(c.values).enumerate() {
            let want = expected
                .iter()
                .find(|(k, _)| *k as usize == i)
                .map_or(0, |(_, v)| *v);
            assert_eq!(
                value, want,
                "{name} is {value}, expected {want}; all: {c:?}"
            );
        }
    }

    fn label(&self, name: &str) -> (u64, u64) {
        let counts = self.maps.label_counts().expect("labels");
        counts
            .iter()
            .find(|l| l.label == name)
            .map_or((0, 0), |l| (l.packets, l.bytes))
    }
}

use Counter::*;

/// One frame through a probe without rules: the counters it gives.
fn single(frame: &[u8], expected: &[(Counter, u64)]) {
    let lab = probe_with("");
    assert_eq!(lab.run(frame), XDP_PASS);
    let mut all = vec![(TotalPackets, 1), (TotalBytes, frame.len() as u64)];
    all.extend_from_slice(expected);
    lab.expect(&all);
}

#[test]
fn well_formed_protocols() {
    if !root_or_skip("well_formed_protocols") {
        return;
    }
    single(
        &ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1000, 80, 0x02, b""))),
        &[(Ipv4Packets, 1), (TcpPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IP, &ipv4(A4, B4, UDP, &udp(1000, 53, b"q"))),
        &[(Ipv4Packets, 1), (UdpPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IP, &ipv4(A4, B4, ICMP, &icmp_echo(false, b"x"))),
        &[(Ipv4Packets, 1), (IcmpPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IP, &ipv4(A4, B4, 47, b"gre")),
        &[(Ipv4Packets, 1), (OtherPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IPV6, &ipv6(A6, B6, TCP, &tcp(1, 443, 0x10, b"hi"))),
        &[(Ipv6Packets, 1), (TcpPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IPV6, &ipv6(A6, B6, UDP, &udp(1, 53, b""))),
        &[(Ipv6Packets, 1), (UdpPackets, 1)],
    );
    single(
        &ethernet(ETH_P_IPV6, &ipv6(A6, B6, ICMPV6, &icmp_echo(true, b""))),
        &[(Ipv6Packets, 1), (IcmpPackets, 1)],
    );
    // ICMPv4's number inside IPv6 is not ICMP.
    single(
        &ethernet(ETH_P_IPV6, &ipv6(A6, B6, ICMP, &icmp_echo(false, b""))),
        &[(Ipv6Packets, 1), (OtherPackets, 1)],
    );
    single(
        &ethernet(ETH_P_ARP, &[0; 28]),
        &[(NonIpPackets, 1), (OtherPackets, 1)],
    );
}

#[test]
fn vlan_tags() {
    if !root_or_skip("vlan_tags") {
        return;
    }
    let ip = ipv4(A4, B4, TCP, &tcp(1, 80, 0x02, b""));
    single(
        &ethernet_vlan(&[(ETH_P_8021Q, 7)], ETH_P_IP, &ip),
        &[(VlanPackets, 1), (Ipv4Packets, 1), (TcpPackets, 1)],
    );
    single(
        &ethernet_vlan(&[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)], ETH_P_IP, &ip),
        &[(VlanPackets, 1), (Ipv4Packets, 1), (TcpPackets, 1)],
    );
    // A third tag is not followed: counted as a tagged non-IP frame.
    single(
        &ethernet_vlan(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
            ETH_P_IP,
            &ip,
        ),
        &[(VlanPackets, 1), (NonIpPackets, 1), (OtherPackets, 1)],
    );
    // A tag cut short.
    single(
        &ethernet(ETH_P_8021Q, &[0, 7]),
        &[
            (VlanPackets, 1),
            (NonIpPackets, 1),
            (TruncatedPackets, 1),
            (OtherPackets, 1),
        ],
    );
    // The rules see through the tags.
    let lab = probe_with("web dst 192.0.2.0/24 proto tcp dport 80\n");
    lab.run(&ethernet_vlan(
        &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)],
        ETH_P_IP,
        &ip,
    ));
    assert_eq!(lab.label("web").0, 1);
}

#[test]
fn truncated_and_malformed_ipv4() {
    if !root_or_skip("truncated_and_malformed_ipv4") {
        return;
    }
    let good = ipv4(A4, B4, TCP, &tcp(1, 80, 0x02, b""));
    // IPv4 header cut after 10 bytes.
    single(
        &ethernet(ETH_P_IP, &good[..10]),
        &[(Ipv4Packets, 1), (TruncatedPackets, 1), (OtherPackets, 1)],
    );
    // IHL 4 (16 bytes): impossible.
    let mut bad = good.clone();
    bad[0] = 0x44;
    single(
        &ethernet(ETH_P_IP, &bad),
        &[(Ipv4Packets, 1), (MalformedPackets, 1), (OtherPackets, 1)],
    );
    // Version 6 under the IPv4 ethertype.
    let mut bad = good.clone();
    bad[0] = 0x65;
    single(
        &ethernet(ETH_P_IP, &bad),
        &[(Ipv4Packets, 1), (MalformedPackets, 1), (OtherPackets, 1)],
    );
    // IHL 15 (60 bytes) in a frame that ends after 40 bytes of IP.
    let mut bad = good.clone();
    bad[0] = 0x4f;
    single(
        &ethernet(ETH_P_IP, &bad),
        &[(Ipv4Packets, 1), (TruncatedPackets, 1), (OtherPackets, 1)],
    );
    // TCP header cut: still TCP by the IP header, but no ports.
    single(
        &ethernet(ETH_P_IP, &good[..30]),
        &[(Ipv4Packets, 1), (TruncatedPackets, 1), (TcpPackets, 1)],
    );
    // UDP header cut.
    let udp4 = ipv4(A4, B4, UDP, &udp(1, 53, b""));
    single(
        &ethernet(ETH_P_IP, &udp4[..24]),
        &[(Ipv4Packets, 1), (TruncatedPackets, 1), (UdpPackets, 1)],
    );
}

#[test]
fn ipv4_options_and_fragments() {
    if !root_or_skip("ipv4_options_and_fragments") {
        return;
    }
    let lab =
        probe_with("dns dst 192.0.2.0/24 proto udp dport 53\nudp-any dst 192.0.2.0/24 proto udp\n");
    // IHL 6: one word of options before UDP; ports still found.
    let mut with_options = ipv4(A4, B4, UDP, &[]);
    with_options[0] = 0x46;
    with_options.extend_from_slice(&[1, 1, 1, 0]);
    with_options.extend_from_slice(&udp(5000, 53, b"query"));
    let total = with_options.len() as u16;
    with_options[2..4].copy_from_slice(&total.to_be_bytes());
    assert_eq!(lab.run(&ethernet(ETH_P_IP, &with_options)), XDP_PASS);
    // First fragment (MF set): has the UDP header, so dport matches.
    lab.run(&ethernet(
        ETH_P_IP,
        &ipv4_fragment(A4, B4, UDP, 0x2000, &udp(5000, 53, &[0; 64])),
    ));
    // A later fragment (offset 8): no UDP header, so only the port-less rule matches.
    lab.run(&ethernet(
        ETH_P_IP,
        &ipv4_fragment(A4, B4, UDP, 8, &[0xab; 40]),
    ));
    assert_eq!(lab.label("dns").0, 2);
    assert_eq!(lab.label("udp-any").0, 1);
    let c = lab.counters();
    assert_eq!(c.get(FragmentPackets), 2);
    assert_eq!(c.get(UdpPackets), 3);
    assert_eq!(c.get(MatchedPackets), 3);
}

#[test]
fn ipv6_extension_headers() {
    if !root_or_skip("ipv6_extension_headers") {
        return;
    }
    let lab =
        probe_with("web dst 2001:db8:beef::/48 proto tcp dport 443\nany6 dst 2001:db8:beef::/48\n");
    let seg = tcp(4000, 443, 0x18, b"GET /");
    // Hop-by-hop, then destination options, then TCP.
    let chain = ipv6_ext(60, &ipv6_ext(TCP, &seg));
    lab.run(&ethernet(ETH_P_IPV6, &ipv6(A6, B6, 0, &chain)));
    // First fragment carries TCP.
    lab.run(&ethernet(
        ETH_P_IPV6,
        &ipv6(A6, B6, 44, &ipv6_fragment(TCP, 0, true, &seg)),
    ));
    // A later fragment: TCP by the fragment header's next header, but no ports.
    lab.run(&ethernet(
        ETH_P_IPV6,
        &ipv6(A6, B6, 44, &ipv6_fragment(TCP, 100, false, &[0; 16])),
    ));
    assert_eq!(lab.label("web").0, 2);
    assert_eq!(lab.label("any6").0, 1);
    let c = lab.counters();
    assert_eq!(c.get(TcpPackets), 3);
    assert_eq!(c.get(FragmentPackets), 2);

    // Nine extension headers: more than the probe walks.
    let mut chain = seg.clone();
    chain = ipv6_ext(TCP, &chain);
    for _ in 0..8 {
        chain = ipv6_ext(60, &chain);
    }
    let frame = ethernet(ETH_P_IPV6, &ipv6(A6, B6, 60, &chain));
    single(
        &frame,
        &[
            (Ipv6Packets, 1),
            (ExtHeaderLimitPackets, 1),
            (OtherPackets, 1),
        ],
    );
    // An extension header cut short.
    single(
        &ethernet(ETH_P_IPV6, &ipv6(A6, B6, 0, &[])),
        &[(Ipv6Packets, 1), (TruncatedPackets, 1), (OtherPackets, 1)],
    );
    // IPv6 header cut short, and a wrong version.
    let full = ipv6(A6, B6, UDP, &udp(1, 2, b""));
    single(
        &ethernet(ETH_P_IPV6, &full[..30]),
        &[(Ipv6Packets, 1), (TruncatedPackets, 1), (OtherPackets, 1)],
    );
    let mut bad = full.clone();
    bad[0] = 0x40;
    single(
        &ethernet(ETH_P_IPV6, &bad),
        &[(Ipv6Packets, 1), (MalformedPackets, 1), (OtherPackets, 1)],
    );
}

#[test]
fn rule_matching_priority_and_actions() {
    if !root_or_skip("rule_matching_priority_and_actions") {
        return;
    }
    let lab = probe_with(
        "broad dst 192.0.2.0/24\n\
         narrow dst 192.0.2.10 proto tcp dport 80-90 priority 10\n\
         from-a src 10.0.0.0/8 proto udp priority 20\n\
         icmp-any proto icmp\n\
         blocked dst 192.0.2.99 action drop priority 1\n\
         six src 2001:db8::/64 proto udp dport 53\n",
    );
    let tcp80 = ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1, 85, 0x02, b"")));
    let tcp22 = ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1, 22, 0x02, b"")));
    let udp9 = ethernet(ETH_P_IP, &ipv4(A4, B4, UDP, &udp(1, 9, b"")));
    let ping = ethernet(
        ETH_P_IP,
        &ipv4(
            [198, 51, 100, 1],
            [203, 0, 113, 1],
            ICMP,
            &icmp_echo(false, b""),
        ),
    );
    let blocked = ethernet(
        ETH_P_IP,
        &ipv4(A4, [192, 0, 2, 99], TCP, &tcp(1, 80, 0x02, b"")),
    );
    let dns6 = ethernet(ETH_P_IPV6, &ipv6(A6, B6, UDP, &udp(9, 53, b"")));
    let other6 = ethernet(ETH_P_IPV6, &ipv6(B6, A6, UDP, &udp(9, 53, b"")));
    assert_eq!(lab.run(&tcp80), XDP_PASS);
    assert_eq!(lab.run(&tcp22), XDP_PASS);
    assert_eq!(lab.run(&udp9), XDP_PASS);
    assert_eq!(lab.run(&ping), XDP_PASS);
    assert_eq!(lab.run(&blocked), XDP_DROP);
    assert_eq!(lab.run(&dns6), XDP_PASS);
    assert_eq!(lab.run(&other6), XDP_PASS);
    assert_eq!(lab.label("narrow"), (1, tcp80.len() as u64));
    assert_eq!(lab.label("broad").0, 1, "tcp/22 falls through to the /24");
    assert_eq!(
        lab.label("from-a").0,
        1,
        "src rule of priority 20 beats the dst /24 of 100"
    );
    assert_eq!(lab.label("icmp-any").0, 1);
    assert_eq!(lab.label("blocked").0, 1);
    assert_eq!(lab.label("six").0, 1);
    let c = lab.counters();
    assert_eq!(c.get(MatchedPackets), 6);
    assert_eq!(c.get(DroppedPackets), 1);
    assert_eq!(c.get(TotalPackets), 7);
}

#[test]
fn steer_falls_back_to_pass_without_a_live_agent() {
    if !root_or_skip("steer_falls_back_to_pass_without_a_live_agent") {
        return;
    }
    let lab = probe_with("api proto tcp dport 8081 action steer\n");
    let mut steer = xdt_datapath::steer::SteerMaps::of(&lab.probe).expect("steer maps");
    let frame = ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1, 8081, 0x02, b"")));
    let other = ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1, 8082, 0x02, b"")));
    // No lease (no agent ever ran): passed and counted as a fallback.
    assert_eq!(lab.run(&frame), XDP_PASS);
    // A fresh lease but no socket on the queue: still passed.
    steer.renew(Duration::from_secs(5)).expect("renew");
    assert_eq!(lab.run(&frame), XDP_PASS);
    // An expired lease: passed.
    steer.renew(Duration::ZERO).expect("renew");
    assert_eq!(lab.run(&frame), XDP_PASS);
    steer.revoke().expect("revoke");
    assert_eq!(lab.run(&other), XDP_PASS);
    lab.expect(&[
        (TotalPackets, 4),
        (TotalBytes, 4 * frame.len() as u64),
        (Ipv4Packets, 4),
        (TcpPackets, 4),
        (MatchedPackets, 3),
        (SteerFallbackPackets, 3),
    ]);
    assert_eq!(lab.label("api"), (3, 3 * frame.len() as u64));
}

#[test]
fn sampled_events_and_ring_loss() {
    if !root_or_skip("sampled_events_and_ring_loss") {
        return;
    }
    let lab = probe_with("web dst 192.0.2.0/24 proto tcp action sample 3\n");
    let frame = ethernet(
        ETH_P_IP,
        &ipv4(A4, B4, TCP, &tcp(40000, 8080, 0x18, b"GET / HTTP/1.1\r\n")),
    );
    for _ in 0..10 {
        lab.run(&frame);
    }
    let mut reader = lab.probe.events().expect("reader");
    let names = lab.maps.label_names().expect("names");
    let mut events = Vec::new();
    reader
        .poll(Duration::from_millis(100), |e| {
            events.push(Event::decode(e, &names));
        })
        .expect("poll");
    assert_eq!(events.len(), 3, "1 of every 3 of 10 packets");
    let e = &events[0];
    assert_eq!((e.label.as_str(), e.rule, e.action), ("web", 1, "sample"));
    let h = &e.headers;
    assert_eq!(
        (h.src.to_string().as_str(), h.dst.to_string().as_str()),
        ("10.1.2.3", "192.0.2.10")
    );
    assert_eq!(
        (h.src_port, h.dst_port, h.protocol, e.ip_version),
        (40000, 8080, TCP, 4)
    );
    assert_eq!((h.ip_len, h.payload_len, h.tcp_flags), (56, 16, 0x18));
    assert!(e.timestamp_ns > 0);
    assert_eq!(lab.counters().get(SampledEvents), 3);

    // Every packet sampled, many more than the ring holds: the rest are counted as lost.
    let lab = probe_with("all dst 192.0.2.0/24 action sample 1\n");
    let runs = 10_000;
    lab.probe.test_run(&frame, runs).expect("run");
    let c = lab.counters();
    assert_eq!(c.get(SampledEvents) + c.get(LostEvents), u64::from(runs));
    assert!(
        c.get(LostEvents) > 0,
        "a 256 KiB ring cannot hold {runs} events"
    );
}

/// Prefixes whose sparse levels the compiler lays out as path records (see the compile unit
/// test of the same shapes): addresses that follow a record, leave it at its first or its last
/// level, and fork below it, in both families and in a source root.
#[test]
fn path_records_match_like_nodes() {
    if !root_or_skip("path_records_match_like_nodes") {
        return;
    }
    let lab = probe_with(
        "d dst 2001:db8:1:3:ffff::/80\n\
         a dst 2001:db8:1:2::/64\n\
         b dst 2001:db8:1:3::/64\n\
         c dst 2001:db8::/32\n\
         h dst 198.51.100.7\n\
         net dst 198.51.0.0/16\n\
         s src fd00::1\n",
    );
    let to6 = |src: [u16; 8], dst: [u16; 8]| {
        ethernet(ETH_P_IPV6, &ipv6(v6(src), v6(dst), UDP, &udp(1, 53, b"")))
    };
    let to4 = |dst: [u8; 4]| ethernet(ETH_P_IP, &ipv4(A4, dst, UDP, &udp(1, 53, b"")));
    let from = [0xfd00, 0, 0, 0, 0, 0, 0, 2];
    let cases: [(Vec<u8>, Option<&str>); 11] = [
        (to6(from, [0x2001, 0xdb8, 1, 3, 0xffff, 1, 0, 0]), Some("d")),
        (to6(from, [0x2001, 0xdb8, 1, 3, 0xfffe, 0, 0, 0]), Some("b")),
        (to6(from, [0x2001, 0xdb8, 1, 2, 0, 0, 0, 5]), Some("a")),
        (to6(from, [0x2001, 0xdb8, 1, 4, 0, 0, 0, 0]), Some("c")),
        (to6(from, [0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]), Some("c")),
        (to6(from, [0x2001, 0xdb9, 0, 0, 0, 0, 0, 1]), None),
        (to4([198, 51, 100, 7]), Some("h")),
        (to4([198, 51, 100, 8]), Some("net")),
        (to4([198, 51, 7, 100]), Some("net")),
        (
            to6(
                [0xfd00, 0, 0, 0, 0, 0, 0, 1],
                [0x2001, 0xcb8, 0, 0, 0, 0, 0, 1],
            ),
            Some("s"),
        ),
        (to6(from, [0x2001, 0xcb8, 0, 0, 0, 0, 0, 1]), None),
    ];
    let mut want: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (frame, label) in &cases {
        assert_eq!(lab.run(frame), XDP_PASS);
        if let Some(label) = label {
            *want.entry(label).or_default() += 1;
        }
    }
    eprintln!(
        "DEBUG {:?}",
        ["a", "b", "c", "d", "h", "net", "s"].map(|l| lab.label(l).0)
    );
    for label in ["a", "b", "c", "d", "h", "net", "s"] {
        assert_eq!(
            lab.label(label).0,
            want.get(label).copied().unwrap_or(0),
            "label {label}"
        );
    }
    let c = lab.counters();
    assert_eq!(c.get(MatchedPackets), 9);
    assert_eq!(c.get(TotalPackets), 11);
}

#[test]
fn rule_set_switch_keeps_label_counts() {
    if !root_or_skip("rule_set_switch_keeps_label_counts") {
        return;
    }
    let mut lab = probe_with("web dst 192.0.2.0/24\n");
    let frame = ethernet(ETH_P_IP, &ipv4(A4, B4, TCP, &tcp(1, 80, 0x02, b"")));
    lab.run(&frame);
    lab.maps
        .install(
            &parse_rules("other dst 10.0.0.0/8\nweb dst 192.0.2.10 priority 1\n", "t")
                .expect("rules"),
        )
        .expect("install");
    lab.run(&frame);
    assert_eq!(lab.label("web").0, 2, "label ids survive a rule change");
    assert_eq!(lab.maps.rules().expect("rules").len(), 2);
    // A failed install changes nothing.
    let too_many: Vec<String> = (0..40).map(|i| format!("r{i} dst 192.0.2.0/24")).collect();
    let too_many = too_many.join("\n");
    let err = lab
        .maps
        .install(&parse_rules(&too_many, "t").expect("rules"))
        .expect_err("overlap");
    assert!(
        err.to_string()
            .contains("more than 32 rules cover 192.0.2.0/24"),
        "{err}"
    );
    lab.run(&frame);
    assert_eq!(lab.label("web").0, 3);
    assert_eq!(lab.maps.rules().expect("rules")[1].label, "web");
}
