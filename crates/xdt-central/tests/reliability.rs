//! Issue 13's failure modes against the real `xdt-central` process on loopback: a crash, file
//! descriptor exhaustion, hostile HTTP clients and peers, oversized strings. Each test names the
//! promise of docs/reliability.md it checks.

mod common;

use std::time::{Duration, Instant};

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

fn raise_nofile(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < needed {
        assert!(
            hard >= needed,
            "RLIMIT_NOFILE hard limit {hard} is below {needed}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit");
    }
}

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is loopback), so a
/// test can be two different peers.
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind source");
    tokio::time::timeout(common::STEP, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Threads of a process, from /proc.
fn threads(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}

/// Out of file descriptors (the unit's old default of 1024 against 4096 connections): more
/// telemetry connections than descriptors never take the HTTP side down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_survives_file_descriptor_exhaustion() {
    const PEERS: usize = 1100;
    raise_nofile(4 * PEERS as u64 + 256);
    let dir = TempDir::new("emfile");
    let state = dir.path().join("state");
    let central = CentralProcess::start(dir.path(), Some(&state), &[], Some(1024));
    let mut idle = Vec::new();
    for _ in 0..PEERS {
        idle.push(
            tokio::time::timeout(
                common::STEP,
                tokio::net::TcpStream::connect(central.telemetry),
            )
            .await
            .expect("connect in time")
            .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = get(central.http, "/healthz").await;
    assert_eq!(
        health.status, 200,
        "with {PEERS} telemetry connections open"
    );
    // An agent still gets through once the idle peers are gone, and HTTP still answers.
    drop(idle);
    let start = std::time::Instant::now();
    loop {
        let mut agent = TestAgent::connect(central.telemetry).await;
        agent
            .send(&xdt_wire::Message::Hello(hello("after-emfile", 1, TOKEN)))
            .await;
        match agent.recv().await {
            Some(xdt_wire::Message::Welcome(_)) => break,
            other => {
                assert!(start.elapsed() < common::STEP, "never admitted: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(get(central.http, "/healthz").await.status, 200);
    assert_eq!(get(central.http, "/metrics.json").await.status, 200);
}

/// Writes `bytes` to `stream` until done or the peer stops reading/closes; bounded in time.
async fn write_until_refused(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> usize {
    use tokio::io::AsyncWriteExt as _;
    let mut written = 0;
    let start = std::time::Instant::now();
    while written < bytes.len() && start.elapsed() < common::STEP {
        let end = (written + 64 * 1024).min(bytes.len());
        match tokio::time::timeout(Duration::from_secs(2), stream.write(&bytes[written..end])).await
        {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => written += n,
        }
    }
    written
}

/// Sends `bytes` (as much as central takes) and returns the status line central answers with,
/// or an empty string if it closed without one; bounded in time.
async fn refused_with(http: std::net::SocketAddr, bytes: &[u8]) -> (usize, String) {
    use tokio::io::AsyncReadExt as _;
    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    let sent = write_until_refused(&mut stream, bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "central neither answered nor closed ({sent} bytes sent)"
    );
    let answer = String::from_utf8_lossy(&answer);
    (sent, answer.lines().next().unwrap_or_default().to_owned())
}

/// A request line without end, and a head of 100,000 headers, are refused after a bounded
/// number of bytes: central answers at once and does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_requests_are_refused_without_growing_central() {
    let dir = TempDir::new("http-size");
    let central = CentralProcess::start(dir.path(), None, &[], None);
    assert_eq!(get(central.http, "/healthz").await.status, 200);
    let before = central.rss_kib();

    let (sent, status) = refused_with(central.http, &vec![b'a'; 4 << 20]).await;
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "{status:?} after {sent} bytes of request line"
    );
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100_000 {
        head.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(32)).as_bytes());
    }
    let (sent, status) = refused_with(central.http, &head).await;
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "{status:?} after {sent} bytes of headers"
    );
    // A body is refused too (only GET and HEAD are served, without one).
    let (_, status) = refused_with(
        central.http,
        b"POST / HTTP/1.1\r\nContent-Length: 100000000\r\n\r\nxx",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status:?}");
    let after = central.rss_kib();
    eprintln!("RSS {before} -> {after} KiB after the oversized requests");
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(get(central.http, "/healthz").await.status, 200);
}

/// Slow clients (a request head that never ends) cost neither a thread each nor a slot for
/// ever: they are held to a per-address limit and closed at the request timeout, and others
/// are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_are_bounded_and_time_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SLOW: usize = 300;
    raise_nofile(4 * SLOW as u64 + 256);
    let dir = TempDir::new("http-slow");
    let central = CentralProcess::start(dir.path(), None, &["--http-timeout", "2"], None);
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut stream = connect_from([127, 0, 0, 2], central.http).await;
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let threads = threads(central.pid());
    eprintln!("{threads} threads with {SLOW} slow HTTP clients");
    assert!(threads < 40, "{threads} threads with {SLOW} slow clients");
    // Another client is served meanwhile.
    assert_eq!(get(central.http, "/healthz").await.status, 200);
    // Every slow client is closed by the request timeout (2 s here).
    let start = std::time::Instant::now();
    for stream in &mut slow {
        let mut buf = [0; 512];
        let left = (common::STEP).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(_) => {}
            Err(e) => panic!("a slow client was never closed: {e}"),
        }
    }
    eprintln!(
        "every slow client closed {:?} after the check",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// The watchdog is fed only while the HTTP side answers: with tiny_http unreachable, systemd
/// gets no `WATCHDOG=1` (and restarts central) instead of a healthy-looking process without
/// its HTTP side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_only_while_http_answers() {
    let dir = TempDir::new("watchdog");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let central = CentralProcess::start_with_env(
        dir.path(),
        None,
        &[],
        None,
        &[
            ("NOTIFY_SOCKET", notify_path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("1000000")),
            ("TMPDIR", tmp.as_os_str()),
        ],
    );
    // Messages in the next `window`, joined.
    let received = |window: Duration| {
        let start = std::time::Instant::now();
        let mut text = String::new();
        let mut buf = [0; 4096];
        while start.elapsed() < window {
            if let Ok(n) = notify.recv(&mut buf) {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                text.push('\n');
            }
        }
        text
    };
    let healthy = received(Duration::from_secs(2));
    assert!(
        healthy.contains("WATCHDOG=1"),
        "fed while healthy: {healthy}"
    );
    assert_eq!(get(central.http, "/healthz").await.status, 200);

    // Take tiny_http's socket away: the HTTP side no longer answers.
    let private: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("xdt-central-http-")
        })
        .collect();
    assert_eq!(private.len(), 1, "one private socket directory");
    std::fs::remove_file(private[0].path().join("http.sock")).expect("remove the socket");
    let _ = received(Duration::from_millis(700));
    let dead = received(Duration::from_secs(2));
    assert!(!dead.contains("WATCHDOG=1"), "fed without HTTP: {dead}");
    assert!(dead.contains("HTTP side not answering"), "{dead}");
    central.wait_for_line(&["the HTTP side does not answer"]);
}

