//! Issue 13's failure modes against the real `xdt-central` process on loopback: a crash, file
//! descriptor exhaustion, hostile HTTP clients and peers, oversized strings. Each test names the
//! promise of docs/reliability.md it checks.

mod common;

use std::time::Duration;

use common::{CentralProcess, TOKEN, TempDir, TestAgent, batch, event, get, hello, node};

fn events(n: u64) -> Vec<xdt_wire::Event> {
    (0..n).map(|i| event(i, "web", 64)).collect()
}

/// The value of the Prometheus series `name{agent_id="id",...}`.
fn prom_value(text: &str, name: &str, agent_id: &str) -> Option<f64> {
    let needle = format!("agent_id=\"{agent_id}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Ack means stored: every batch acknowledged before a SIGKILL is there after the restart,
/// and no counter goes backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_sigkill_of_central() {
    let dir = TempDir::new("sigkill");
    let state = dir.path().join("state");
    let central = CentralProcess::start(dir.path(), Some(&state), &[], None);
    let (mut agent, welcome) =
        TestAgent::hello(central.telemetry, hello("crash-1", 9, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 0);
    // Let the first periodic save pass, so what follows is only in what an Ack promises.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in 1..=200 {
        assert_eq!(agent.batch(batch(s, s, s * 100, events(10))).await, s);
    }
    let before = get(central.http, "/metrics").await.text();
    assert_eq!(
        prom_value(&before, "xdp_packets_total", "crash-1"),
        Some(20_000.0)
    );
    central.kill();
    drop(agent);

    let central = CentralProcess::start(dir.path(), Some(&state), &[], None);
    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "crash-1");
    assert_eq!(n["total_events"], 2000, "every acknowledged event: {n:#}");
    assert_eq!(n["counters"]["total_packets"], 20_000);
    let (mut agent, welcome) =
        TestAgent::hello(central.telemetry, hello("crash-1", 9, TOKEN)).await;
    assert_eq!(
        welcome.last_sequence, 200,
        "the agent need not replay anything"
    );
    assert_eq!(agent.batch(batch(201, 201, 20_100, events(10))).await, 201);
    let after = get(central.http, "/metrics").await.text();
    for name in ["xdp_packets_total", "xdt_events_received_total"] {
        let (b, a) = (
            prom_value(&before, name, "crash-1"),
            prom_value(&after, name, "crash-1"),
        );
        assert!(a >= b, "{name} went from {b:?} to {a:?}");
    }
    assert_eq!(
        prom_value(&after, "xdt_events_received_total", "crash-1"),
        Some(2010.0)
    );
}
