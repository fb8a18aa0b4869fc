//! The agents' messages central's tests and benchmarks build: one set of builders for the unit
//! tests, the integration tests and the benchmarks (the `test-fixtures` feature, which this
//! crate's dev-dependency on itself turns on; never in the binary). Each figure is derived from
//! one number the test chooses, so that it can predict every value it reads back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xdt_wire::{
    AgentStats, Batch, DnsQuery, Event, Flow, FlowEnd, FlowKey, FlowStats, Headers, Hello,
    HttpRequest, Inspection, LabelCount, SteeringStats,
};

/// A label that every export has to escape (quotes, a newline, markup).
pub const ESCAPED_LABEL: &str = "web \"q\"\n<b>";

#[must_use]
pub fn hello(agent_id: &str, instance: u64, token: &str) -> Hello {
    Hello {
        agent_id: agent_id.into(),
        hostname: format!("{agent_id}.example"),
        interface: "eth0".into(),
        probe_version: "0.1.0".into(),
        instance,
        token: token.into(),
    }
}

/// A sampled TCP segment from 192.0.2.1:40000 to [2001:db8::1]:80 with `payload_len` bytes.
#[must_use]
pub fn event(timestamp_unix_ns: u64, label: &str, payload_len: u16) -> Event {
    Event {
        timestamp_unix_ns,
        label: label.into(),
        rule: 1,
        action: "sample".into(),
        rx_queue: 0,
        headers: Headers {
            protocol: 6,
            src: Ipv4Addr::new(192, 0, 2, 1).into(),
            dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            src_port: 40000,
            dst_port: 80,
            ip_len: 60 + payload_len,
            payload_len,
            tcp_flags: 0x18,
        },
        inspection: None,
    }
}

/// The `i`-th sampled TCP segment of a bulk HTTPS transfer, read at `timestamp_unix_ns`: what
/// the benchmarks send.
#[must_use]
pub fn https_event(timestamp_unix_ns: u64, i: u64) -> Event {
    let sampled = event(timestamp_unix_ns, "web", 1448);
    Event {
        rule: 3,
        rx_queue: 1,
        headers: Headers {
            src: Ipv4Addr::new(198, 51, 100, 23).into(),
            dst: Ipv4Addr::new(203, 0, 113, 10).into(),
            // Below 20,000: a port of 40,000 to 59,999.
            src_port: 40_000 + (i % 20_000) as u16,
            dst_port: 443,
            ip_len: 1500,
            tcp_flags: 0x10,
            ..sampled.headers
        },
        ..sampled
    }
}

/// A steered packet's event: `http` is (method, path, host), `dns` is (name, qtype).
#[must_use]
pub fn steered_event(
    timestamp_unix_ns: u64,
    http: Option<(&str, &str, Option<&str>)>,
    dns: Option<(&str, u16)>,
) -> Event {
    let mut e = event(timestamp_unix_ns, "inspect", 120);
    e.action = "steer".into();
    e.rule = 4;
    e.rx_queue = 3;
    e.inspection = Some(Box::new(Inspection {
        frame_len: 194,
        agent_latency_ns: 23_456,
        reinjected: dns.is_none(),
        http: http.map(|(method, path, host)| HttpRequest {
            method: method.into(),
            path: path.into(),
            host: host.map(Into::into),
        }),
        dns: dns.map(|(name, qtype)| DnsQuery {
            name: name.into(),
            qtype,
        }),
    }));
    e
}

/// AF_XDP figures derived from `received` and `lost`: received bytes 100 x received,
/// reinjected received - lost, and the losses lost x 1..=5.
#[must_use]
pub fn steering(received: u64, lost: u64) -> SteeringStats {
    SteeringStats {
        mode: "zerocopy".into(),
        reinject: "host via xdt5r".into(),
        sockets: 4,
        received_packets: received,
        received_bytes: received * 100,
        reinjected_packets: received - lost,
        reinject_dropped: lost,
        rx_dropped: 2 * lost,
        rx_ring_full: 3 * lost,
        rx_fill_ring_empty: 4 * lost,
        tx_invalid_descs: 5 * lost,
    }
}

