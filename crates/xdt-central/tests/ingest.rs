//! The telemetry listener against real sockets on loopback: batches reach /metrics.json and
//! /metrics exactly, replays count once, and every kind of bad connection is closed with a
//! logged reason while the server keeps serving others.

mod common;

use std::time::{Duration, Instant};

use common::{
    STEP, TOKEN, TestAgent, TestCentral, batch, config, event, get, hello, node, read_to_close,
    steered_batch, steered_event, steering, wait_for_json, wait_for_log,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};
use xdt_wire::{ErrorCode, MAX_FRAME, Message, Preamble, frame};

/// A well-behaved agent still gets through (after each bad connection), and central then
/// stops cleanly.
async fn serves_and_stops(central: TestCentral, agent_id: &str) {
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello(agent_id, 1, TOKEN)).await;
    let next = welcome.last_sequence + 1;
    assert_eq!(agent.batch(batch(next, next, 10, vec![])).await, next);
    assert_eq!(get(central.http, "/healthz").await.status, 200);
    central.stop().await.expect("clean stop");
}

/// A connection that is not an agent yet, and its local address as central logs it.
async fn raw_peer(central: &TestCentral) -> (TcpStream, String) {
    let stream = TcpStream::connect(central.telemetry)
        .await
        .expect("connect");
    let local = stream.local_addr().expect("addr").to_string();
    (stream, local)
}

/// The frame of a first batch, as an agent writes it.
fn batch_frame() -> Vec<u8> {
    let mut bytes = Vec::new();
    frame::encode(&Message::Batch(batch(1, 1, 1, vec![])), &mut bytes).expect("encode");
    bytes
}

