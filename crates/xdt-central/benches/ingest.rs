//! Central's ingest rate over loopback TCP, and the cost of one event record on the wire.
//!
//! `cargo bench -p xdt-central --bench ingest` prints markdown tables:
//! 1. events/s that one central (its async runtime on one thread) applies with 1, 10 and 100
//!    agents streaming pre-encoded batches at once (clients on another thread), from the first
//!    batch sent to the last `Ack` received;
//! 2. encode/decode ns and bytes per event record, postcard against serde_json.
//!
//! Environment: `XDT_BENCH_EVENTS` (events per run, default 2,000,000),
//! `XDT_BENCH_BATCH` (events per batch, default 1000).

use std::{
    hint::black_box,
    net::SocketAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};
use xdt_central::{Central, Config, Token, fixtures};
use xdt_wire::{AgentStats, Batch, Event, Hello, LabelCount, Message, Preamble, frame};

const TOKEN: &str = "bench-token";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(sequence: u64, events: usize) -> Batch {
    Batch {
        sequence,
        taken_at_unix_ns: 1_700_000_000_000_000_000 + sequence * 1_000_000_000,
        counters: fixtures::probe_counters(|_| sequence * 1000),
        labels: vec![LabelCount {
            label: "web".into(),
            packets: sequence * 10,
            bytes: sequence * 15_000,
        }],
        events: (0..events as u64)
            .map(|i| {
                let i = sequence * 1_000_000 + i;
                fixtures::https_event(1_700_000_000_000_000_000 + i * 1000, i)
            })
            .collect(),
        agent: AgentStats::default(),
    }
}

/// Starts central on its own thread with a one-thread runtime; returns its telemetry address
/// and the way to stop it.
fn start_central() -> (
    SocketAddr,
    SocketAddr,
    oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut config = Config::new(Token::new(TOKEN).expect("token"));
            config.telemetry_listen = "127.0.0.1:0".parse().expect("addr");
            config.http_listen = "127.0.0.1:0".parse().expect("addr");
            config.http_threads = 1;
            let central = Central::bind(config).await.expect("bind");
            addr_tx
                .send((central.telemetry_addr(), central.http_addr()))
                .expect("send addr");
            central
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("central run");
        });
    });
    let (addr, http) = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("central address");
    (addr, http, stop, thread)
}

/// Reads one frame from `stream` into `buf` (bounded by the caller's timeout).
async fn read_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Message {
    loop {
        if let Some(len) = frame::check(buf).expect("frame") {
            let message = frame::decode(&buf[frame::HEADER_LEN..len]).expect("decode");
            buf.advance(len);
            return message;
        }
        assert!(
            stream.read_buf(buf).await.expect("read") > 0,
            "central closed"
        );
    }
}

