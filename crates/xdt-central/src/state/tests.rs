#![expect(clippy::float_cmp, reason = "the rates of these tests are exact")]

use super::*;
use crate::fixtures::{ESCAPED_LABEL, event, hello, steering};
use xdt_wire::{AgentStats as WireStats, LabelCount as WireLabel};

/// Central's clock in these tests: the batches' times (a few hundred seconds) are past.
const NOW: f64 = 2e9;

fn batch(sequence: u64, taken_s: u64, packets: u64, bytes: u64, events: usize) -> Batch {
    Batch {
        sequence,
        taken_at_unix_ns: taken_s * 1_000_000_000,
        counters: vec![
            ("total_packets".into(), packets),
            ("total_bytes".into(), bytes),
        ],
        labels: vec![WireLabel {
            label: "web".into(),
            packets,
            bytes,
        }],
        events: (0..events)
            .map(|i| event(taken_s * 1_000_000_000 + i as u64, ESCAPED_LABEL, i as u16))
            .collect(),
        agent: WireStats::default(),
    }
}

#[test]
fn applies_each_sequence_once_per_instance() {
    let mut state = State::new(10, 4);
    assert_eq!(state.connect(&hello("a", 7, "t"), 1.0), Ok(0));
    assert_eq!(
        state.apply("a", 7, batch(1, 10, 5, 500, 3), 1.0),
        Applied::New
    );
    assert_eq!(
        state.apply("a", 7, batch(1, 10, 5, 500, 3), 1.0),
        Applied::Duplicate
    );
    assert_eq!(
        state.apply("a", 7, batch(2, 11, 9, 900, 2), 1.0),
        Applied::New
    );
    assert_eq!(state.total_events(), 5);
    // Reconnect: Welcome carries the last sequence of the instance.
    state.disconnect("a", 2.0);
    assert!(!state.agent("a").expect("a").connected());
    assert_eq!(state.connect(&hello("a", 7, "t"), 3.0), Ok(2));
    assert!(state.agent("a").expect("a").connected());
    // A new instance starts its own sequence.
    assert_eq!(state.connect(&hello("a", 8, "t"), 3.0), Ok(0));
    assert_eq!(
        state.apply("a", 8, batch(1, 12, 10, 1000, 1), 3.0),
        Applied::New
    );
    assert_eq!(
        state.apply("a", 7, batch(2, 12, 10, 1000, 1), 3.0),
        Applied::Duplicate
    );
    assert_eq!(state.total_events(), 6);
}

#[test]
fn rates_from_the_last_two_snapshots_and_resets() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 1, "t"), 0.0).expect("connect");
    state.apply("a", 1, batch(1, 100, 1000, 100_000, 0), NOW);
    let a = state.agent("a").expect("a");
    assert_eq!(a.rates, Rates::default());
    assert!(a.rate_history.is_empty());
    state.apply("a", 1, batch(2, 102, 3000, 300_000, 0), NOW);
    let a = state.agent("a").expect("a");
    assert_eq!(a.rates.packets_per_second, 1000.0);
    assert_eq!(a.rates.bits_per_second, 800_000.0);
    assert_eq!(a.rate_history.back(), Some(&[102.0, 1000.0, 800_000.0]));
    // Re-attach: counters start from zero again.
    state.apply("a", 1, batch(3, 104, 400, 40_000, 0), NOW);
    let a = state.agent("a").expect("a");
    assert_eq!(a.rates.packets_per_second, 200.0);
    assert_eq!(a.counter("total_packets"), Some(400));
    for s in 4..300 {
        state.apply("a", 1, batch(s, 100 + s, 400 + s, 40_000, 0), NOW);
    }
    assert_eq!(
        state.agent("a").expect("a").rate_history.len(),
        RATE_HISTORY
    );
}

