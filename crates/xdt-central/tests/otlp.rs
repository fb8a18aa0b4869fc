//! OTLP push against a real receiver: tests/otlp_receiver.py decodes the requests with the
//! official `opentelemetry-proto` package (`pip install opentelemetry-proto`). Missing Python or
//! the package fails the test in CI and skips it elsewhere.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    STEP, TOKEN, TempDir, TestAgent, TestCentral, batch, config, hello, steered_batch, steering,
};
use xdt_central::OtlpConfig;

/// The receiver process, killed and reaped on drop.
struct Receiver {
    child: Child,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_has_otlp_proto() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_receiver(out: &Path) -> Receiver {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(out)
        .args(["--lifetime", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start otlp_receiver.py");
    let stdout = child.stdout.take().expect("stdout");
    let mut receiver = Receiver { child, port: 0 };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(STEP).expect("the receiver prints its port");
    receiver.port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    receiver
}

/// A receiver writing to `received.json` in a fresh directory; `None` when Python's OTLP
/// protobufs are missing (the test then skips, and fails in CI).
fn receiver(name: &str) -> Option<(TempDir, PathBuf, Receiver)> {
    if !python_has_otlp_proto() {
        xdt_testkit::skip_outside_ci(
            name,
            "python3 with the opentelemetry-proto package is missing (pip install opentelemetry-proto)",
        );
        return None;
    }
    let dir = TempDir::new(name);
    let out = dir.path().join("received.json");
    let receiver = start_receiver(&out);
    Some((dir, out, receiver))
}

fn point<'a>(
    doc: &'a serde_json::Value,
    metric: &str,
    agent_id: &str,
) -> Option<&'a serde_json::Value> {
    doc["metrics"][metric]["points"]
        .as_array()?
        .iter()
        .find(|p| p["attributes"]["agent_id"] == agent_id)
}

/// A test configuration exporting OTLP logs (and metrics, each minute) to port `port` of
/// loopback.
fn logs_config(port: u16) -> xdt_central::Config {
    let mut cfg = config();
    cfg.otlp = Some(
        OtlpConfig::new(&format!("http://127.0.0.1:{port}"), Duration::from_mins(1))
            .expect("endpoint")
            .with_logs(),
    );
    cfg
}

/// The log records the receiver wrote to `out`, in the order it received them.
fn received_logs(out: &Path) -> Vec<serde_json::Value> {
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).expect("the receiver wrote"))
            .expect("receiver JSON");
    match doc["logs"].take() {
        serde_json::Value::Array(logs) => logs,
        other => panic!("logs: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_a_real_otlp_receiver() {
    let Some((_dir, out, receiver)) = receiver("otlp") else {
        return;
    };

    let mut cfg = config();
    cfg.otlp = Some(
        OtlpConfig::new(
            &format!("http://127.0.0.1:{}", receiver.port),
            Duration::from_millis(300),
        )
        .expect("endpoint"),
    );
    let central = TestCentral::start(cfg).await;
    for (id, packets) in [("otel-a", 1000), ("otel-b", 4000)] {
        let (mut agent, _) = TestAgent::hello(central.telemetry, hello(id, 1, TOKEN)).await;
        // otel-a steers packets through AF_XDP, otel-b does not.
        let (first, second) = if id == "otel-a" {
            (
                steered_batch(1, 100, packets, vec![], steering(10, 0)),
                steered_batch(2, 102, packets * 3, vec![], steering(5000, 6)),
            )
        } else {
            (
                batch(1, 100, packets, vec![]),
                batch(2, 102, packets * 3, vec![]),
            )
        };
        assert_eq!(agent.batch(first).await, 1);
        assert_eq!(agent.batch(second).await, 2);
    }

    // Wait (bounded) for an export that carries the second batches.
    let start = Instant::now();
    let doc = loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            let doc: serde_json::Value = serde_json::from_str(&text).expect("receiver JSON");
            let done = ["otel-a", "otel-b"].iter().all(|id| {
                point(&doc, "xdp.packets.rate", id).is_some_and(|p| p["value"].as_f64() > Some(0.0))
            });
            if done {
                break doc;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no complete export received; last: {:?}",
            std::fs::read_to_string(&out)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    central.stop().await.expect("clean stop");

    let mut names: Vec<&str> = doc["metrics"]
        .as_object()
        .expect("metrics")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "xdp.bytes.total",
            "xdp.packets.icmp",
            "xdp.packets.ipv4",
            "xdp.packets.ipv6",
            "xdp.packets.other",
            "xdp.packets.rate",
            "xdp.packets.tcp",
            "xdp.packets.total",
            "xdp.packets.udp",
            "xdt.steering.received_bytes",
            "xdt.steering.received_packets",
            "xdt.steering.reinject_dropped",
            "xdt.steering.reinjected_packets",
            "xdt.steering.rx_dropped",
            "xdt.steering.rx_fill_ring_empty",
            "xdt.steering.rx_ring_full",
            "xdt.steering.sockets",
            "xdt.steering.tx_invalid_descs",
        ]
    );
    // batch(_, _, p, _) reports total p, bytes 100p, ipv4 p/2, ipv6 p - p/2, tcp p/4,
    // udp p/8, icmp 1, other p - p/4 - p/8 - 1; the rate is (3p - p) / 2 s.
    for (id, p) in [("otel-a", 3000u64), ("otel-b", 12000)] {
        for (metric, value) in [
            ("xdp.packets.total", p),
            ("xdp.bytes.total", p * 100),
            ("xdp.packets.ipv4", p / 2),
            ("xdp.packets.ipv6", p - p / 2),
            ("xdp.packets.tcp", p / 4),
            ("xdp.packets.udp", p / 8),
            ("xdp.packets.icmp", 1),
            ("xdp.packets.other", p - p / 4 - p / 8 - 1),
        ] {
            let point = point(&doc, metric, id).unwrap_or_else(|| panic!("{metric} of {id}"));
            assert_eq!(point["value"], value, "{metric} of {id}");
            assert_eq!(point["attributes"]["interface"], "eth0");
            assert_eq!(point["attributes"]["hostname"], format!("{id}.example"));
            assert_eq!(doc["metrics"][metric]["kind"], "sum");
            assert_eq!(doc["metrics"][metric]["monotonic"], true);
        }
        let rate = point(&doc, "xdp.packets.rate", id).expect("rate");
        assert_eq!(
            rate["value"].as_f64(),
            Some(f64::from(u32::try_from((p - p / 3) / 2).expect("small"))),
            "rate of {id}"
        );
    }
    // steering(5000, 6): received 5000 packets and 500,000 bytes, reinjected 4994, and the
    // losses 6, 12, 18, 24, 30.
    for (metric, value, unit) in [
        ("xdt.steering.received_packets", 5000u64, "{packet}"),
        ("xdt.steering.received_bytes", 500_000, "By"),
        ("xdt.steering.reinjected_packets", 4994, "{packet}"),
        ("xdt.steering.reinject_dropped", 6, "{packet}"),
        ("xdt.steering.rx_dropped", 12, "{packet}"),
        ("xdt.steering.rx_ring_full", 18, "{packet}"),
        ("xdt.steering.rx_fill_ring_empty", 24, "{event}"),
        ("xdt.steering.tx_invalid_descs", 30, "{descriptor}"),
    ] {
        let m = &doc["metrics"][metric];
        assert_eq!(
            (&m["kind"], &m["monotonic"]),
            (&"sum".into(), &true.into()),
            "{m}"
        );
        assert_eq!(m["unit"], unit, "{metric}");
        let steered = point(&doc, metric, "otel-a").unwrap_or_else(|| panic!("{metric}: {m}"));
        assert_eq!(steered["value"], value, "{metric}");
        assert_eq!(steered["attributes"]["interface"], "eth0");
        assert_eq!(steered["attributes"]["hostname"], "otel-a.example");
        assert!(
            point(&doc, metric, "otel-b").is_none(),
            "an agent that does not steer has no {metric}: {m}"
        );
    }
    let sockets = point(&doc, "xdt.steering.sockets", "otel-a").expect("sockets");
    assert_eq!(sockets["value"], 4);
    assert_eq!(doc["metrics"]["xdt.steering.sockets"]["kind"], "gauge");
    assert_eq!(doc["metrics"]["xdp.packets.rate"]["kind"], "gauge");
    assert_eq!(doc["metrics"]["xdp.bytes.total"]["unit"], "By");
    assert!(
        doc["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["service.name"] == "xdt-central"),
        "{}",
        doc["resources"]
    );
    drop(receiver);
}

/// `--otlp-logs`: every sampled event and steered-packet inspection central stores reaches a
/// real receiver (decoding the official protobufs) exactly once, as a log record with the
/// semantic-convention attributes; a batch sent again (a reconnecting agent) adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_real_otlp_receiver_as_logs_exactly_once() {
    let Some((_dir, out, receiver)) = receiver("otlp-logs") else {
        return;
    };
    let central = TestCentral::start(logs_config(receiver.port)).await;

    let sampled: Vec<_> = (0..300)
        .map(|i| common::event(1_700_000_000_000_000_000 + i, "web", 20))
        .collect();
    let steered = vec![
        common::steered_event(
            1_700_000_001_000_000_000,
            Some(("GET", "/echo/otlp", Some("svc.example"))),
            None,
        ),
        common::steered_event(1_700_000_002_000_000_000, None, Some(("example.com", 28))),
    ];
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("logs-a", 1, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, 100, 1000, sampled.clone())).await, 1);
    assert_eq!(agent.batch(batch(2, 101, 1100, steered)).await, 2);
    // The agent reconnects and sends batch 2 again, as after a lost Ack: stored once.
    drop(agent);
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("logs-a", 1, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 2);
    assert_eq!(agent.batch(batch(2, 101, 1100, sampled)).await, 2);
    drop(agent);
    // Stopping exports what is queued.
    central.stop().await.expect("clean stop");

    let logs = received_logs(&out);
    assert_eq!(logs.len(), 302, "each event exactly once: {}", logs.len());
    let times: std::collections::BTreeSet<u64> = logs
        .iter()
        .map(|l| l["time_unix_nano"].as_u64().expect("time"))
        .collect();
    assert_eq!(times.len(), 302, "no event twice");

    let first = &logs[0];
    assert_eq!(first["event_name"], "xdt.packet.sampled");
    assert_eq!(first["severity"], "INFO");
    assert_eq!(first["time_unix_nano"], 1_700_000_000_000_000_000_u64);
    assert_eq!(first["resource"]["service.name"], "xdt-central");
    let a = &first["attributes"];
    assert_eq!(a["xdt.agent.id"], "logs-a");
    assert_eq!(a["xdt.rule.label"], "web");
    assert_eq!(a["network.transport"], "tcp");
    assert_eq!(a["network.type"], "ipv4");
    assert_eq!(a["source.address"], "192.0.2.1");
    assert_eq!(a["source.port"], 40000);
    assert_eq!(a["destination.address"], "2001:db8::1");
    assert_eq!(a["destination.port"], 80);

    let http = logs
        .iter()
        .find(|l| l["attributes"]["url.path"] == "/echo/otlp")
        .expect("the steered HTTP request");
    assert_eq!(http["event_name"], "xdt.packet.steered");
    assert_eq!(http["attributes"]["http.request.method"], "GET");
    assert_eq!(http["attributes"]["server.address"], "svc.example");
    assert_eq!(http["attributes"]["xdt.agent.latency_ns"], 23_456);
    assert!(
        http["body"]
            .as_str()
            .is_some_and(|b| b.contains("GET /echo/otlp")),
        "{http}"
    );
    let dns = logs
        .iter()
        .find(|l| l["attributes"]["dns.question.name"] == "example.com")
        .expect("the steered DNS query");
    assert_eq!(dns["attributes"]["xdt.dns.question.type"], 28);
    drop(receiver);
}

