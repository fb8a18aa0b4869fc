//! Flow records over the wire (protocol version 3) into central's top talkers: exact ranks and
//! remainder in `/metrics.json` and Prometheus, applied once per batch, memory and series
//! bounded under many distinct flows, and an agent of version 2 next to one of version 3.

mod common;

use common::{
    STEP, TOKEN, TestAgent, TestCentral, batch, config, flow, flow_stats, get, hello, node,
    wait_for_json,
};
use tokio::time::timeout;
use xdt_central::{
    catalogue::FLOW_SERIES_PER_AGENT,
    state::{MAX_FLOWS_KEPT, TOP_FLOWS},
};
use xdt_wire::{ErrorCode, MAX_FLOWS, Message, Preamble, frame};

/// The Prometheus series of a family for one agent, as `(labels, value)`.
fn series(body: &str, family: &str, agent_id: &str) -> Vec<(String, String)> {
    let needle = format!("agent_id=\"{agent_id}\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_owned(), value.to_owned()))
        })
        .collect()
}

fn rank_value(body: &str, family: &str, agent_id: &str, rank: &str) -> Option<u64> {
    let needle = format!("rank=\"{rank}\"");
    series(body, family, agent_id)
        .into_iter()
        .find(|(labels, _)| labels.contains(&needle))
        .map(|(_, v)| v.parse().expect("integer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_talkers_are_exact_and_counted_once() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("flows-a", 1, TOKEN)).await;
    // 30 flows; flow i has i packets and 100 * (31 - i) bytes, so the rankings by bytes
    // and by packets are opposite. Flow 30 comes back in a second batch with 1000 packets.
    let first: Vec<_> = (1..=30)
        .map(|i| flow(i, u64::from(i), 100 * (31 - u64::from(i))))
        .collect();
    assert_eq!(
        agent
            .flow_batch(batch(1, 10, 100, vec![]), first.clone(), flow_stats(30))
            .await,
        1
    );
    // The same batch again (a resend after a lost Ack): acknowledged, not counted again.
    assert_eq!(
        agent
            .flow_batch(batch(1, 10, 100, vec![]), first, flow_stats(30))
            .await,
        1
    );
    assert_eq!(
        agent
            .flow_batch(
                batch(2, 11, 200, vec![]),
                vec![flow(30, 1000, 50)],
                flow_stats(31)
            )
            .await,
        2
    );

    let total_packets: u64 = (1..=30).sum::<u64>() + 1000;
    let total_bytes: u64 = (1..=30).map(|i| 100 * (31 - i)).sum::<u64>() + 50;
    let json = wait_for_json(central.http, |j| {
        node(j, "flows-a")["flows"]["records"] == 31
    })
    .await;
    let flows = &node(&json, "flows-a")["flows"];
    assert_eq!(flows["total"]["packets"], total_packets);
    assert_eq!(flows["total"]["bytes"], total_bytes);
    assert_eq!(
        flows["received_records"], 31,
        "the duplicate is not counted"
    );
    assert_eq!(flows["flows_kept"], 30);
    assert_eq!(flows["max_flows_kept"], MAX_FLOWS_KEPT);
    // By bytes: flow 1 (3000), 2 (2900), ... 10 (2100).
    let top_bytes = flows["top_bytes"].as_array().expect("top_bytes");
    assert_eq!(top_bytes.len(), TOP_FLOWS);
    for (rank, f) in top_bytes.iter().enumerate() {
        let i = rank as u64 + 1;
        assert_eq!(f["src"], format!("10.0.0.{i}"), "rank {i}");
        assert_eq!(
            (f["packets"].as_u64(), f["bytes"].as_u64()),
            (Some(i), Some(100 * (31 - i)))
        );
        assert_eq!(f["label"], "web");
        assert_eq!(f["handshake_ns"], 150_000 + i);
        assert_eq!(f["end"], "end");
    }
    let named_bytes: u64 = (1..=10).map(|i| 100 * (31 - i)).sum();
    assert_eq!(flows["other_by_bytes"]["bytes"], total_bytes - named_bytes);
    assert_eq!(
        flows["other_by_bytes"]["packets"],
        total_packets - (1..=10).sum::<u64>()
    );
    // By packets: flow 30 (1030 in two records), then 29, 28, ...
    let top_packets: Vec<u64> = flows["top_packets"]
        .as_array()
        .expect("top_packets")
        .iter()
        .map(|f| f["packets"].as_u64().expect("packets"))
        .collect();
    assert_eq!(top_packets, [1030, 29, 28, 27, 26, 25, 24, 23, 22, 21]);
    assert_eq!(
        flows["other_by_packets"]["packets"],
        total_packets - top_packets.iter().sum::<u64>()
    );
    assert_eq!(
        node(&json, "flows-a")["agent"]["flows"]["ipfix_send_failures"],
        3
    );

    let body = get(central.http, "/metrics").await.text();
    for rank in 1..=10_u64 {
        assert_eq!(
            rank_value(&body, "xdt_flow_top_bytes", "flows-a", &rank.to_string()),
            Some(100 * (31 - rank)),
            "{body}"
        );
    }
    assert_eq!(
        rank_value(&body, "xdt_flow_top_bytes", "flows-a", "other"),
        Some(total_bytes - named_bytes)
    );
    assert_eq!(
        rank_value(&body, "xdt_flow_top_packets", "flows-a", "1"),
        Some(1030)
    );
    let info = series(&body, "xdt_flow_top_info", "flows-a");
    assert!(
        info.iter().any(|(labels, v)| v == "1"
            && labels.contains("by=\"packets\",rank=\"1\",src=\"10.0.0.30\"")),
        "{body}"
    );
    assert!(
        body.contains(
            "xdt_flow_ipfix_send_failures_total{agent_id=\"flows-a\",interface=\"eth0\"} 3"
        )
    );
    assert!(
        body.contains(
            "xdt_flow_records_received_total{agent_id=\"flows-a\",interface=\"eth0\"} 31"
        )
    );
    central.stop().await.expect("clean stop");
}

/// Many more distinct flows than central keeps: memory stays at the bound, the totals and
/// the remainder stay exact, what was not kept is counted, and Prometheus never has more than
/// the cap of series for the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_flows_stay_bounded() {
    let central = TestCentral::start(config()).await;
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("flows-many", 1, TOKEN)).await;
    // Below 65,536 flows: `flow` makes that many distinct sources.
    let batches = 7_u32;
    let per_batch = u32::try_from(MAX_FLOWS).expect("small");
    for b in 0..batches {
        // Every flow distinct: 1 packet, 100 bytes; one heavy flow per batch.
        let mut flows: Vec<_> = (0..per_batch - 1)
            .map(|i| flow(b * per_batch + i, 1, 100))
            .collect();
        flows.push(flow(
            b * per_batch + per_batch - 1,
            1,
            1_000_000 + u64::from(b),
        ));
        let sequence = u64::from(b) + 1;
        assert_eq!(
            agent
                .flow_batch(
                    batch(sequence, 10 + sequence, 100, vec![]),
                    flows,
                    flow_stats(0)
                )
                .await,
            sequence
        );
    }
    let records = u64::from(batches * per_batch);
    let json = wait_for_json(central.http, |j| {
        node(j, "flows-many")["flows"]["records"] == records
    })
    .await;
    let flows = &node(&json, "flows-many")["flows"];
    assert_eq!(flows["flows_kept"], MAX_FLOWS_KEPT, "{flows:#}");
    let light = records - u64::from(batches);
    let total_bytes = light * 100 + (0..u64::from(batches)).map(|b| 1_000_000 + b).sum::<u64>();
    assert_eq!(flows["total"]["bytes"], total_bytes);
    assert_eq!(flows["total"]["packets"], records);
    // The heavy flows all made it in (each pushed out a light one) and lead the ranking.
    let top: Vec<u64> = flows["top_bytes"]
        .as_array()
        .expect("top")
        .iter()
        .map(|f| f["bytes"].as_u64().expect("bytes"))
        .collect();
    let heavy: Vec<u64> = (0..u64::from(batches))
        .rev()
        .map(|b| 1_000_000 + b)
        .collect();
    assert_eq!(top[..heavy.len()], heavy[..]);
    assert!(top[heavy.len()..].iter().all(|&b| b == 100), "{top:?}");
    assert_eq!(
        flows["other_by_bytes"]["bytes"],
        total_bytes - top.iter().sum::<u64>()
    );
    let kept = MAX_FLOWS_KEPT as u64;
    let untracked = flows["untracked_records"].as_u64().expect("untracked");
    let evicted = flows["evicted_flows"].as_u64().expect("evicted");
    assert_eq!(
        evicted,
        u64::from(batches),
        "one light flow out per heavy one"
    );
    assert_eq!(untracked, records - kept - evicted);

    let body = get(central.http, "/metrics").await.text();
    let top_series: usize = [
        "xdt_flow_top_bytes",
        "xdt_flow_top_packets",
        "xdt_flow_top_info",
    ]
    .iter()
    .map(|family| series(&body, family, "flows-many").len())
    .sum();
    assert_eq!(top_series, FLOW_SERIES_PER_AGENT, "{body}");
    central.stop().await.expect("clean stop");
}