/// The longest line central has logged so far, in bytes.
fn longest_log_line() -> usize {
    common::log_lines(&[])
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_show_up_exactly_in_metrics_json_and_prometheus() {
    let central = TestCentral::start(config()).await;
    let (mut agent, welcome) =
        TestAgent::hello(central.telemetry, hello("node-1", 77, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 0);
    let t0 = 1_700_000_000;
    let events = vec![
        event(t0 * 1_000_000_000 + 1, "web", 100),
        event(t0 * 1_000_000_000 + 2, "web", 0),
    ];
    assert_eq!(agent.batch(batch(1, t0, 1000, events)).await, 1);
    assert_eq!(
        agent
            .batch(batch(2, t0 + 2, 3000, vec![event(3, "web", 1448)]))
            .await,
        2
    );

    let json = get(central.http, "/metrics.json").await;
    assert_eq!(json.status, 200);
    assert_eq!(
        json.header("Content-Type").as_deref(),
        Some("application/json")
    );
    let json = json.json();
    assert_eq!(json["total_events"], 3);
    let n = node(&json, "node-1");
    // The seed's fields.
    assert_eq!(n["total_events"], 3);
    assert_eq!(
        n["label_counts"],
        serde_json::json!([
            {"label": "web", "packets": 1500, "bytes": 150_000},
            {"label": "dns \"q\"\n<b>", "packets": 7, "bytes": 700},
        ])
    );
    let recent = n["recent_events"].as_array().expect("events");
    assert_eq!(recent.len(), 3);
    assert_eq!(
        recent[0],
        serde_json::json!({
            "timestamp_unix_ns": t0 * 1_000_000_000 + 1, "label": "web", "rule": 1,
            "action": "sample", "protocol": 6, "src": "192.0.2.1", "dst": "2001:db8::1",
            "src_port": 40000, "dst_port": 80, "ip_len": 160, "payload_len": 100,
            "tcp_flags": 0x18, "rx_queue": 0
        })
    );
    assert_eq!(recent[2]["payload_len"], 1448);
    // The added fields.
    assert_eq!(n["hostname"], "node-1.example");
    assert_eq!(n["interface"], "eth0");
    assert_eq!(n["connected"], true);
    assert!(n["last_seen_unix"].as_f64().expect("last seen") > 1.6e9);
    assert_eq!(n["counters"]["total_packets"], 3000);
    assert_eq!(n["counters"]["tcp_packets"], 750);
    assert_eq!(n["counters"]["lost_events"], 3);
    assert_eq!(n["lost_events"], 3);
    assert_eq!(n["rates"]["packets_per_second"], 1000.0);
    assert_eq!(n["rates"]["bits_per_second"], 800_000.0);
    assert_eq!(
        n["rate_history"],
        serde_json::json!([[1_700_000_002.0, 1000.0, 800_000.0]])
    );
    assert_eq!(n["payload_history"].as_array().expect("payload").len(), 3);
    assert_eq!(n["payload_history"][0][1], 100);
    assert_eq!(
        n["agent"],
        serde_json::json!({"dropped_events": 2, "reconnects": 4, "unacked_batches": 1,
                           "probe_ns_per_packet": 21.5})
    );
    assert_eq!(n["last_sequence"], 2);
    assert_eq!(n["instance"], 77);

    let prom = get(central.http, "/metrics").await;
    assert_eq!(prom.status, 200);
    assert!(
        prom.header("Content-Type")
            .expect("content type")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        prom.headers
    );
    let text = prom.text();
    let labels = r#"agent_id="node-1",interface="eth0""#;
    for line in [
        format!("xdp_packets_total{{{labels}}} 3000"),
        format!("xdp_bytes_total{{{labels}}} 300000"),
        format!("xdp_packets_tcp_total{{{labels}}} 750"),
        format!("xdp_packets_udp_total{{{labels}}} 375"),
        format!("xdp_packets_icmp_total{{{labels}}} 1"),
        format!("xdp_packets_other_total{{{labels}}} 1874"),
        format!("xdp_packets_ipv4_total{{{labels}}} 1500"),
        format!("xdp_packets_ipv6_total{{{labels}}} 1500"),
        format!("xdp_packets_rate{{{labels}}} 1000.0"),
        format!("xdp_bytes_rate{{{labels}}} 100000.0"),
        format!("xdp_lost_events_total{{{labels}}} 3"),
        format!("xdt_agent_dropped_events_total{{{labels}}} 2"),
        format!("xdt_agent_connected{{{labels}}} 1"),
        format!("xdt_events_received_total{{{labels}}} 3"),
        format!(r#"xdp_label_packets_total{{{labels},label="web"}} 1500"#),
        format!(r#"xdp_label_bytes_total{{{labels},label="web"}} 150000"#),
        // An agent-supplied label value is escaped, never raw.
        format!(r#"xdp_label_packets_total{{{labels},label="dns \"q\"\n<b>"}} 7"#),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    // Disconnected agents stay, marked so.
    drop(agent);
    wait_for_json(central.http, |j| node(j, "node-1")["connected"] == false).await;
    let text = get(central.http, "/metrics").await.text();
    assert!(
        text.contains(&format!("xdt_agent_connected{{{labels}}} 0")),
        "{text}"
    );
    central.stop().await.expect("clean stop");
}

/// The lines of a /metrics body that start with `prefix` and carry `agent_id="id"`.
fn series<'a>(text: &'a str, prefix: &str, agent_id: &str) -> Vec<&'a str> {
    let needle = format!("agent_id=\"{agent_id}\"");
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_stats_and_inspections_show_up_exactly() {
    const XSS_PATH: &str = "/<img src=x onerror=alert(1)>?q=\"x\"";
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("steer-1", 11, TOKEN)).await;
    let t0: u64 = 1_700_000_000;
    let ns = t0 * 1_000_000_000;
    let events = vec![
        event(ns + 1, "web", 10),
        steered_event(ns + 2, Some(("GET", XSS_PATH, Some("shop.example"))), None),
        steered_event(ns + 3, None, Some(("example.com", 28))),
        steered_event(ns + 4, Some(("OPTIONS", "*", None)), None),
    ];
    assert_eq!(
        agent
            .batch(steered_batch(1, t0, 1000, events, steering(1000, 0)))
            .await,
        1
    );
    assert_eq!(
        agent
            .batch(steered_batch(2, t0 + 2, 3000, vec![], steering(3000, 10)))
            .await,
        2
    );
    // An agent that does not steer, next to it.
    let (mut plain, _) = TestAgent::hello(central.telemetry, hello("plain", 1, TOKEN)).await;
    assert_eq!(plain.batch(batch(1, t0, 10, vec![])).await, 1);

    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "steer-1");
    assert_eq!(
        n["agent"],
        serde_json::json!({
            "dropped_events": 2, "reconnects": 4, "unacked_batches": 1,
            "probe_ns_per_packet": 21.5,
            "steering": {
                "mode": "zerocopy", "reinject": "host via xdt5r", "sockets": 4,
                "received_packets": 3000, "received_bytes": 300_000,
                "reinjected_packets": 2990, "reinject_dropped": 10, "rx_dropped": 20,
                "rx_ring_full": 30, "rx_fill_ring_empty": 40, "tx_invalid_descs": 50
            }
        })
    );
    // (3000 - 1000) / 2 s received, (2990 - 1000) / 2 s reinjected, each loss (k x 10) / 2 s.
    assert_eq!(
        n["steering_rates"],
        serde_json::json!({
            "received_packets_per_second": 1000.0, "received_bits_per_second": 800_000.0,
            "reinjected_packets_per_second": 995.0, "reinject_dropped_per_second": 5.0,
            "rx_dropped_per_second": 10.0, "rx_ring_full_per_second": 15.0,
            "rx_fill_ring_empty_per_second": 20.0, "tx_invalid_descs_per_second": 25.0
        })
    );
    let recent = n["recent_events"].as_array().expect("events");
    assert_eq!(recent.len(), 4);
    assert!(
        recent[0].get("inspection").is_none(),
        "a sampled event keeps the seed's shape: {}",
        recent[0]
    );
    assert_eq!(
        recent[1],
        serde_json::json!({
            "timestamp_unix_ns": ns + 2, "label": "inspect", "rule": 4, "action": "steer",
            "protocol": 6, "src": "192.0.2.1", "dst": "2001:db8::1", "src_port": 40000,
            "dst_port": 80, "ip_len": 180, "payload_len": 120, "tcp_flags": 0x18, "rx_queue": 3,
            "inspection": {
                "frame_len": 194, "agent_latency_ns": 23_456, "reinjected": true,
                "http": {"method": "GET", "path": XSS_PATH, "host": "shop.example"},
                "dns": null
            }
        })
    );
    assert_eq!(
        recent[2]["inspection"],
        serde_json::json!({
            "frame_len": 194, "agent_latency_ns": 23_456, "reinjected": false, "http": null,
            "dns": {"name": "example.com", "qtype": 28}
        })
    );
    assert_eq!(
        recent[3]["inspection"]["http"],
        serde_json::json!({"method": "OPTIONS", "path": "*", "host": null})
    );
    assert_eq!(n["payload_history"].as_array().expect("payload").len(), 4);
    let p = node(&json, "plain");
    assert!(p["agent"].get("steering").is_none(), "{p:#}");
    assert!(p.get("steering_rates").is_none(), "{p:#}");

    let text = get(central.http, "/metrics").await.text();
    let labels = r#"agent_id="steer-1",interface="eth0""#;
    let expected = |received: u64, lost: u64, mode: &str, reinject: &str| {
        vec![
            format!("xdt_steering_received_packets_total{{{labels}}} {received}"),
            format!(
                "xdt_steering_received_bytes_total{{{labels}}} {}",
                received * 100
            ),
            format!(
                "xdt_steering_reinjected_packets_total{{{labels}}} {}",
                received - lost
            ),
            format!("xdt_steering_reinject_dropped_total{{{labels}}} {lost}"),
            format!("xdt_steering_rx_dropped_total{{{labels}}} {}", 2 * lost),
            format!("xdt_steering_rx_ring_full_total{{{labels}}} {}", 3 * lost),
            format!(
                "xdt_steering_rx_fill_ring_empty_total{{{labels}}} {}",
                4 * lost
            ),
            format!(
                "xdt_steering_tx_invalid_descs_total{{{labels}}} {}",
                5 * lost
            ),
            format!("xdt_steering_sockets{{{labels}}} 4"),
            format!(r#"xdt_steering_info{{{labels},mode="{mode}",reinject="{reinject}"}} 1"#),
        ]
    };
    let steering_lines = |text: &str| {
        let mut lines = series(text, "xdt_steering_", "steer-1");
        lines.sort_unstable();
        lines.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort_unstable();
        v
    };
    assert_eq!(
        steering_lines(&text),
        sorted(expected(3000, 10, "zerocopy", "host via xdt5r")),
        "in\n{text}"
    );
    assert!(series(&text, "xdt_steering_", "plain").is_empty(), "{text}");
    // Bounded cardinality: what a packet carried is never a label.
    for secret in ["onerror", "shop.example", "example.com", "OPTIONS"] {
        assert!(!text.contains(secret), "{secret} in /metrics:\n{text}");
    }

    // A replayed batch changes nothing.
    assert_eq!(
        agent
            .batch(steered_batch(1, t0, 1000, vec![], steering(1000, 0)))
            .await,
        1
    );
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(
        node(&json, "steer-1")["agent"]["steering"]["received_packets"],
        3000
    );

    // The agent restarts (a new instance, its counters from zero, another mode): the newest
    // figures replace the old ones, a counter reset as Prometheus understands it, and the
    // info series is replaced, not added to.
    drop(agent);
    let (mut agent, welcome) =
        TestAgent::hello(central.telemetry, hello("steer-1", 12, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 0);
    let mut restarted = steering(500, 1);
    restarted.mode = "copy".into();
    restarted.reinject = "egress \"eth2\"\n".into();
    assert_eq!(
        agent
            .batch(steered_batch(1, t0 + 4, 4000, vec![], restarted))
            .await,
        1
    );
    let json = get(central.http, "/metrics.json").await.json();
    let n = node(&json, "steer-1");
    assert_eq!(n["agent"]["steering"]["received_packets"], 500);
    assert_eq!(n["agent"]["steering"]["reinject"], "egress \"eth2\"\n");
    assert_eq!(n["steering_rates"]["received_packets_per_second"], 250.0);
    assert_eq!(n["steering_rates"]["reinject_dropped_per_second"], 0.5);
    let text = get(central.http, "/metrics").await.text();
    assert_eq!(
        steering_lines(&text),
        sorted(expected(500, 1, "copy", r#"egress \"eth2\"\n"#)),
        "in\n{text}"
    );

    // Disconnected, the agent keeps its last figures, like its other statistics.
    drop(agent);
    wait_for_json(central.http, |j| node(j, "steer-1")["connected"] == false).await;
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(
        node(&json, "steer-1")["agent"]["steering"]["rx_ring_full"],
        3
    );
    let text = get(central.http, "/metrics").await.text();
    assert_eq!(
        steering_lines(&text),
        sorted(expected(500, 1, "copy", r#"egress \"eth2\"\n"#))
    );
    drop(plain);
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_sequence_is_acked_and_counted_once() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("dup", 5, TOKEN)).await;
    let two = || vec![event(1, "web", 1), event(2, "web", 2)];
    assert_eq!(agent.batch(batch(1, 10, 100, two())).await, 1);
    assert_eq!(agent.batch(batch(2, 11, 200, two())).await, 2);
    // The same sequence again, and an older one: acknowledged, ignored.
    assert_eq!(agent.batch(batch(2, 11, 200, two())).await, 2);
    assert_eq!(agent.batch(batch(1, 10, 100, two())).await, 1);
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "dup")["total_events"], 4);

    // Reconnect: Welcome says where the instance stands; the agent replays from there.
    drop(agent);
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("dup", 5, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 2);
    assert_eq!(agent.batch(batch(2, 11, 200, two())).await, 2);
    assert_eq!(agent.batch(batch(3, 12, 300, two())).await, 3);
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "dup")["total_events"], 6);
    assert_eq!(json["total_events"], 6);

    // A new instance of the agent (a restart) starts a new sequence.
    let (mut agent, welcome) = TestAgent::hello(central.telemetry, hello("dup", 6, TOKEN)).await;
    assert_eq!(welcome.last_sequence, 0);
    assert_eq!(agent.batch(batch(1, 13, 400, two())).await, 1);
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "dup")["total_events"], 8);
    assert_eq!(node(&json, "dup")["counters"]["total_packets"], 400);
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_not_an_xdt_peer() {
    let central = TestCentral::start(config()).await;
    let (mut stream, local) = raw_peer(&central).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.is_empty(),
        "nothing is sent to a non-xdt peer: {answer:?}"
    );
    wait_for_log(&["not an xdt peer", &local]).await;
    serves_and_stops(central, "after-garbage").await;
}

/// A peer that keeps failing (or a fleet refused at once) closes a connection each time: every
/// one is closed, but at most 5 of a kind are logged per 10 s, and the next logged says how
/// many were not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_connections_is_logged_within_a_budget() {
    let central = TestCentral::start(config()).await;
    let mut peers = Vec::new();
    for _ in 0..20 {
        let (mut stream, local) = raw_peer(&central).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert!(read_to_close(&mut stream).await.is_empty());
        peers.push(local);
    }
    wait_for_log(&["not an xdt peer", &peers[0]]).await;
    let logged: Vec<_> = peers
        .iter()
        .filter(|peer| !common::log_lines(&["not an xdt peer", peer]).is_empty())
        .collect();
    assert_eq!(logged, peers[..5].iter().collect::<Vec<_>>());
    serves_and_stops(central, "after-flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_is_logged_and_closed() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("trunc", 1, TOKEN)).await;
    let local = agent.local_addr();
    let frame_bytes = batch_frame();
    agent.write_raw(&frame_bytes[..frame_bytes.len() / 2]).await;
    agent.half_close();
    agent.wait_closed().await;
    wait_for_log(&["closed inside a frame", &local, "trunc"]).await;
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "trunc")["last_sequence"], 0, "nothing applied");
    serves_and_stops(central, "after-truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_prefix_is_refused_without_reading_the_body() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("big", 1, TOKEN)).await;
    let local = agent.local_addr();
    let len = u32::try_from(MAX_FRAME + 1).expect("fits");
    // Only the header: central must answer without waiting for 1 MiB.
    agent.write_raw(&len.to_be_bytes()).await;
    let message = agent.expect_error(ErrorCode::TooLarge).await;
    assert!(message.contains("exceeds"), "{message}");
    wait_for_log(&["exceeds the maximum", &local]).await;
    serves_and_stops(central, "after-oversized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_is_malformed() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("junk", 1, TOKEN)).await;
    agent.write_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    agent.expect_error(ErrorCode::Malformed).await;

    // A Batch before Hello is out of place.
    let mut agent = TestAgent::connect(central.telemetry).await;
    let local = agent.local_addr();
    agent.send(&Message::Batch(batch(1, 1, 1, vec![]))).await;
    let message = agent.expect_error(ErrorCode::Malformed).await;
    assert!(message.contains("Batch instead of Hello"), "{message}");
    wait_for_log(&["Batch instead of Hello", &local]).await;
    serves_and_stops(central, "after-malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_valid_batch_are_malformed() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("trailing", 1, TOKEN)).await;
    let mut frame_bytes = batch_frame();
    // The same Batch with two more bytes inside its frame.
    frame_bytes.extend_from_slice(&[0xde, 0xad]);
    let len = u32::try_from(frame_bytes.len() - 4).expect("len");
    frame_bytes[..4].copy_from_slice(&len.to_be_bytes());
    agent.write_raw(&frame_bytes).await;
    let message = agent.expect_error(ErrorCode::Malformed).await;
    assert!(message.contains("2 bytes after"), "{message}");
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(node(&json, "trailing")["last_sequence"], 0, "not applied");
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_agent_id_is_refused_and_never_logged_whole() {
    let central = TestCentral::start(config()).await;
    let long = "n".repeat(1 << 18);
    let mut agent = TestAgent::connect(central.telemetry).await;
    let local = agent.local_addr();
    agent.send(&Message::Hello(hello(&long, 1, TOKEN))).await;
    let message = agent.expect_error(ErrorCode::Malformed).await;
    assert!(message.contains("agent_id"), "{message}");
    wait_for_log(&["agent_id", &local]).await;
    let longest = longest_log_line();
    assert!(longest < 4096, "a log line of {longest} bytes");
    // A peer's Error message is not logged whole either.
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("chatty", 1, TOKEN)).await;
    let local = agent.local_addr();
    agent
        .send(&Message::Error(xdt_wire::ErrorMessage {
            code: ErrorCode::Busy,
            message: "m".repeat(1 << 19),
        }))
        .await;
    let message = agent.expect_error(ErrorCode::Malformed).await;
    assert!(message.contains("more than the 4096 allowed"), "{message}");
    wait_for_log(&[&local, "4096"]).await;
    let longest = longest_log_line();
    assert!(longest < 4096, "a log line of {longest} bytes");
    serves_and_stops(central, "after-long-id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_protocol_version_gets_our_preamble_and_version_mismatch() {
    let central = TestCentral::start(config()).await;
    // Version 1: an agent from before steering, older than any version central speaks.
    let version = 1u8;
    assert!(u16::from(version) < xdt_wire::MIN_PROTOCOL_VERSION);
    let (mut stream, local) = raw_peer(&central).await;
    stream
        .write_all(&[b'X', b'D', b'T', 0, 0, version, 0, 0])
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await;
    assert_eq!(&answer[..Preamble::LEN], &Preamble::ours().encode());
    let rest = &answer[Preamble::LEN..];
    let len = frame::check(rest).expect("frame").expect("complete");
    match frame::decode(&rest[frame::HEADER_LEN..len]).expect("decode") {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch);
            assert!(
                e.message.contains(&format!("version {version}")),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    wait_for_log(&[&format!("protocol version {version}"), &local]).await;

    // A peer from the future is answered in central's newest version: whether it still speaks
    // that one is its decision.
    let mut stream = TcpStream::connect(central.telemetry)
        .await
        .expect("connect");
    stream.write_all(b"XDT\0\0\x09\0\0").await.expect("write");
    let mut answer = [0; Preamble::LEN];
    timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("in time")
        .expect("preamble");
    assert_eq!(answer, Preamble::ours().encode());
    drop(stream);
    serves_and_stops(central, "after-version").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_unauthorized_and_never_logged() {
    let central = TestCentral::start(config()).await;
    for (token, reason) in [("wrong-token-secret", "wrong token"), ("", "no token")] {
        let mut agent = TestAgent::connect(central.telemetry).await;
        let local = agent.local_addr();
        agent
            .send(&Message::Hello(hello("intruder", 1, token)))
            .await;
        agent.expect_error(ErrorCode::Unauthorized).await;
        wait_for_log(&["unauthorized", reason, &local]).await;
    }
    assert!(common::log_lines(&["wrong-token-secret"]).is_empty());
    assert!(common::log_lines(&[TOKEN]).is_empty());
    let json = get(central.http, "/metrics.json").await.json();
    assert!(
        json["nodes"].as_array().expect("nodes").is_empty(),
        "an unauthorized agent is not registered: {json}"
    );
    serves_and_stops(central, "after-token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_after_the_deadlines() {
    let mut config = config();
    config.frame_timeout = Duration::from_millis(300);
    config.hello_timeout = Duration::from_millis(300);
    let central = TestCentral::start(config).await;

    // Starts a frame and never finishes it.
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("slow", 1, TOKEN)).await;
    let local = agent.local_addr();
    agent.write_raw(&[0, 0, 1, 0, 1, 2]).await;
    let start = Instant::now();
    agent.wait_closed().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    wait_for_log(&["frame not completed", &local]).await;

    // Says nothing at all.
    let (mut stream, local) = raw_peer(&central).await;
    read_to_close(&mut stream).await;
    wait_for_log(&["no Hello within", &local]).await;

    // Quiet between frames is fine (an agent's batch interval may be long).
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("quiet", 1, TOKEN)).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(agent.batch(batch(1, 1, 1, vec![])).await, 1);
    serves_and_stops(central, "after-slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_is_busy() {
    let mut config = config();
    config.max_connections = 2;
    let central = TestCentral::start(config).await;
    let (mut a, _) = TestAgent::hello(central.telemetry, hello("a", 1, TOKEN)).await;
    let (_b, _) = TestAgent::hello(central.telemetry, hello("b", 1, TOKEN)).await;
    // Busy comes after a valid Hello: unauthenticated peers never take these slots.
    let mut c = TestAgent::connect(central.telemetry).await;
    c.send(&Message::Hello(hello("c", 1, TOKEN))).await;
    let message = c.expect_error(ErrorCode::Busy).await;
    assert!(message.contains("limit of 2"), "{message}");
    wait_for_log(&["connection limit"]).await;
    // The admitted ones are unaffected; a freed slot is usable again.
    assert_eq!(a.batch(batch(1, 1, 1, vec![])).await, 1);
    drop(a);
    let start = Instant::now();
    loop {
        let mut agent = TestAgent::connect(central.telemetry).await;
        agent.send(&Message::Hello(hello("a", 1, TOKEN))).await;
        match agent.recv().await {
            Some(Message::Welcome(w)) => {
                assert_eq!(w.last_sequence, 1);
                break;
            }
            Some(Message::Error(e)) if e.code == ErrorCode::Busy => {
                assert!(start.elapsed() < STEP, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    central.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_beyond_max_agents_is_busy() {
    let mut config = config();
    config.max_agents = 1;
    let central = TestCentral::start(config).await;
    let (_first, _) = TestAgent::hello(central.telemetry, hello("first", 1, TOKEN)).await;
    let mut second = TestAgent::connect(central.telemetry).await;
    second
        .send(&Message::Hello(hello("second", 1, TOKEN)))
        .await;
    let message = second.expect_error(ErrorCode::Busy).await;
    assert!(message.contains("agent table full"), "{message}");
    wait_for_log(&["agent table full", "second"]).await;
    // The known agent may still connect again.
    serves_and_stops(central, "first").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_agents() {
    const AGENTS: u64 = 1000;
    // Each agent is two descriptors here (both ends run in this process), plus headroom.
    raise_nofile(4 * AGENTS + 256);
    let central = TestCentral::start(config()).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..AGENTS {
        let addr = central.telemetry;
        tasks.push(tokio::spawn(async move {
            let id = format!("agent-{i:04}");
            let (mut agent, welcome) = TestAgent::hello(addr, hello(&id, i, TOKEN)).await;
            assert_eq!(welcome.last_sequence, 0);
            let events = vec![event(i, "web", 10)];
            assert_eq!(agent.batch(batch(1, 1, i, events)).await, 1);
            agent
        }));
    }
    let mut agents = Vec::new();
    for task in tasks {
        agents.push(task.await.expect("agent task"));
    }
    let json = get(central.http, "/metrics.json").await.json();
    assert_eq!(json["total_events"], AGENTS);
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len() as u64, AGENTS);
    assert!(
        nodes
            .iter()
            .all(|n| n["connected"] == true && n["total_events"] == 1)
    );
    assert_eq!(node(&json, "agent-0999")["counters"]["total_packets"], 999);
    eprintln!(
        "{AGENTS} agents connected and sent a batch in {:?}",
        start.elapsed()
    );

    // All of them still talk while all are connected.
    for (i, agent) in agents.iter_mut().enumerate() {
        assert_eq!(agent.batch(batch(2, 2, i as u64, vec![])).await, 2);
    }
    drop(agents);
    wait_for_json(central.http, |j| {
        j["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["connected"] == false))
    })
    .await;
    serves_and_stops(central, "after-thousand").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_and_stops_http() {
    let central = TestCentral::start(config()).await;
    let http = central.http;
    let telemetry = central.telemetry;
    let (mut agent, _) = TestAgent::hello(telemetry, hello("stay", 1, TOKEN)).await;
    central.stop().await.expect("clean stop");
    assert_eq!(agent.recv().await, None, "session closed at shutdown");
    assert!(
        TcpStream::connect(telemetry).await.is_err(),
        "telemetry port closed"
    );
    assert!(
        tokio::time::timeout(STEP, TcpStream::connect(http))
            .await
            .expect("in time")
            .is_err(),
        "HTTP port closed"
    );
}

fn raise_nofile(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < needed {
        assert!(
            hard >= needed,
            "RLIMIT_NOFILE hard limit {hard} is below the {needed} this test needs"
        );
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit");
    }
}
