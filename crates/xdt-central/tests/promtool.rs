//! `/metrics` checked by Prometheus' own `promtool check metrics` (Debian: `apt-get install
//! prometheus`). Missing promtool fails the test in CI and skips it elsewhere.
//!
//! `promtool check metrics` parses only the classic text format (prometheus/prometheus#8932),
//! while `prometheus-client` writes OpenMetrics, whose counters are declared without the
//! `_total` their samples carry. So the body is checked twice:
//! 1. as served: it must parse, and the only findings allowed are "`X_total` no help text"
//!    for each `X` the body declares as a counter (that format difference, nothing else);
//! 2. with each counter's `# HELP`/`# TYPE` renamed to its sample name `X_total` (what the
//!    classic format writes): promtool must accept it with no finding at all.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use common::{
    TOKEN, TestAgent, TestCentral, batch, config, event, flow, flow_stats, get, hello,
    steered_batch, steering,
};

fn promtool(body: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    // Bounded: promtool reads stdin to its end and exits; its findings fit in the pipes.
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait for promtool").is_none() {
        if start.elapsed() > common::STEP {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool did not finish within {:?}", common::STEP);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

fn counters_declared(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_owned)
        .collect()
}

fn classic(body: &str) -> String {
    let counters = counters_declared(body);
    let mut out = String::new();
    for line in body.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .iter()
                .any(|c| c == name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_metrics() {
    if promtool("").is_none() {
        xdt_testkit::skip_outside_ci(
            "promtool_accepts_metrics",
            "promtool is missing (apt-get install prometheus)",
        );
        return;
    }
    let central = TestCentral::start(config()).await;
    for (id, instance) in [("node-a", 1), ("node-b", 2)] {
        let (mut agent, _) = TestAgent::hello(central.telemetry, hello(id, instance, TOKEN)).await;
        assert_eq!(
            agent
                .batch(batch(1, 10, 100, vec![event(1, "web", 9)]))
                .await,
            1
        );
        assert_eq!(agent.batch(batch(2, 12, 300, vec![])).await, 2);
    }
    // An agent that steers, with an awkward re-injection target in its info label.
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("node-c", 3, TOKEN)).await;
    let mut stats = steering(900, 3);
    stats.reinject = "egress \"eth2\"\\\n".into();
    assert_eq!(
        agent.batch(steered_batch(1, 10, 100, vec![], stats)).await,
        1
    );
    // An agent that sends flows, one with a label that needs escaping and one over a QinQ
    // VLAN pair: the top talkers' families and their info labels.
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("node-d", 4, TOKEN)).await;
    let mut flows: Vec<_> = (1..=12)
        .map(|i| flow(i, u64::from(i), 100 * u64::from(i)))
        .collect();
    flows[11].label = Some("web \"q\"\\\n".into());
    flows[10].key.vlans = [100, 200];
    assert_eq!(
        agent
            .flow_batch(batch(1, 10, 100, vec![]), flows, flow_stats(12))
            .await,
        1
    );
    let body = get(central.http, "/metrics").await.text();
    central.stop().await.expect("clean stop");

    let counters = counters_declared(&body);
    assert!(counters.len() >= 18, "{body}");
    for family in [
        "xdt_steering_rx_ring_full counter",
        "xdt_steering_sockets gauge",
        "xdt_steering_info gauge",
        "xdt_flow_top_bytes gauge",
        "xdt_flow_top_info gauge",
        "xdt_flow_state_full counter",
    ] {
        assert!(
            body.lines().any(|l| l == format!("# TYPE {family}")),
            "no {family} in:\n{body}"
        );
    }
    let (ok, findings) = promtool(&body).expect("promtool");
    assert!(
        !findings.contains("error while linting"),
        "promtool cannot parse /metrics:\n{findings}\n{body}"
    );
    for finding in findings.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = counters
            .iter()
            .any(|c| finding.trim() == format!("{c}_total no help text"));
        assert!(allowed, "promtool finding {finding:?} on /metrics:\n{body}");
    }
    assert!(ok || !findings.is_empty(), "promtool failed silently");

    let classic = classic(&body);
    let (ok, findings) = promtool(&classic).expect("promtool");
    assert!(ok, "promtool check metrics:\n{findings}\non\n{classic}");
    assert!(findings.trim().is_empty(), "{findings}");
}