/// A version-2 agent (no flows) works with this central: both sides agree on version 2, its
/// batches are applied, and a `FlowBatch` on its connection is refused as out of place. A
/// version-3 agent next to it sends flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_agent_works_next_to_a_version_3_one() {
    let central = TestCentral::start(config()).await;
    let mut old = TestAgent::connect_as(central.telemetry, 2).await;
    assert_eq!(old.conn.version(), 2, "central answered with version 2");
    old.send(&Message::Hello(hello("old-agent", 1, TOKEN)))
        .await;
    assert!(matches!(old.recv().await, Some(Message::Welcome(_))));
    common::wait_for_log(&["agent connected", "old-agent", "protocol_version=2"]).await;
    assert_eq!(old.batch(batch(1, 10, 100, vec![])).await, 1);

    let (mut new, _) = TestAgent::hello(central.telemetry, hello("new-agent", 1, TOKEN)).await;
    assert_eq!(new.conn.version(), xdt_wire::PROTOCOL_VERSION);
    assert_eq!(
        new.flow_batch(
            batch(1, 10, 100, vec![]),
            vec![flow(1, 5, 500)],
            flow_stats(1)
        )
        .await,
        1
    );
    let json = wait_for_json(central.http, |j| {
        node(j, "old-agent")["counters"]["total_packets"] == 100
            && node(j, "new-agent")["flows"]["records"] == 1
    })
    .await;
    assert!(node(&json, "old-agent").get("flows").is_none());
    assert!(node(&json, "old-agent")["agent"].get("flows").is_none());
    let body = get(central.http, "/metrics").await.text();
    assert!(series(&body, "xdt_flow_top_bytes", "old-agent").is_empty());
    assert_eq!(
        rank_value(&body, "xdt_flow_top_bytes", "new-agent", "1"),
        Some(500)
    );

    // The old agent's connection cannot carry a FlowBatch: refused before it is written...
    let flows = Message::FlowBatch(xdt_wire::FlowBatch {
        batch: batch(2, 11, 200, vec![]),
        flows: vec![flow(2, 1, 1)],
        stats: flow_stats(1),
    });
    assert!(matches!(
        old.conn.write_message(&flows).await,
        Err(xdt_wire::WireError::NotInVersion {
            since: 3,
            version: 2,
            ..
        })
    ));
    // ...and, written anyway, closed by central as out of place.
    let mut raw = Vec::new();
    frame::encode(&flows, &mut raw).expect("encode");
    old.write_raw(&raw).await;
    let message = timeout(STEP, old.expect_error(ErrorCode::Malformed))
        .await
        .expect("in time");
    assert!(
        message.contains("FlowBatch") && message.contains("older protocol version"),
        "{message}"
    );
    central.stop().await.expect("clean stop");
}

/// An agent of version 3 connecting to a central that speaks only version 2 (the preamble it
/// answers with): the agent's side agrees on 2 and refuses to send flows on that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_agent_speaks_2_to_an_older_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut preamble = [0; Preamble::LEN];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut preamble)
            .await
            .expect("agent preamble");
        tokio::io::AsyncWriteExt::write_all(&mut stream, &Preamble { version: 2 }.encode())
            .await
            .expect("write");
        preamble
    });
    let agent = TestAgent::connect(addr).await;
    let offered = timeout(STEP, peer).await.expect("in time").expect("peer");
    assert_eq!(Preamble::decode(&offered), Ok(Preamble::ours()));
    assert_eq!(agent.conn.version(), 2);
    let message = Message::batch(
        batch(1, 10, 100, vec![]),
        Some((vec![flow(1, 1, 1)], flow_stats(1))),
        agent.conn.version(),
    );
    assert!(
        matches!(message, Message::Batch(_)),
        "the flows stay out of a version-2 connection"
    );
}