#[test]
fn bounded_events_and_histories() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 1, "t"), 0.0).expect("connect");
    state.apply("a", 1, batch(1, 1, 0, 0, 1000), NOW);
    let a = state.agent("a").expect("a");
    assert_eq!(a.total_events, 1000);
    assert_eq!(a.recent_events.len(), 4);
    assert_eq!(
        a.recent_events.back().map(|e| e.headers.payload_len),
        Some(999)
    );
    assert_eq!(
        a.recent_events.front().map(|e| e.headers.payload_len),
        Some(996)
    );
    assert_eq!(a.payload_history.len(), PAYLOAD_HISTORY);
    assert_eq!(a.payload_history.back().map(|p| p.1), Some(999));
    assert_eq!(
        a.payload_history.front().map(|p| p.1),
        Some((1000 - PAYLOAD_HISTORY) as u16)
    );
}

#[test]
fn agent_table_is_bounded_and_strings_clipped() {
    let mut state = State::new(2, 4);
    let long = "é".repeat(200);
    state.connect(&hello(&long, 1, "t"), 0.0).expect("a");
    state.connect(&hello("b", 1, "t"), 0.0).expect("b");
    assert_eq!(
        state.connect(&hello("c", 1, "t"), 0.0),
        Err(Refused::TableFull { max: 2 })
    );
    // A known agent is still let in.
    assert_eq!(state.connect(&hello("b", 1, "t"), 0.0), Ok(0));
    let id = state
        .agents()
        .find(|a| a.agent_id != "b")
        .expect("agent")
        .agent_id
        .clone();
    assert!(
        id.len() <= MAX_NAME && long.starts_with(&id),
        "{}",
        id.len()
    );
    // Batches of the clipped agent id land on it.
    assert_eq!(
        state.apply(&long, 1, batch(1, 1, 1, 1, 1), 0.0),
        Applied::New
    );
}

