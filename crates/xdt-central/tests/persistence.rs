//! `--state-dir`: central restarted mid-stream loses no batch and counts none twice.

mod common;

use std::time::{Duration, Instant};

use common::{
    STEP, TOKEN, TempDir, TestAgent, TestCentral, batch, config, event, get, hello, node,
    steered_batch, steering, wait_for_json,
};

fn events(n: u64) -> Vec<xdt_wire::Event> {
    (0..n).map(|i| event(i, "web", 64)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_after_a_restart_is_not_counted_twice() {
    let dir = TempDir::new("restart");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());

    // First life: batches 1..=3 (10 events each) are applied and acknowledged; batch 4 is
    // applied, but the agent never sees its Ack (central stops first).
    let central = TestCentral::start(cfg.clone()).await;
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("n1", 42, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 0);
    for s in 1..=3 {
        assert_eq!(agent.batch(batch(s, s, s * 100, events(10))).await, s);
    }
    agent
        .send(&xdt_wire::Message::Batch(batch(4, 4, 400, events(10))))
        .await;
    // Wait until central has applied it, then stop.
    common::wait_for_json(central.http, |j| node(j, "n1")["last_sequence"] == 4).await;
    central.stop().await.expect("clean stop");
    assert!(dir.path().join("state.json").exists());

    // Second life: the agent reconnects with the same instance and replays what it has not
    // seen acknowledged (batch 4), then goes on.
    let central = TestCentral::start(cfg.clone()).await;
    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "n1");
    assert_eq!(n["total_events"], 40, "restored: {n:#}");
    assert_eq!(n["connected"], false);
    assert_eq!(n["counters"]["total_packets"], 400);
    assert_eq!(n["label_counts"][0]["packets"], 200);
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("n1", 42, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 4, "dedup state survived the restart");
    // An agent replays everything above last_sequence; a confused one may replay more.
    assert_eq!(agent.batch(batch(3, 3, 300, events(10))).await, 3);
    assert_eq!(agent.batch(batch(4, 4, 400, events(10))).await, 4);
    assert_eq!(agent.batch(batch(5, 5, 500, events(10))).await, 5);
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "n1")["total_events"], 50);
    assert_eq!(json["total_events"], 50);
    drop(agent);
    central.stop().await.expect("clean stop");

    // Third life: nothing replayed, nothing lost.
    let central = TestCentral::start(cfg).await;
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "n1")["total_events"], 50);
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_stats_survive_a_restart_so_counters_do_not_reset() {
    let dir = TempDir::new("steering");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());
    let central = TestCentral::start(cfg.clone()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("s1", 5, TOKEN)).await;
    assert_eq!(
        agent
            .batch(steered_batch(1, 10, 100, vec![], steering(2000, 7)))
            .await,
        1
    );
    let before = get(central.http, "/metrics.json").await.json();
    drop(agent);
    central.stop().await.expect("clean stop");

    let central = TestCentral::start(cfg).await;
    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "s1");
    assert_eq!(
        n["agent"]["steering"],
        node(&before, "s1")["agent"]["steering"]
    );
    assert_eq!(n["agent"]["steering"]["received_packets"], 2000);
    assert_eq!(n["agent"]["steering"]["tx_invalid_descs"], 35);
    let text = get(central.http, "/metrics").await.text();
    let labels = r#"agent_id="s1",interface="eth0""#;
    for line in [
        format!("xdt_steering_received_packets_total{{{labels}}} 2000"),
        format!("xdt_steering_reinject_dropped_total{{{labels}}} 7"),
        format!("xdt_steering_rx_fill_ring_empty_total{{{labels}}} 28"),
        format!(r#"xdt_steering_info{{{labels},mode="zerocopy",reinject="host via xdt5r"}} 1"#),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} after the restart in\n{text}"
        );
    }
    // The same agent instance goes on: the rate spans the restart from the saved figures.
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("s1", 5, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 1);
    assert_eq!(
        agent
            .batch(steered_batch(2, 14, 200, vec![], steering(2400, 7)))
            .await,
        2
    );
    let json = get(central.http, "/metrics.json").await.json();
    let rates = &node(&json, "s1")["steering_rates"];
    assert_eq!(rates["received_packets_per_second"], 100.0, "{rates}");
    assert_eq!(rates["reinject_dropped_per_second"], 0.0, "{rates}");
    drop(agent);
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_saved_periodically_while_running() {
    let dir = TempDir::new("periodic");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());
    cfg.persist_interval = Duration::from_millis(100);
    let central = TestCentral::start(cfg).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("p1", 9, TOKEN)).await;
    assert_eq!(agent.batch(batch(7, 7, 700, events(3))).await, 7);
    let path = dir.path().join("state.json");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let saved: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            let agent = &saved["agents"][0];
            if agent["sequences"] == serde_json::json!([[9, 7]]) {
                assert_eq!(agent["agent_id"], "p1");
                assert_eq!(agent["total_events"], 3);
                break;
            }
        }
        assert!(start.elapsed() < STEP, "state.json never had sequence 7");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_startup_with_its_name() {
    let dir = TempDir::new("corrupt");
    std::fs::write(
        dir.path().join("state.json"),
        b"{\"version\": 1, \"agents\": [",
    )
    .expect("write");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());
    let err = xdt_central::Central::bind(cfg)
        .await
        .expect_err("refuses to start");
    let text = err.to_string();
    assert!(
        text.contains("state.json") && text.contains("cannot load"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_the_future_does_not_freeze_the_counters() {
    let dir = TempDir::new("future");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let year = 365 * 24 * 3600;
    let central = TestCentral::start(cfg.clone()).await;
    // An agent whose clock is a year ahead (an NTP step, a VM resumed)...
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("clock", 1, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, now + year, 100, events(1))).await, 1);
    drop(agent);
    let json = wait_for_json(central.http, |j| node(j, "clock")["connected"] == false).await;
    let shown = node(&json, "clock")["counters_taken_at_unix"]
        .as_f64()
        .expect("taken at");
    assert!(
        shown < f64::from(u32::try_from(now + 3600).expect("before 2106")),
        "a future time is clamped: {shown}"
    );
    // ...restarted with a correct clock: its counters are shown.
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("clock", 2, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, now, 150, events(1))).await, 1);
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "clock")["counters"]["total_packets"], 150);
    drop(agent);
    central.stop().await.expect("clean stop");

    // Also after a restart of central.
    let central = TestCentral::start(cfg).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("clock", 3, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, now + 1, 170, events(1))).await, 1);
    assert_eq!(agent.batch(batch(2, now + 2, 190, events(1))).await, 2);
    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "clock");
    assert_eq!(n["counters"]["total_packets"], 190);
    assert_eq!(n["rates"]["packets_per_second"], 20.0);
    drop(agent);
    central.stop().await.expect("clean stop");
}