/// `--otlp-logs`: each flow record central stores reaches a real receiver once, as an
/// `xdt.flow` log record with the flow's key, counts, times, label, handshake and end reason;
/// a FlowBatch sent again adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_records_reach_a_real_otlp_receiver_as_logs_exactly_once() {
    let Some((_dir, out, receiver)) = receiver("otlp-flow-logs") else {
        return;
    };
    let central = TestCentral::start(logs_config(receiver.port)).await;
    let flows: Vec<_> = (1..=40)
        .map(|i| common::flow(i, u64::from(i), 100 * u64::from(i)))
        .collect();
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("flow-logs", 1, TOKEN)).await;
    assert_eq!(
        agent
            .flow_batch(
                batch(1, 100, 1000, vec![]),
                flows.clone(),
                common::flow_stats(40)
            )
            .await,
        1
    );
    assert_eq!(
        agent
            .flow_batch(batch(1, 100, 1000, vec![]), flows, common::flow_stats(40))
            .await,
        1,
        "a resend"
    );
    drop(agent);
    central.stop().await.expect("clean stop");

    let logs = received_logs(&out);
    assert_eq!(logs.len(), 40, "each flow record exactly once");
    assert!(logs.iter().all(|l| l["event_name"] == "xdt.flow"));
    let seventh = logs
        .iter()
        .find(|l| l["attributes"]["source.address"] == "10.0.0.7")
        .expect("flow 7");
    assert_eq!(seventh["time_unix_nano"], 1_700_000_001_000_000_000_u64);
    let a = &seventh["attributes"];
    assert_eq!(a["xdt.agent.id"], "flow-logs");
    assert_eq!(a["network.transport"], "tcp");
    assert_eq!(a["destination.address"], "192.0.2.1");
    assert_eq!(a["destination.port"], 443);
    assert_eq!(a["xdt.flow.packets"], 7);
    assert_eq!(a["xdt.flow.bytes"], 700);
    assert_eq!(a["xdt.flow.start_unix_ns"], 1_700_000_000_000_000_000_u64);
    assert_eq!(a["xdt.tcp.flags"], 0x1b);
    assert_eq!(a["xdt.rule.label"], "web");
    assert_eq!(a["xdt.tcp.handshake_ns"], 150_007);
    assert_eq!(a["xdt.flow.end_reason"], "end");
    drop(receiver);
}

/// A collector that cannot be reached loses the records, and central counts every one where an
/// operator sees it (`xdt_central_otlp_logs_dropped_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexported_event_logs_are_counted() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let central = TestCentral::start(logs_config(port)).await;
    let events: Vec<_> = (0..50)
        .map(|i| common::event(1_700_000_000_000_000_000 + i, "web", 20))
        .collect();
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("logs-b", 1, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, 100, 1000, events)).await, 1);
    let start = Instant::now();
    loop {
        let body = common::get(central.http, "/metrics").await.text();
        if body.contains("xdt_central_otlp_logs_dropped_total 50") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the 50 unexported records were not counted:\n{}",
            body.lines()
                .filter(|l| l.contains("otlp"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
    central.stop().await.expect("clean stop");
}