/// The demo's counters, all derived from `packets`.
#[must_use]
pub fn counters(packets: u64) -> Vec<(String, u64)> {
    vec![
        ("total_packets".into(), packets),
        ("total_bytes".into(), packets * 100),
        ("ipv4_packets".into(), packets / 2),
        ("ipv6_packets".into(), packets - packets / 2),
        ("tcp_packets".into(), packets / 4),
        ("udp_packets".into(), packets / 8),
        ("icmp_packets".into(), 1),
        (
            "other_packets".into(),
            packets.saturating_sub(packets / 4 + packets / 8 + 1),
        ),
        ("dropped_packets".into(), 0),
        ("lost_events".into(), 3),
    ]
}

/// Every counter of the probe's catalogue, the `n`-th (from 0) at `value(n)`.
pub fn probe_counters(value: impl Fn(u64) -> u64) -> Vec<(String, u64)> {
    xdt_common::counters::NAMES
        .iter()
        .zip(0..)
        .map(|(name, n)| ((*name).to_owned(), value(n)))
        .collect()
}

/// Two labels: `web` with the counts given, and one that needs escaping with 7 packets.
#[must_use]
pub fn labels(web_packets: u64, web_bytes: u64) -> Vec<LabelCount> {
    vec![
        LabelCount {
            label: "web".into(),
            packets: web_packets,
            bytes: web_bytes,
        },
        LabelCount {
            label: "dns \"q\"\n<b>".into(),
            packets: 7,
            bytes: 700,
        },
    ]
}

/// Batch `sequence` taken at `taken_at_s`: [`counters`] and [`labels`] from `packets`.
#[must_use]
pub fn batch(sequence: u64, taken_at_s: u64, packets: u64, events: Vec<Event>) -> Batch {
    Batch {
        sequence,
        taken_at_unix_ns: taken_at_s * 1_000_000_000,
        counters: counters(packets),
        labels: labels(packets / 2, packets * 50),
        events,
        agent: AgentStats {
            dropped_events: 2,
            unacked_batches: 1,
            reconnects: 4,
            probe_ns_per_packet: Some(21.5),
            steering: None,
        },
    }
}

/// [`batch`] from an agent that steers.
#[must_use]
pub fn steered_batch(
    sequence: u64,
    taken_at_s: u64,
    packets: u64,
    events: Vec<Event>,
    steering: SteeringStats,
) -> Batch {
    let mut b = batch(sequence, taken_at_s, packets, events);
    b.agent.steering = Some(steering);
    b
}

/// A TCP flow record from `10.0.{i / 256}.{i % 256}` to 192.0.2.1:443, its counts given.
#[must_use]
pub fn flow(i: u32, packets: u64, bytes: u64) -> Flow {
    let [_, _, a, b] = i.to_be_bytes();
    Flow {
        key: FlowKey {
            src: IpAddr::from([10, 0, a, b]),
            dst: Ipv4Addr::new(192, 0, 2, 1).into(),
            src_port: 40_000,
            dst_port: 443,
            protocol: 6,
            vlans: [0, 0],
        },
        packets,
        bytes,
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_000_000_000,
        tcp_flags: 0x1b,
        label: Some("web".into()),
        handshake_ns: Some(150_000 + u64::from(i)),
        end: FlowEnd::EndOfFlow,
    }
}

/// The agent's flow figures, derived from `records`.
#[must_use]
pub fn flow_stats(records: u64) -> FlowStats {
    FlowStats {
        active: 7,
        records,
        state_full: 1,
        dropped_records: 2,
        ipfix_messages: records / 10,
        ipfix_records: records,
        ipfix_send_failures: 3,
    }
}