/// `/metrics.json` with a fleet of agents, asked by several dashboards at once, neither holds
/// ingest up nor grows without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_is_bounded_and_does_not_stall_ingest() {
    const AGENTS: u64 = 1000;
    raise_nofile(4096);
    let dir = TempDir::new("json-stall");
    let central = CentralProcess::start(dir.path(), None, &[], None);
    for i in 0..AGENTS {
        let (mut agent, _) =
            TestAgent::hello(central.telemetry, hello(&format!("fleet-{i:04}"), i, TOKEN)).await;
        let events = (0..256).map(|e| event(e, "web", 64)).collect();
        assert_eq!(agent.batch(batch(1, 1, i, events)).await, 1);
    }
    let start = std::time::Instant::now();
    let first = get(central.http, "/metrics.json").await;
    eprintln!(
        "first /metrics.json: {} bytes in {:?}",
        first.body.len(),
        start.elapsed()
    );
    assert!(
        first.body.len() < 16 << 20,
        "/metrics.json of {AGENTS} agents is {} bytes",
        first.body.len()
    );
    assert_eq!(
        first.json()["nodes"].as_array().map(Vec::len),
        Some(AGENTS as usize)
    );

    // Four dashboards polling while one agent streams batches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Plain threads with blocking sockets: the readers must not starve this test's agent of
    // its runtime threads.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (http, stop) = (central.http, std::sync::Arc::clone(&stop));
        readers.push(std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut n = 0;
            let mut body = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut stream = std::net::TcpStream::connect(http).expect("connect");
                stream
                    .set_read_timeout(Some(common::STEP))
                    .expect("timeout");
                stream
                    .write_all(
                        b"GET /metrics.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .expect("request");
                body.clear();
                stream.read_to_end(&mut body).expect("response");
                assert!(
                    body.starts_with(b"HTTP/1.1 200"),
                    "{:?}",
                    &body[..body.len().min(40)]
                );
                n += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            n
        }));
    }
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("streamer", 1, TOKEN)).await;
    let mut delays = Vec::new();
    for s in 1..=60 {
        let start = std::time::Instant::now();
        assert_eq!(agent.batch(batch(s, s, s, events(10))).await, s);
        delays.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    delays.sort_unstable();
    let (p90, worst) = (delays[delays.len() * 9 / 10], delays[delays.len() - 1]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut requests = 0;
    for reader in readers {
        requests += reader.join().expect("reader");
    }
    let rss = central.rss_kib();
    eprintln!(
        "batch->Ack p90 {p90:?}, worst {worst:?} with {requests} /metrics.json requests; RSS {rss} KiB"
    );
    // The old rendering held the lock for the whole document (seconds for this fleet in a
    // debug build): every batch during a render waited for all of it.
    assert!(p90 < Duration::from_millis(100), "batch->Ack p90 {p90:?}");
    assert!(
        worst < Duration::from_secs(3),
        "a batch waited {worst:?} for its Ack"
    );
    assert!(rss < 256 * 1024, "RSS {rss} KiB");
}

/// Hello and the answer: `Ok(last_sequence)` on Welcome, `Err(message)` on an Error.
async fn try_hello(addr: std::net::SocketAddr, agent_id: &str) -> Result<(TestAgent, u64), String> {
    let mut agent = TestAgent::connect(addr).await;
    agent
        .send(&xdt_wire::Message::Hello(hello(agent_id, 1, TOKEN)))
        .await;
    match agent.recv().await {
        Some(xdt_wire::Message::Welcome(w)) => Ok((agent, w.last_sequence)),
        Some(xdt_wire::Message::Error(e)) => Err(format!("{:?}: {}", e.code, e.message)),
        other => Err(format!("{other:?}")),
    }
}

/// The agent table cannot be filled for good: a full table makes room by evicting the agent
/// disconnected longest (also after a restart), never a connected one, and disconnected
/// agents expire after --agent-expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_table_makes_room_and_expires_stale_agents() {
    let dir = TempDir::new("table");
    let state = dir.path().join("state");
    let args = ["--max-agents", "20", "--agent-expiry", "3"];
    let central = CentralProcess::start(dir.path(), Some(&state), &args, None);
    for i in 0..20 {
        let (mut agent, _) = try_hello(central.telemetry, &format!("churn-{i:02}"))
            .await
            .expect("admitted");
        assert_eq!(agent.batch(batch(1, 1, 1, vec![])).await, 1);
    }
    // The table is full of disconnected agents: a new one takes the place of the oldest.
    let (mut real, _) = try_hello(central.telemetry, "real-1")
        .await
        .expect("room made");
    assert_eq!(real.batch(batch(1, 1, 1, vec![])).await, 1);
    let json = get(central.http, "/metrics.json").await.json();
    let ids: Vec<_> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["agent_id"].clone())
        .collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert!(
        !ids.contains(&serde_json::json!("churn-00")),
        "the oldest went: {ids:?}"
    );
    central.wait_for_line(&["evicted", "churn-00"]);
    drop(real);
    central.kill();

    // After a restart too, and a full table of connected agents refuses instead of evicting.
    let central = CentralProcess::start(dir.path(), Some(&state), &args, None);
    let mut live = Vec::new();
    for i in 0..20 {
        live.push(
            try_hello(central.telemetry, &format!("live-{i:02}"))
                .await
                .expect("room"),
        );
    }
    let refused = try_hello(central.telemetry, "one-too-many")
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("Busy"), "{refused}");
    drop(live);

    // Disconnected agents expire (here after 3 s).
    let start = Instant::now();
    loop {
        let json = get(central.http, "/metrics.json").await.json();
        if json["nodes"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(start.elapsed() < common::STEP, "never expired: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    central.wait_for_line(&["expired"]);
    let metrics = get(central.http, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("xdt_central_agents_expired_total 20")),
        "{metrics}"
    );
}

/// Peers that never authenticate cannot lock agents out: they get a budget of their own (and
/// a per-address share of it), never the --max-connections slots of agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_do_not_lock_agents_out() {
    const IDLE: usize = 300;
    raise_nofile(4 * IDLE as u64 + 256);
    let dir = TempDir::new("handshakes");
    let args = ["--max-connections", "20", "--max-handshakes", "64"];
    let central = CentralProcess::start(dir.path(), None, &args, None);
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(connect_from([127, 0, 0, 3], central.telemetry).await);
    }
    // The idle peers fill the handshake budget and have had their grace second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut admitted = 0;
    for i in 0..19 {
        match try_hello(central.telemetry, &format!("legit-{i}")).await {
            Ok(_) => admitted += 1,
            Err(e) => eprintln!("attempt {i}: {e}"),
        }
    }
    assert_eq!(
        admitted, 19,
        "a legitimate agent was refused while {IDLE} idle peers waited"
    );
    drop(idle);
    let metrics = get(central.http, "/metrics").await.text();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("xdt_central_handshakes_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the handshakes_refused counter");
    assert!(refused > 0, "{metrics}");
}

