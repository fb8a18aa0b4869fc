//! The whole pipeline, as root: probe attached in a node namespace, the real `xdt-agent` and
//! `xdt-central` binaries in that namespace, a known frame mix from the client namespace. Counts in
//! `/metrics.json` and `/metrics` must be exact, also across a central restart (batches made
//! while it was down arrive, none counts twice) and an agent restart (it resumes).

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use xdt_testkit::{
    frames::*,
    process::{Process, free_port, sibling},
    root_or_skip,
};

struct Central {
    http: u16,
    telemetry: u16,
    token: PathBuf,
    state: PathBuf,
}

impl Central {
    /// Central in the node namespace, on its loopback (the agent's, too).
    fn start(&self, lab: &Lab) -> Process {
        let p = Process::start(
            lab.node
                .command(sibling("xdt-central"))
                .args([
                    "--telemetry-listen",
                    &format!("127.0.0.1:{}", self.telemetry),
                ])
                .args(["--http-listen", &format!("127.0.0.1:{}", self.http)])
                .arg("--token-file")
                .arg(&self.token)
                .arg("--state-dir")
                .arg(&self.state),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while xdt_testkit::lab::get(lab, self.http, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "central did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// The agent's node in /metrics.json once `pick` is satisfied (or after 15 s, to fail).
    fn node_when(&self, lab: &Lab, agent: &str, pick: impl Fn(&Value) -> bool) -> Value {
        xdt_testkit::http::central_node_when(
            || xdt_testkit::lab::get(lab, self.http, "/metrics.json"),
            agent,
            "condition",
            Duration::from_secs(15),
            pick,
        )
    }
}

fn agent(lab: &Lab, central: &Central) -> Process {
    agent_with(lab, central, &["--interval", "0.2"])
}

fn agent_with(lab: &Lab, central: &Central, args: &[&str]) -> Process {
    Process::start(
        lab.node
            .command(sibling("xdt-agent"))
            .args([
                "--interface",
                &lab.node_if,
                "--agent-id",
                "pipe-node",
                // These tests are about sampled events (tests/steer.rs covers steering).
                "--no-steer",
            ])
            .args(args)
            .args(["--central", &format!("127.0.0.1:{}", central.telemetry)])
            .arg("--token-file")
            .arg(&central.token),
    )
}

/// Central with a fresh token and state directory in `lab`.
fn central(lab: &Lab) -> Central {
    let token = PathBuf::from(lab.file("token", "pipeline-token\n"));
    let state = lab.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    Central {
        http: free_port(),
        telemetry: free_port(),
        token,
        state,
    }
}

const RULES: &str =
    "web dst 10.88.0.0/24 proto tcp dport 80 action sample 4\ndns proto udp dport 53\n";

#[test]
fn pipeline_counts_exactly_across_restarts() {
    if !root_or_skip("pipeline_counts_exactly_across_restarts") {
        return;
    }
    let lab = Lab::new();
    let _attached = lab.attach("native", RULES);
    let central = central(&lab);
    let web = ethernet(
        ETH_P_IP,
        &ipv4(CLIENT4, NODE4, TCP, &tcp(40000, 80, 0x02, b"")),
    );
    let dns = ethernet(ETH_P_IP, &ipv4(CLIENT4, NODE4, UDP, &udp(5353, 53, b"q")));
    let total = |n: &Value| n["counters"]["total_packets"].as_u64().unwrap_or(0);
    let sampled = || {
        lab.stats()["sampled_events"]
            .as_u64()
            .expect("sampled_events")
    };

    // 1. Everything running: exact counts, every sampled event once.
    let server = central.start(&lab);
    let mut the_agent = agent(&lab, &central);
    lab.send(&[(web.clone(), 40), (dns.clone(), 20)]);
    let node = central.node_when(&lab, "pipe-node", |n| {
        total(n) == 60 && n["total_events"] == 10
    });
    assert_eq!(node["counters"]["tcp_packets"], 40);
    assert_eq!(node["counters"]["udp_packets"], 20);
    assert_eq!(
        label(
            &Value::Object(
                [("labels".into(), node["label_counts"].clone())]
                    .into_iter()
                    .collect()
            ),
            "web"
        ),
        (40, 40 * web.len() as u64)
    );
    assert_eq!(node["recent_events"].as_array().map(Vec::len), Some(10));
    let metrics = xdt_testkit::lab::get(&lab, central.http, "/metrics").expect("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("xdp_packets_total{")
            && l.contains("pipe-node")
            && l.ends_with(" 60")),
        "/metrics lacks xdp_packets_total 60 for pipe-node:\n{metrics}"
    );

    // 2. Central restarts; traffic while it is down reaches it afterwards, nothing twice.
    server.stop();
    lab.send(&[(web.clone(), 20), (dns.clone(), 5)]);
    std::thread::sleep(Duration::from_millis(600)); // several batches queue up at the agent
    let _server = central.start(&lab);
    central.node_when(&lab, "pipe-node", |n| total(n) == 85);
    let events = sampled();
    assert_eq!(events, 15);
    let node = central.node_when(&lab, "pipe-node", |n| {
        n["total_events"].as_u64() >= Some(events)
    });
    std::thread::sleep(Duration::from_millis(600));
    let again = central.node_when(&lab, "pipe-node", |_| true);
    assert_eq!(
        again["total_events"], events,
        "events counted twice after the restart: {node}"
    );

    // 3. The agent is killed and restarted: it resumes, and events sampled meanwhile (still in
    //    the ring buffer) arrive once.
    drop(the_agent);
    lab.send(&[(web.clone(), 8)]);
    the_agent = agent(&lab, &central);
    let node = central.node_when(&lab, "pipe-node", |n| {
        total(n) == 93 && n["total_events"] == 17
    });
    assert_eq!(sampled(), 17);
    assert_eq!(node["connected"], true);
    drop(the_agent);
}

/// A burst of four times `--buffer-events` sampled events within one interval arrives whole:
/// the agent batches as soon as half the buffer is pending instead of waiting for the tick and
/// dropping what does not fit.
#[test]
fn a_burst_larger_than_the_event_buffer_arrives_whole() {
    const BUFFER: usize = 1000;
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 400;
    if !root_or_skip("a_burst_larger_than_the_event_buffer_arrives_whole") {
        return;
    }
    let lab = Lab::new();
    let _attached = lab.attach(
        "native",
        "web dst 10.88.0.0/24 proto tcp dport 80 action sample 1\n",
    );
    let central = central(&lab);
    let _server = central.start(&lab);
    let _agent = agent_with(
        &lab,
        &central,
        &["--interval", "5", "--buffer-events", &BUFFER.to_string()],
    );
    central.node_when(&lab, "pipe-node", |n| n["connected"] == true);
    let web = ethernet(
        ETH_P_IP,
        &ipv4(CLIENT4, NODE4, TCP, &tcp(40000, 80, 0x02, b"")),
    );
    let started = Instant::now();
    for _ in 0..ROUNDS {
        lab.send(&[(web.clone(), PER_ROUND)]);
        std::thread::sleep(Duration::from_millis(30));
    }
    let sent = ROUNDS * PER_ROUND;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the burst took {:?}, not within one interval",
        started.elapsed()
    );
    assert_eq!(lab.stats()["sampled_events"].as_u64(), Some(sent as u64));
    let node = central.node_when(&lab, "pipe-node", |n| {
        n["total_events"].as_u64() >= Some(sent as u64)
            || n["agent"]["dropped_events"].as_u64() > Some(0)
    });
    let agent = &node["agent"];
    assert_eq!(
        agent["dropped_events"], 0,
        "agent figures at central: {agent}"
    );
    assert_eq!(
        node["total_events"], sent,
        "agent figures at central: {agent}"
    );
}