#[test]
fn new_agents_are_rate_limited_and_evict_the_longest_disconnected() {
    let burst = usize::try_from(NEW_AGENT_BURST).expect("small");
    let mut state = State::new(burst + 10, 4);
    for i in 0..burst {
        state
            .connect(&hello(&format!("a{i}"), 1, "t"), 0.0)
            .expect("burst");
    }
    assert_eq!(
        state.connect(&hello("late", 1, "t"), 0.0),
        Err(Refused::TooManyNew)
    );
    // A known agent is never rate limited.
    assert_eq!(state.connect(&hello("a0", 1, "t"), 0.0), Ok(0));
    // One second refills NEW_AGENTS_PER_SECOND.
    for i in 0..NEW_AGENTS_PER_SECOND {
        let id = format!("b{i}");
        let result = state.connect(&hello(&id, 1, "t"), 1.0);
        if i < 10 {
            assert_eq!(result, Ok(0), "{id}");
        } else {
            // The table is full of connected agents from here on.
            assert_eq!(result, Err(Refused::TableFull { max: burst + 10 }), "{id}");
        }
    }
    // Disconnected agents make room, the one seen longest ago first.
    state.disconnect("a7", 5.0);
    state.disconnect("a3", 4.0);
    assert_eq!(state.connect(&hello("c", 1, "t"), 10.0), Ok(0));
    assert!(state.agent("a3").is_none() && state.agent("a7").is_some());
    assert_eq!(state.take_removed(), ["a3"]);
    assert_eq!(
        state
            .counters()
            .agents_evicted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Expiry takes the disconnected ones older than the limit.
    assert_eq!(state.expire(100.0, 50.0), 1);
    assert!(state.agent("a7").is_none());
    assert_eq!(state.take_removed(), ["a7"]);
}

/// The AF_XDP packets agent `a` received, as central keeps them.
fn received_packets(state: &State) -> Option<u64> {
    let a = state.agent("a").expect("a");
    a.agent_stats.steering.as_ref().map(|s| s.received_packets)
}

fn steered(sequence: u64, taken_s: u64, received: u64, lost: u64) -> Batch {
    let mut b = batch(sequence, taken_s, received, received * 100, 0);
    b.agent.steering = Some(steering(received, lost));
    b
}

#[test]
fn steering_figures_are_the_newest_snapshot_with_rates() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 1, "t"), 0.0).expect("connect");
    state.apply("a", 1, steered(1, 100, 1000, 10), NOW);
    let a = state.agent("a").expect("a");
    let s = a.agent_stats.steering.as_ref().expect("steering");
    assert_eq!(
        (s.mode.as_str(), s.reinject.as_str()),
        ("zerocopy", "host via xdt5r")
    );
    assert_eq!(
        (s.sockets, s.received_packets, s.tx_invalid_descs),
        (4, 1000, 50)
    );
    assert_eq!(a.steering_rates, None, "one snapshot has no rate");

    state.apply("a", 1, steered(2, 102, 3000, 30), NOW);
    let rates = state.agent("a").expect("a").steering_rates.expect("rates");
    assert_eq!(rates.get("received_packets_per_second"), Some(1000.0));
    assert_eq!(rates.get("received_bits_per_second"), Some(800_000.0));
    assert_eq!(rates.get("reinjected_packets_per_second"), Some(990.0));
    assert_eq!(rates.get("reinject_dropped_per_second"), Some(10.0));
    assert_eq!(rates.get("rx_dropped_per_second"), Some(20.0));
    assert_eq!(rates.get("rx_ring_full_per_second"), Some(30.0));
    assert_eq!(rates.get("rx_fill_ring_empty_per_second"), Some(40.0));
    assert_eq!(rates.get("tx_invalid_descs_per_second"), Some(50.0));

    // Within an instance the sequence orders the snapshots, not the agent's clock: a clock
    // stepped back does not keep the newer figures out.
    state.apply("a", 1, steered(3, 101, 2000, 20), NOW);
    assert_eq!(received_packets(&state), Some(2000));
    // A batch of an older instance, replayed after a newer one said Hello, does not
    // replace the newer figures.
    state.connect(&hello("a", 9, "t"), 0.0).expect("connect");
    state.connect(&hello("a", 1, "t"), 0.0).expect("connect");
    state.apply("a", 9, steered(1, 200, 1, 0), NOW);
    assert_eq!(received_packets(&state), Some(2000));

    // A restarted agent (new instance) counts from zero, even above the old figures.
    state.connect(&hello("a", 2, "t"), 0.0).expect("connect");
    state.apply("a", 2, steered(1, 104, 4000, 0), NOW);
    assert_eq!(received_packets(&state), Some(4000));
    let rates = state.agent("a").expect("a").steering_rates.expect("rates");
    // Over the 3 s since the snapshot taken at 101.
    assert_eq!(rates.get("received_packets_per_second"), Some(4000.0 / 3.0));
    assert_eq!(rates.get("reinject_dropped_per_second"), Some(0.0));
    // The same instance going backwards (impossible, but an agent is untrusted) too.
    state.apply("a", 2, steered(2, 106, 1000, 0), NOW);
    let rates = state.agent("a").expect("a").steering_rates.expect("rates");
    assert_eq!(rates.get("received_packets_per_second"), Some(500.0));

    // An agent that stops steering reports none: the figures and rates go.
    state.apply("a", 2, batch(3, 108, 1, 1, 0), NOW);
    let a = state.agent("a").expect("a");
    assert_eq!(a.agent_stats.steering, None);
    assert_eq!(a.steering_rates, None);
    // The other agent statistics still follow every batch.
    assert_eq!(a.agent_stats.dropped_events, 0);
}

