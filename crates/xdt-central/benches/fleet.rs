//! Central under a fleet, as the unit runs it: the release `xdt-central` binary with the
//! unit's `LimitNOFILE=` (8192) and a `--state-dir` (so every batch is journaled and synced
//! before its Ack), 2,000 agents and a dashboard polling `/metrics.json` every second.
//!
//! The agents are simulated in this process (one runtime thread), each a real TCP connection
//! speaking the real protocol through `xdt-wire` like `xdt-agent` does: preamble, `Hello` with
//! its own id, then a batch every second (the agent's default interval: the probe's
//! counters, 4 labels, `XDT_FLEET_EVENTS` sampled events) and the wait for its `Ack`. Agents
//! that central refuses (Busy: new agents beyond the admission rate) retry a second later, as
//! `xdt-agent` does. 2,000 agent processes would not fit on the machines this runs on.
//!
//! `cargo bench -p xdt-central --bench fleet` prints a markdown table: batch->Ack latency
//! (p50, p99, p99.9, max) over the measurement window, central's CPU and memory, and the
//! dashboard's `/metrics.json` time and size.
//!
//! Environment: `XDT_FLEET_AGENTS` (2000), `XDT_FLEET_SECONDS` (measurement window, 60),
//! `XDT_FLEET_EVENTS` (events per batch, 10), `XDT_FLEET_NOFILE` (central's RLIMIT_NOFILE,
//! 8192 as the unit's `LimitNOFILE=`), `XDT_FLEET_READERS` (3: the dashboard's `/metrics.json`
//! every second and a Prometheus scrape every 15 s; 1 or 2 only one of them, 0 none),
//! `XDT_FLEET_STATE` (1; 0 runs central without `--state-dir`: no journal, Acks on receipt).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use xdt_central::fixtures;
use xdt_wire::{AgentStats, Batch, Hello, LabelCount, Message, Preamble, frame};

#[path = "../tests/common/process.rs"]
mod process;

use process::{CentralProcess, TOKEN};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(agent: u64, sequence: u64, events: u64) -> Batch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Batch {
        sequence,
        taken_at_unix_ns: now,
        counters: fixtures::probe_counters(|n| sequence * 1000 * (n + 1)),
        labels: ["web", "dns", "ssh", "other"]
            .iter()
            .map(|l| LabelCount {
                label: (*l).to_owned(),
                packets: sequence * 100,
                bytes: sequence * 150_000,
            })
            .collect(),
        events: (0..events)
            .map(|i| fixtures::https_event(now + i, i))
            .collect(),
        agent: AgentStats {
            reconnects: agent % 3,
            ..AgentStats::default()
        },
    }
}

async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
    loop {
        if let Ok(Some(len)) = frame::check(buf) {
            let message = frame::decode(&buf[frame::HEADER_LEN..len]).ok();
            buf.advance(len);
            return message;
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Connects and says Hello until central welcomes the agent.
async fn connect(addr: SocketAddr, id: u64, shared: &Shared) -> (TcpStream, BytesMut) {
    loop {
        let attempt = async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            stream.set_nodelay(true).ok()?;
            let mut out = Preamble::ours().encode().to_vec();
            frame::encode(
                &Message::Hello(Hello {
                    agent_id: format!("fleet-{id:05}/eth0"),
                    hostname: format!("fleet-{id:05}"),
                    interface: "eth0".into(),
                    probe_version: "bench".into(),
                    instance: id + 1,
                    token: TOKEN.into(),
                }),
                &mut out,
            )
            .ok()?;
            stream.write_all(&out).await.ok()?;
            let mut buf = BytesMut::with_capacity(4096);
            while buf.len() < Preamble::LEN {
                if stream.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            }
            buf.advance(Preamble::LEN);
            match read_frame(&mut stream, &mut buf).await? {
                Message::Welcome(_) => Some((stream, buf)),
                _ => None,
            }
        };
        if let Ok(Some(connected)) = tokio::time::timeout(Duration::from_secs(10), attempt).await {
            return connected;
        }
        shared.refusals.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1000 + id % 500)).await;
    }
}

