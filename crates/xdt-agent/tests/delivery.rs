//! The agent's delivery guarantees against a scripted central on loopback: replay of every
//! unacknowledged batch after a reconnect, counters read from a real BPF map (the otel demo's
//! counter program, run with BPF_PROG_TEST_RUN), a refused token retried with backoff.
//! Needs root (BPF).

use std::time::Duration;

use tokio::net::TcpListener;
use xdt_agent::{Config, source::MapSelector};
use xdt_datapath::testing::DemoCounter;
use xdt_testkit::{
    frames::{ETH_P_IP, TCP, ethernet, ipv4, tcp},
    root_or_skip,
};
use xdt_wire::{Ack, Batch, Connection, ErrorCode, ErrorMessage, Message, Welcome};

/// The demo counter loaded (not attached) with `packets` TCP frames counted.
fn counted_map(packets: u32) -> DemoCounter {
    let counter = DemoCounter::load();
    let frame = ethernet(
        ETH_P_IP,
        &ipv4([10, 0, 0, 1], [10, 0, 0, 2], TCP, &tcp(1, 80, 2, b"")),
    );
    counter.count(&frame, packets);
    counter
}

fn config(central: String, map_id: u32) -> Config {
    Config {
        interface: "eth-test".into(),
        central,
        agent_id: "agent-under-test".into(),
        token: "s3cret".into(),
        interval: Duration::from_millis(50),
        foreign_map: Some(MapSelector::Id(map_id)),
        max_batches: 100,
        max_events: 1000,
        steer: None,
        drop_capabilities: false,
        heartbeat: None,
        flows: xdt_agent::flows::FlowConfig::default(),
    }
}

async fn accept(listener: &TcpListener) -> Connection<tokio::net::TcpStream> {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the agent connects")
        .expect("accept");
    let mut conn = Connection::new(stream);
    conn.read_preamble().await.expect("agent preamble");
    conn.write_preamble().await.expect("our preamble");
    conn
}

async fn hello(conn: &mut Connection<tokio::net::TcpStream>) -> xdt_wire::Hello {
    match conn.read_message().await.expect("read") {
        Some(Message::Hello(h)) => h,
        other => panic!("expected Hello, got {other:?}"),
    }
}

async fn batch(conn: &mut Connection<tokio::net::TcpStream>) -> Batch {
    match tokio::time::timeout(Duration::from_secs(10), conn.read_message())
        .await
        .expect("a batch in time")
        .expect("read")
    {
        Some(Message::Batch(b)) => b,
        other => panic!("expected Batch, got {other:?}"),
    }
}

#[tokio::test]
async fn replays_unacknowledged_batches_after_a_reconnect() {
    if !root_or_skip("replays_unacknowledged_batches_after_a_reconnect") {
        return;
    }
    let counter = counted_map(37);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let central = listener.local_addr().expect("addr").to_string();
    let (stop, control) = tokio::sync::mpsc::unbounded_channel();
    let agent = tokio::spawn(xdt_agent::run(config(central, counter.map_id), control));

    // First connection: take three batches, acknowledge only the first, hang up.
    let mut conn = accept(&listener).await;
    let h = hello(&mut conn).await;
    assert_eq!(
        (h.agent_id.as_str(), h.interface.as_str(), h.token.as_str()),
        ("agent-under-test", "eth-test", "s3cret")
    );
    conn.write_message(&Message::Welcome(Welcome {
        central_version: "test".into(),
        last_sequence: 0,
    }))
    .await
    .expect("welcome");
    let first: Vec<Batch> = vec![
        batch(&mut conn).await,
        batch(&mut conn).await,
        batch(&mut conn).await,
    ];
    assert_eq!(
        first.iter().map(|b| b.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let counters: std::collections::HashMap<_, _> = first[0].counters.iter().cloned().collect();
    assert_eq!(counters["total_packets"], 37);
    assert_eq!(counters["tcp_packets"], 37);
    assert_eq!(counters["ipv4_packets"], 37);
    assert_eq!(counters["total_bytes"], 37 * 54);
    conn.write_message(&Message::Ack(Ack { sequence: 1 }))
        .await
        .expect("ack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(conn);

    // Second connection: central says it holds 1; everything after it comes again, in order.
    let mut conn = accept(&listener).await;
    let h2 = hello(&mut conn).await;
    assert_eq!(h2.instance, h.instance, "same agent process, same instance");
    conn.write_message(&Message::Welcome(Welcome {
        central_version: "test".into(),
        last_sequence: 1,
    }))
    .await
    .expect("welcome");
    let replay = batch(&mut conn).await;
    assert_eq!(replay.sequence, 2, "the first unacknowledged batch");
    assert_eq!(replay, first[1], "replayed unchanged");
    assert_eq!(batch(&mut conn).await.sequence, 3);
    // Batches made after the hang-up count the reconnect.
    let mut next = batch(&mut conn).await;
    assert_eq!(next.sequence, 4);
    for _ in 0..100 {
        if next.agent.reconnects >= 1 {
            break;
        }
        let following = batch(&mut conn).await;
        assert_eq!(following.sequence, next.sequence + 1, "in order, no gaps");
        next = following;
    }
    assert!(
        next.agent.reconnects >= 1,
        "the reconnect is counted: {:?}",
        next.agent
    );
    conn.write_message(&Message::Ack(Ack {
        sequence: next.sequence,
    }))
    .await
    .expect("ack");
    let acked = next.sequence;

    // Stop: a last batch is flushed and acknowledged, then the agent exits.
    let _ = stop.send(xdt_agent::Control::Stop);
    let mut last = acked;
    let flushed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(Message::Batch(b))) = conn.read_message().await {
            last = b.sequence;
            conn.write_message(&Message::Ack(Ack {
                sequence: b.sequence,
            }))
            .await
            .expect("ack");
        }
    });
    let _ = flushed.await;
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent ok");
    assert!(last > acked, "the final batch was sent");
}

#[tokio::test]
async fn a_refused_token_is_retried_with_backoff() {
    if !root_or_skip("a_refused_token_is_retried_with_backoff") {
        return;
    }
    let counter = counted_map(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let central = listener.local_addr().expect("addr").to_string();
    let (stop, control) = tokio::sync::mpsc::unbounded_channel();
    let agent = tokio::spawn(xdt_agent::run(config(central, counter.map_id), control));
    let mut conn = accept(&listener).await;
    hello(&mut conn).await;
    let refused = std::time::Instant::now();
    conn.write_message(&Message::Error(ErrorMessage {
        code: ErrorCode::Unauthorized,
        message: "wrong token".into(),
    }))
    .await
    .expect("error");
    drop(conn);
    let mut conn = accept(&listener).await;
    let waited = refused.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "retried after {waited:?}: no backoff"
    );
    hello(&mut conn).await;
    conn.write_message(&Message::Welcome(Welcome {
        central_version: "test".into(),
        last_sequence: 0,
    }))
    .await
    .expect("welcome");
    assert_eq!(
        batch(&mut conn).await.sequence,
        1,
        "nothing was acknowledged, so everything comes"
    );
    let _ = stop.send(xdt_agent::Control::Stop);
    drop(conn);
    tokio::time::timeout(Duration::from_secs(15), agent)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent ok");
}