#[test]
fn steering_strings_and_inspections_are_clipped() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 1, "t"), 0.0).expect("connect");
    let mut b = steered(1, 1, 10, 0);
    let long = "é".repeat(400);
    if let Some(s) = &mut b.agent.steering {
        s.mode.clone_from(&long);
        s.reinject.clone_from(&long);
    }
    let mut http = event(5, ESCAPED_LABEL, 100);
    http.action = "steer".into();
    http.inspection = Some(Box::new(xdt_wire::Inspection {
        frame_len: 214,
        agent_latency_ns: 12_345,
        reinjected: true,
        http: Some(xdt_wire::HttpRequest {
            method: long.clone(),
            path: format!("/{long}"),
            host: Some(long.clone()),
        }),
        dns: Some(xdt_wire::DnsQuery {
            name: long.clone(),
            qtype: 28,
        }),
    }));
    b.events = vec![event(4, ESCAPED_LABEL, 10), http];
    state.apply("a", 1, b, NOW);
    let a = state.agent("a").expect("a");
    let s = a.agent_stats.steering.as_ref().expect("steering");
    assert!(
        s.mode.len() <= MAX_SHORT && long.starts_with(&s.mode),
        "{}",
        s.mode.len()
    );
    assert!(s.reinject.len() <= MAX_SHORT, "{}", s.reinject.len());
    assert_eq!(
        a.recent_events[0].inspection, None,
        "a sampled event has none"
    );
    let i = a.recent_events[1]
        .inspection
        .as_deref()
        .expect("inspection");
    assert_eq!(
        (i.frame_len, i.agent_latency_ns, i.reinjected),
        (214, 12_345, true)
    );
    let http = i.http.as_ref().expect("http");
    assert!(http.method.len() <= MAX_SHORT, "{}", http.method.len());
    assert!(
        http.path.len() <= MAX_INSPECTED && http.path.starts_with("/é"),
        "{}",
        http.path.len()
    );
    assert!(http.host.as_ref().is_some_and(|h| h.len() <= MAX_INSPECTED));
    let dns = i.dns.as_ref().expect("dns");
    assert!(dns.name.len() <= MAX_INSPECTED && dns.qtype == 28);
}

#[test]
fn persisted_steering_round_trips_and_old_files_load() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 7, "t"), 0.0).expect("connect");
    state.apply("a", 7, steered(1, 10, 500, 5), NOW);
    let json = serde_json::to_string(&crate::persist::persisted(&state)).expect("json");
    let mut restored = State::new(10, 4);
    crate::persist::restore(&mut restored, serde_json::from_str(&json).expect("parse"));
    let a = restored.agent("a").expect("a");
    assert_eq!(
        a.agent_stats.steering,
        state.agent("a").expect("a").agent_stats.steering
    );
    // The same instance goes on: its rate counts from the restored figures.
    restored.connect(&hello("a", 7, "t"), 0.0).expect("connect");
    restored.apply("a", 7, steered(2, 12, 700, 5), NOW);
    let rates = restored
        .agent("a")
        .expect("a")
        .steering_rates
        .expect("rates");
    assert_eq!(rates.get("received_packets_per_second"), Some(100.0));

    // A state.json written before steering existed.
    let old = r#"{"version":1,"agents":[{"agent_id":"o","hostname":"h","interface":"eth0",
        "probe_version":"0.1.0","instance":3,"sequences":[[3,9]],"last_seen_unix":1.0,
        "total_events":2,"taken_at_unix_ns":5,"counters":[],"labels":[],
        "agent":{"dropped_events":1,"reconnects":2,"unacked_batches":0,
                 "probe_ns_per_packet":null}}]}"#;
    let mut restored = State::new(10, 4);
    crate::persist::restore(
        &mut restored,
        serde_json::from_str(old).expect("parse an old file"),
    );
    let o = restored.agent("o").expect("o");
    assert_eq!(o.agent_stats.steering, None);
    assert_eq!(o.agent_stats.reconnects, 2);
}

#[test]
fn persisted_state_round_trips() {
    let mut state = State::new(10, 4);
    state.connect(&hello("a", 7, "t"), 0.0).expect("connect");
    state.apply("a", 7, batch(3, 10, 5, 500, 2), NOW);
    let json = serde_json::to_string(&crate::persist::persisted(&state)).expect("json");
    let mut restored = State::new(10, 4);
    crate::persist::restore(&mut restored, serde_json::from_str(&json).expect("parse"));
    let a = restored.agent("a").expect("a");
    assert!(!a.connected());
    assert_eq!(a.last_sequence(7), 3);
    assert_eq!(a.total_events, 2);
    assert_eq!(a.counter("total_bytes"), Some(500));
    assert_eq!(a.labels[0].packets, 5);
    assert_eq!(
        restored.apply("a", 7, batch(3, 10, 5, 500, 2), 0.0),
        Applied::Duplicate
    );
}