struct Shared {
    connected: AtomicUsize,
    measuring: AtomicBool,
    stop: AtomicBool,
    latencies: Mutex<Vec<Duration>>,
    refusals: AtomicU64,
    failures: AtomicU64,
}

async fn agent(addr: SocketAddr, id: u64, events: u64, shared: Arc<Shared>) {
    let (mut stream, mut buf) = connect(addr, id, &shared).await;
    shared.connected.fetch_add(1, Ordering::SeqCst);
    // Agents started at different times: spread their ticks over the second.
    tokio::time::sleep(Duration::from_millis(id * 7919 % 1000)).await;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut sequence = 0;
    let mut out = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        sequence += 1;
        out.clear();
        if frame::encode(&Message::Batch(batch(id, sequence, events)), &mut out).is_err() {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let start = Instant::now();
        let acked = async {
            stream.write_all(&out).await.ok()?;
            match read_frame(&mut stream, &mut buf).await? {
                Message::Ack(ack) if ack.sequence == sequence => Some(()),
                _ => None,
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), acked)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            (stream, buf) = connect(addr, id, &shared).await;
            continue;
        }
        if shared.measuring.load(Ordering::SeqCst) {
            shared
                .latencies
                .lock()
                .expect("latencies")
                .push(start.elapsed());
        }
    }
}

/// `GET path` over a fresh connection: (status line, body length, time taken).
async fn get(addr: SocketAddr, path: &str) -> Option<(String, usize, Duration)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let status = String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned();
    let head = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((status, raw.len() - head - 4, start.elapsed()))
}

