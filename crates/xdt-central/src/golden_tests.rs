//! The exporters' output for one fixed fleet, compared byte for byte with the documents kept in
//! `tests/golden/`: a change of a Prometheus name, help text, label or value, or of a
//! `/metrics.json` field, fails here first. `XDT_BLESS=1` rewrites the documents (review the
//! diff: they are the contract with dashboards, alert rules and scrapers).

use std::{path::PathBuf, sync::atomic::Ordering};

use xdt_wire::{
    AgentStats, Batch, DnsQuery, Event, Flow, FlowEnd, FlowStats, HttpRequest, Inspection,
    LabelCount, SteeringStats,
};

use crate::{
    fixtures::{event, hello},
    state::{Shared, State},
};

fn steered(ts: u64, http: bool) -> Event {
    let mut e = event(ts, 120);
    e.action = "steer".into();
    e.inspection = Some(Box::new(Inspection {
        frame_len: 194,
        agent_latency_ns: 23_456,
        reinjected: http,
        http: http.then(|| HttpRequest {
            method: "GET".into(),
            path: "/a?b=<c>".into(),
            host: Some("shop.example".into()),
        }),
        dns: (!http).then(|| DnsQuery {
            name: "svc.example.com".into(),
            qtype: 28,
        }),
    }));
    e
}

/// Every counter the probe has, each value distinct.
fn probe_counters(scale: u64) -> Vec<(String, u64)> {
    xdt_common::counters::NAMES
        .iter()
        .zip(1..)
        .map(|(name, i)| ((*name).to_owned(), i * scale))
        .collect()
}

/// The otel demo's `pkt_stats` map: 8 counters only.
fn pkt_stats(scale: u64) -> Vec<(String, u64)> {
    [
        "total_packets",
        "total_bytes",
        "icmp_packets",
        "tcp_packets",
        "udp_packets",
        "other_packets",
        "ipv4_packets",
        "ipv6_packets",
    ]
    .iter()
    .zip(1..)
    .map(|(name, i)| ((*name).to_owned(), i * scale))
    .collect()
}

fn steering(received: u64) -> SteeringStats {
    SteeringStats {
        mode: "zerocopy".into(),
        reinject: "host via xdt5r".into(),
        sockets: 4,
        received_packets: received,
        received_bytes: received * 100,
        reinjected_packets: received - 3,
        reinject_dropped: 3,
        rx_dropped: 5,
        rx_ring_full: received / 7,
        rx_fill_ring_empty: received / 11,
        tx_invalid_descs: 1,
    }
}

fn batch(sequence: u64, taken_s: u64, counters: Vec<(String, u64)>, events: Vec<Event>) -> Batch {
    Batch {
        sequence,
        taken_at_unix_ns: taken_s * 1_000_000_000 + 250_000_000,
        counters,
        labels: vec![
            LabelCount {
                label: "web".into(),
                packets: 10 * sequence,
                bytes: 1000 * sequence,
            },
            LabelCount {
                label: "dns \"q\"\n<b>".into(),
                packets: 7,
                bytes: 700,
            },
        ],
        events,
        agent: AgentStats {
            dropped_events: 2,
            unacked_batches: 1,
            reconnects: 3,
            probe_ns_per_packet: Some(42.5),
            steering: None,
        },
    }
}

/// The golden fleet's time: its batches arrive in the two seconds after it.
const NOW: f64 = 1_700_000_000.0;

/// Flow records of node-a: three flows, one of them in two records, one with a label that
/// needs escaping; the IPv6 one has a handshake.
fn flows() -> Vec<Flow> {
    let flow = |src: &str, dst: &str, dst_port: u16, packets: u64, bytes: u64| Flow {
        src: src.parse().expect("ip"),
        dst: dst.parse().expect("ip"),
        src_port: 40_000,
        dst_port,
        protocol: 6,
        vlans: [0, 0],
        packets,
        bytes,
        first_seen_unix_ns: 1_699_999_990_000_000_000,
        last_seen_unix_ns: 1_699_999_999_500_000_000,
        tcp_flags: 0x1b,
        label: Some("web \"q\"\n<b>".into()),
        handshake_ns: None,
        end: FlowEnd::EndOfFlow,
    };
    vec![
        Flow {
            handshake_ns: Some(180_000),
            ..flow("2001:db8::2", "2001:db8::1", 443, 10, 9_000)
        },
        flow("192.0.2.7", "192.0.2.1", 80, 50, 4_000),
        Flow {
            protocol: 17,
            tcp_flags: 0,
            label: None,
            end: FlowEnd::Idle,
            vlans: [100, 0],
            ..flow("192.0.2.8", "192.0.2.1", 53, 2, 150)
        },
        Flow {
            end: FlowEnd::Active,
            ..flow("192.0.2.7", "192.0.2.1", 80, 5, 400)
        },
    ]
}

/// A steering agent with every counter and flows, a foreign-map agent, an agent that disconnected and
/// one that never sent a batch.
fn fleet() -> Shared {
    let mut state = State::new(10, 8);
    let now = NOW;
    state.connect(&hello("node-a/eth0", 7), now).expect("a");
    let mut first = batch(1, 1_700_000_000, probe_counters(100), vec![event(1, 10)]);
    first.agent.steering = Some(steering(1000));
    state.apply("node-a/eth0", 7, first, now);
    let mut second = batch(
        2,
        1_700_000_002,
        probe_counters(300),
        vec![event(2, 20), steered(3, true), steered(4, false)],
    );
    second.agent.steering = Some(steering(5000));
    let stats = FlowStats {
        active: 12,
        records: 4,
        state_full: 1,
        dropped_records: 2,
        ipfix_messages: 3,
        ipfix_records: 4,
        ipfix_send_failures: 1,
    };
    state.apply_with_flows("node-a/eth0", 7, second, Some((flows(), stats)), now + 2.0);

    state.connect(&hello("node-b", 1), now).expect("b");
    let mut b1 = batch(1, 1_700_000_000, pkt_stats(10), Vec::new());
    b1.agent.probe_ns_per_packet = None;
    state.apply("node-b", 1, b1, now);
    let mut b2 = batch(2, 1_700_000_001, pkt_stats(25), vec![event(5, 30)]);
    b2.agent.probe_ns_per_packet = None;
    state.apply("node-b", 1, b2, now + 1.0);
    state.disconnect("node-b", now + 3.0);

    state.connect(&hello("node-c", 9), now + 4.0).expect("c");

    let counters = std::sync::Arc::clone(state.counters());
    counters.http_rejected.store(4, Ordering::Relaxed);
    counters.agents_refused.store(1, Ordering::Relaxed);
    Shared::new(state)
}

fn compare(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("XDT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (XDT_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let (expected, actual) = (
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(actual),
        );
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} at line {} (a change of what central exports: if it is \
             meant, as a counter added to a catalogue is, `XDT_BLESS=1 cargo test -p \
             xdt-central --lib golden` rewrites it; review that diff):\n\
             expected: {:?}\nactual:   {:?}",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn prometheus_text_is_unchanged() {
    let registry = crate::export::prom::registry_at(fleet(), 100, Some(NOW + 2.5));
    let body = crate::export::prom::render(&registry).expect("render");
    compare("metrics.txt", body.as_bytes());
}

#[test]
fn metrics_json_is_unchanged() {
    compare(
        "metrics.json",
        &crate::export::json::render_at(&fleet(), NOW + 2.5),
    );
}