/// One agent: handshake, then the pre-encoded batches written while acks are read.
async fn agent(
    addr: SocketAddr,
    id: usize,
    frames: Vec<u8>,
    last: u64,
    go: tokio::sync::watch::Receiver<bool>,
) -> Duration {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut out = Preamble::ours().encode().to_vec();
    frame::encode(
        &Message::Hello(Hello {
            agent_id: format!("bench-{id:03}"),
            hostname: "bench".into(),
            interface: "eth0".into(),
            probe_version: "bench".into(),
            instance: id as u64,
            token: TOKEN.into(),
        }),
        &mut out,
    )
    .expect("hello");
    stream.write_all(&out).await.expect("hello");
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while buf.len() < Preamble::LEN {
        assert!(stream.read_buf(&mut buf).await.expect("read") > 0);
    }
    buf.advance(Preamble::LEN);
    assert!(matches!(
        read_frame(&mut stream, &mut buf).await,
        Message::Welcome(_)
    ));

    let mut go = go;
    go.wait_for(|go| *go).await.expect("start signal");
    let start = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        writer.write_all(&frames).await.expect("batches");
        writer
    });
    loop {
        match read_frame(&mut reader, &mut buf).await {
            Message::Ack(ack) if ack.sequence == last => break,
            Message::Ack(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    drop(write.await.expect("writer"));
    elapsed
}

fn ingest(agents: usize, total_events: usize, per_batch: usize) -> (f64, Duration) {
    let (addr, http, stop, central) = start_central();
    let batches_per_agent = (total_events / per_batch / agents).max(1);
    let events = agents * batches_per_agent * per_batch;
    let mut all_frames = Vec::new();
    for _ in 0..agents {
        let mut frames = Vec::new();
        for s in 1..=batches_per_agent as u64 {
            frame::encode(&Message::Batch(batch(s, per_batch)), &mut frames).expect("encode");
        }
        all_frames.push(frames);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let elapsed = runtime.block_on(async {
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = all_frames
            .into_iter()
            .enumerate()
            .map(|(id, frames)| {
                tokio::spawn(agent(
                    addr,
                    id,
                    frames,
                    batches_per_agent as u64,
                    go_rx.clone(),
                ))
            })
            .collect();
        // Let every agent finish its handshake, then start them together.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        go_tx.send(true).expect("go");
        tokio::time::timeout(Duration::from_mins(2), async {
            for task in tasks {
                task.await.expect("agent");
            }
        })
        .await
        .expect("the run finishes within 2 minutes");
        start.elapsed()
    });
    let counted = total_events_of(http);
    assert_eq!(counted, events as u64, "central counted every event once");
    let _ = stop.send(());
    central.join().expect("central thread");
    (
        f64::from(u32::try_from(events).expect("events fit u32")) / elapsed.as_secs_f64(),
        elapsed,
    )
}

/// `total_events` of `/metrics.json`.
fn total_events_of(http: SocketAddr) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(http).expect("connect HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET /metrics.json HTTP/1.0\r\nHost: {http}\r\n\r\n").expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    let json: serde_json::Value = serde_json::from_slice(&response[start..]).expect("JSON");
    json["total_events"].as_u64().expect("total_events")
}

fn per_record<F: FnMut()>(iterations: u32, mut f: F) -> f64 {
    // Warm up, then time.
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

fn main() {
    let total_events = env_usize("XDT_BENCH_EVENTS", 2_000_000);
    let per_batch = env_usize("XDT_BENCH_BATCH", 1000);

    println!(
        "### Ingest over loopback TCP ({per_batch} events per batch, central on one thread)\n"
    );
    println!("| agents | events | seconds | events/s |");
    println!("|---:|---:|---:|---:|");
    for agents in [1, 10, 100] {
        let (rate, elapsed) = ingest(agents, total_events, per_batch);
        let events = agents * (total_events / per_batch / agents).max(1) * per_batch;
        println!(
            "| {agents} | {events} | {:.2} | {:.0} |",
            elapsed.as_secs_f64(),
            rate
        );
    }

    let record = fixtures::https_event(1_700_000_000_012_345_000, 12_345);
    let iterations = 500_000;
    let mut buf = Vec::with_capacity(256);
    let postcard_bytes = postcard::to_stdvec(&record).expect("postcard").len();
    let json_bytes = serde_json::to_vec(&record).expect("json").len();
    let postcard_encode = per_record(iterations, || {
        buf.clear();
        buf = postcard::to_extend(black_box(&record), std::mem::take(&mut buf)).expect("encode");
    });
    let encoded = postcard::to_stdvec(&record).expect("postcard");
    let postcard_decode = per_record(iterations, || {
        black_box(postcard::from_bytes::<Event>(black_box(&encoded)).expect("decode"));
    });
    let json_encode = per_record(iterations, || {
        buf.clear();
        serde_json::to_writer(&mut buf, black_box(&record)).expect("encode");
    });
    let encoded = serde_json::to_vec(&record).expect("json");
    let json_decode = per_record(iterations, || {
        black_box(serde_json::from_slice::<Event>(black_box(&encoded)).expect("decode"));
    });
    println!("\n### One event record\n");
    println!("| format | encode ns | decode ns | bytes |");
    println!("|---|---:|---:|---:|");
    println!("| postcard | {postcard_encode:.0} | {postcard_decode:.0} | {postcard_bytes} |");
    println!("| serde_json | {json_encode:.0} | {json_decode:.0} | {json_bytes} |");
}