/// (utime + stime in clock ticks, VmRSS KiB, VmHWM KiB, threads) of `pid`.
fn process_figures(pid: u32) -> (u64, u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a list of a few hundred thousand"
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let agents = env_u64("XDT_FLEET_AGENTS", 2000);
    let seconds = env_u64("XDT_FLEET_SECONDS", 60);
    let events = env_u64("XDT_FLEET_EVENTS", 10);
    let nofile = env_u64("XDT_FLEET_NOFILE", 8192);
    // 0 turns the dashboard's /metrics.json polls (1) or the Prometheus scrapes (2) off, to
    // tell their cost apart.
    let readers = env_u64("XDT_FLEET_READERS", 3);

    // This process holds the agents' ends of the connections.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let want = (agents + 1024).min(hard);
    if soft < want {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard)
            .expect("setrlimit");
    }

    let dir = std::env::temp_dir().join(format!("xdt-fleet-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).expect("dir");
    let state = (env_u64("XDT_FLEET_STATE", 1) != 0).then(|| dir.join("state"));
    let central = CentralProcess::start_with_env(
        &dir,
        state.as_deref(),
        &[],
        Some(nofile),
        &[("TMPDIR", dir.as_os_str())],
    );
    let pid = u32::try_from(central.pid()).expect("pid");
    let (telemetry, http) = (central.telemetry, central.http);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state_dir = dir.join("state");
    runtime.block_on(async move {
        let shared = Arc::new(Shared {
            connected: AtomicUsize::new(0),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            latencies: Mutex::new(Vec::new()),
            refusals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let started = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..agents {
            tasks.push(tokio::spawn(agent(telemetry, id, events, Arc::clone(&shared))));
        }
        while shared.connected.load(Ordering::SeqCst) < usize::try_from(agents).expect("agents")
        {
            assert!(
                started.elapsed() < Duration::from_mins(5),
                "only {} agents connected",
                shared.connected.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_connected = started.elapsed();
        let refusals_at_start = shared.refusals.load(Ordering::Relaxed);
        // Warm up: every agent's recent events and histories fill.
        tokio::time::sleep(Duration::from_secs(5)).await;

        // The dashboard: /metrics.json every second; Prometheus every 15 s. On a thread of
        // its own, as a browser is elsewhere: reading 10 MB must not delay the agents' runtime.
        let dashboard = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let mut polls = Vec::new();
                    let mut ticker = tokio::time::interval(Duration::from_secs(1));
                    let mut n = 0u64;
                    while !shared.stop.load(Ordering::SeqCst) {
                        ticker.tick().await;
                        if readers & 1 != 0
                            && let Some((status, len, took)) = get(http, "/metrics.json").await
                        {
                            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
                            polls.push((len, took));
                        }
                        if readers & 2 != 0 && n.is_multiple_of(15) {
                            let _ = get(http, "/metrics").await;
                        }
                        n += 1;
                    }
                    polls
                })
            })
        };
        let before = process_figures(pid);
        let failures_before = shared.failures.load(Ordering::Relaxed);
        shared.measuring.store(true, Ordering::SeqCst);
        let window = Instant::now();
        let mut peak_rss = 0;
        while window.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            peak_rss = peak_rss.max(process_figures(pid).1);
        }
        shared.measuring.store(false, Ordering::SeqCst);
        let elapsed = window.elapsed();
        let after = process_figures(pid);
        shared.stop.store(true, Ordering::SeqCst);
        let polls = dashboard.join().expect("dashboard");
        for task in tasks {
            task.abort();
        }

        let mut latencies = std::mem::take(&mut *shared.latencies.lock().expect("latencies"));
        latencies.sort_unstable();
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        #[expect(clippy::cast_precision_loss, reason = "a CPU share for display")]
        let cpu = (after.0 - before.0) as f64
            / f64::from(u32::try_from(ticks).unwrap_or(100))
            / elapsed.as_secs_f64();
        let mut poll_times: Vec<Duration> = polls.iter().map(|p| p.1).collect();
        poll_times.sort_unstable();
        let journal: u64 = std::fs::read_dir(&state_dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        });
        println!("| figure | value |");
        println!("|---|---|");
        println!("| agents (real TCP connections, real protocol) | {agents} |");
        println!("| all connected after | {:.1} s ({refusals_at_start} refusals retried: new-agent admission rate) |", all_connected.as_secs_f64());
        println!("| events per batch, batch interval | {events}, 1 s |");
        println!("| measurement window | {:.0} s |", elapsed.as_secs_f64());
        let acked = u32::try_from(latencies.len()).unwrap_or(u32::MAX);
        println!("| batches acknowledged in the window | {acked} ({:.0}/s) |", f64::from(acked) / elapsed.as_secs_f64());
        println!("| batch->Ack p50 | {} |", ms(percentile(&latencies, 0.50)));
        println!("| batch->Ack p99 | {} |", ms(percentile(&latencies, 0.99)));
        println!("| batch->Ack p99.9 | {} |", ms(percentile(&latencies, 0.999)));
        println!("| batch->Ack max | {} |", ms(latencies.last().copied().unwrap_or_default()));
        println!("| failed or timed-out batches (reconnected) | {} |", shared.failures.load(Ordering::Relaxed) - failures_before);
        println!("| central CPU | {:.0} % of one core |", cpu * 100.0);
        println!("| central RSS (end / peak in window / VmHWM) | {} / {} / {} MiB |", after.1 / 1024, peak_rss / 1024, after.2 / 1024);
        println!("| central threads | {} |", after.3);
        println!("| /metrics.json polls (every 1 s) | {} |", polls.len());
        println!("| /metrics.json size | {} KiB |", polls.last().map_or(0, |p| p.0) / 1024);
        println!("| /metrics.json time p50 / max | {} / {} |", ms(percentile(&poll_times, 0.5)), ms(poll_times.last().copied().unwrap_or_default()));
        println!("| state dir (state.json + journal) at the end | {} MiB |", journal >> 20);
    });
    // What central warned about or failed at during the run.
    while let Ok(line) = central.lines.try_recv() {
        if line.contains("WARN") || line.contains("ERROR") {
            eprintln!("central: {line}");
        }
    }
    central.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
