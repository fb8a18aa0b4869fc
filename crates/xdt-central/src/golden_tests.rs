//! The exporters' output for one fixed fleet, compared byte for byte with the documents kept in
//! `tests/golden/`: a change of a Prometheus name, help text, label or value, or of a
//! `/metrics.json` field, fails here first. `XDT_BLESS=1` rewrites the documents (review the
//! diff: they are the contract with dashboards, alert rules and scrapers).

use std::{path::PathBuf, sync::atomic::Ordering};

use xdt_common::pkt_stats;
use xdt_wire::{Batch, Event, Flow, FlowEnd, FlowKey, FlowStats, SteeringStats};

use crate::{
    fixtures::{self, ESCAPED_LABEL},
    state::{Shared, State},
};

/// A sampled event whose label needs escaping in every export, on RX queue 2.
fn event(ts: u64, payload_len: u16) -> Event {
    Event {
        rx_queue: 2,
        ..fixtures::event(ts, ESCAPED_LABEL, payload_len)
    }
}

/// A steered HTTP request (reinjected) or DNS question (not), with [`event`]'s label and queue.
fn steered(ts: u64, http: bool) -> Event {
    let http_request = ("GET", "/a?b=<c>", Some("shop.example"));
    Event {
        label: ESCAPED_LABEL.into(),
        rule: 1,
        rx_queue: 2,
        ..fixtures::steered_event(
            ts,
            http.then_some(http_request),
            (!http).then_some(("svc.example.com", 28)),
        )
    }
}

/// Every counter the probe has, each value distinct.
fn probe_counters(scale: u64) -> Vec<(String, u64)> {
    fixtures::probe_counters(|n| (n + 1) * scale)
}

/// The otel demo's `pkt_stats` map: 8 counters only.
fn pkt_stats(scale: u64) -> Vec<(String, u64)> {
    pkt_stats::FIELDS
        .iter()
        .zip(1..)
        .map(|(name, i)| ((*name).to_owned(), i * scale))
        .collect()
}

fn steering(received: u64) -> SteeringStats {
    SteeringStats {
        reinjected_packets: received - 3,
        reinject_dropped: 3,
        rx_dropped: 5,
        rx_ring_full: received / 7,
        rx_fill_ring_empty: received / 11,
        tx_invalid_descs: 1,
        ..fixtures::steering(received, 0)
    }
}

/// [`fixtures::batch`] with the golden fleet's own figures: the probe's `counters`, a quarter
/// second past `taken_s`, label counts growing with the sequence.
fn batch(sequence: u64, taken_s: u64, counters: Vec<(String, u64)>, events: Vec<Event>) -> Batch {
    let mut b = fixtures::batch(sequence, taken_s, 0, events);
    b.taken_at_unix_ns += 250_000_000;
    b.counters = counters;
    b.labels = fixtures::labels(10 * sequence, 1000 * sequence);
    b.agent.reconnects = 3;
    b.agent.probe_ns_per_packet = Some(42.5);
    b
}

/// The golden fleet's time: its batches arrive in the two seconds after it.
const NOW: f64 = 1_700_000_000.0;

/// Flow records of node-a: three flows, one of them in two records, one with a label that
/// needs escaping; the IPv6 one has a handshake.
fn flows() -> Vec<Flow> {
    let flow = |src: &str, dst: &str, dst_port: u16, packets: u64, bytes: u64| Flow {
        key: FlowKey {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            src_port: 40_000,
            dst_port,
            protocol: 6,
            vlans: [0, 0],
        },
        packets,
        bytes,
        first_seen_unix_ns: 1_699_999_990_000_000_000,
        last_seen_unix_ns: 1_699_999_999_500_000_000,
        tcp_flags: 0x1b,
        label: Some(ESCAPED_LABEL.into()),
        handshake_ns: None,
        end: FlowEnd::EndOfFlow,
    };
    vec![
        Flow {
            handshake_ns: Some(180_000),
            ..flow("2001:db8::2", "2001:db8::1", 443, 10, 9_000)
        },
        flow("192.0.2.7", "192.0.2.1", 80, 50, 4_000),
        {
            let mut dns = flow("192.0.2.8", "192.0.2.1", 53, 2, 150);
            dns.key.protocol = 17;
            dns.key.vlans = [100, 0];
            Flow {
                tcp_flags: 0,
                label: None,
                end: FlowEnd::Idle,
                ..dns
            }
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
    state
        .connect(&fixtures::hello("node-a/eth0", 7, "t"), now)
        .expect("a");
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
        ipfix_messages: 3,
        ipfix_send_failures: 1,
        ..fixtures::flow_stats(4)
    };
    state.apply_with_flows("node-a/eth0", 7, second, Some((flows(), stats)), now + 2.0);

    state
        .connect(&fixtures::hello("node-b", 1, "t"), now)
        .expect("b");
    let mut b1 = batch(1, 1_700_000_000, pkt_stats(10), Vec::new());
    b1.agent.probe_ns_per_packet = None;
    state.apply("node-b", 1, b1, now);
    let mut b2 = batch(2, 1_700_000_001, pkt_stats(25), vec![event(5, 30)]);
    b2.agent.probe_ns_per_packet = None;
    state.apply("node-b", 1, b2, now + 1.0);
    state.disconnect("node-b", now + 3.0);

    state
        .connect(&fixtures::hello("node-c", 9, "t"), now + 4.0)
        .expect("c");

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