/// Agents of older versions were named by host only; one interface, one agent now
/// (`host/IF`): the first `host/IF` agent reporting the old entry's interface takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_named_by_host_is_taken_over_by_host_slash_interface() {
    let dir = TempDir::new("identity");
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().to_owned());
    let central = TestCentral::start(cfg.clone()).await;
    let mut old = hello("node1", 4, TOKEN);
    old.interface = "eth0".into();
    let (mut agent, _) = TestAgent::hello(central.telemetry, old).await;
    assert_eq!(agent.batch(batch(1, 1, 500, events(5))).await, 1);
    drop(agent);
    central.stop().await.expect("clean stop");

    let central = TestCentral::start(cfg).await;
    let mut other = hello("node1/eth1", 5, TOKEN);
    other.interface = "eth1".into();
    let (mut eth1, _) = TestAgent::hello(central.telemetry, other).await;
    assert_eq!(eth1.batch(batch(1, 2, 7, events(1))).await, 1);
    let mut new = hello("node1/eth0", 6, TOKEN);
    new.interface = "eth0".into();
    let (mut eth0, _) = TestAgent::hello(central.telemetry, new).await;
    assert_eq!(eth0.batch(batch(1, 3, 600, events(1))).await, 1);
    let json = get(central.http, "/metrics.json").await.json();
    let ids: Vec<_> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["agent_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["node1/eth0", "node1/eth1"],
        "the bare host name is gone"
    );
    assert_eq!(
        node(&json, "node1/eth0")["total_events"],
        6,
        "history taken over"
    );
    assert_eq!(node(&json, "node1/eth1")["total_events"], 1);
    drop((eth0, eth1));
    central.stop().await.expect("clean stop");
}