/// Oversized strings from an agent are clipped into allocations of their clipped size: 300
/// batches with a 1 MB label leave central about where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_agent_strings_do_not_grow_central() {
    let dir = TempDir::new("strings");
    let central = CentralProcess::start(dir.path(), None, &[], None);
    let (mut agent, _) = TestAgent::hello(central.telemetry, hello("big-labels", 1, TOKEN)).await;
    assert_eq!(agent.batch(batch(1, 1, 1, events(10))).await, 1);
    let before = central.rss_kib();
    let label = "x".repeat(1_000_000);
    for s in 2..=301 {
        let mut b = batch(s, s, s, vec![event(s, &label, 64)]);
        b.counters.push((label[..1000].to_owned(), s));
        assert_eq!(agent.batch(b).await, s);
    }
    let after = central.rss_kib();
    eprintln!("RSS {before} -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    let json = get(central.http, "/metrics.json").await.json();
    let recent = &node(&json, "big-labels")["recent_events"];
    let label = recent[recent.as_array().map_or(0, Vec::len) - 1]["label"]
        .as_str()
        .expect("label");
    assert_eq!(label.len(), xdt_central::state::MAX_SHORT);
}

/// Slow clients from many addresses cannot take every HTTP slot either: when all are taken, a
/// new client takes the place of the oldest one still sending its head after a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_from_many_addresses_do_not_lock_others_out() {
    use tokio::io::AsyncWriteExt as _;
    raise_nofile(2048);
    let dir = TempDir::new("http-slow-many");
    let central = CentralProcess::start(dir.path(), None, &["--http-max-connections", "32"], None);
    let mut slow = Vec::new();
    for host in 2..=6 {
        for _ in 0..16 {
            let mut stream = connect_from([127, 0, 1, host], central.http).await;
            let _ = stream.write_all(b"GET / HTTP/1.1\r\n").await;
            slow.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..5 {
        assert_eq!(get(central.http, "/healthz").await.status, 200);
    }
    drop(slow);
}
