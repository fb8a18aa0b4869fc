//! Helpers of the integration tests: a central on loopback ports, an agent speaking the
//! protocol with `xdt-wire`, raw HTTP GETs, a log recorder, and temporary directories.
//! Every wait is bounded.

#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Mutex, Once, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use xdt_central::{Central, Config, Token};
use xdt_wire::{
    AgentStats, Batch, Connection, DnsQuery, ErrorCode, Event, Flow, FlowBatch, FlowEnd, FlowStats,
    Hello, HttpRequest, Inspection, LabelCount, Message, SteeringStats, Welcome,
};

pub use self::process::{CentralProcess, STEP, TOKEN};

/// The real `xdt-central` binary, shared with the benchmarks.
mod process;

// ---- logs -------------------------------------------------------------------------------

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct Recorder;

/// A record's key-value fields as ` key=value` pairs.
struct Fields(String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl log::Log for Recorder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("xdt_central")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        let line = format!("{} {}{}", record.level(), record.args(), fields.0);
        if std::env::var_os("XDT_TEST_LOG").is_some() {
            eprintln!("{line}");
        }
        LINES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn flush(&self) {}
}

/// Records central's log lines (printed too when XDT_TEST_LOG is set).
pub fn init_logs() {
    INIT.call_once(|| {
        log::set_logger(&Recorder).expect("logger");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// The recorded lines containing every one of `needles`.
pub fn log_lines(needles: &[&str]) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .cloned()
        .collect()
}

/// Waits (bounded) for a log line containing all of `needles`.
pub async fn wait_for_log(needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = log_lines(needles).pop() {
            return line;
        }
        assert!(
            start.elapsed() < STEP,
            "no log line with {needles:?}; log:\n{}",
            LINES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- central ----------------------------------------------------------------------------

/// A test configuration: loopback, ephemeral ports, short timeouts.
pub fn config() -> Config {
    let mut config = Config::new(Token::new(TOKEN).expect("token"));
    config.telemetry_listen = "127.0.0.1:0".parse().expect("addr");
    config.http_listen = "127.0.0.1:0".parse().expect("addr");
    config.hello_timeout = Duration::from_secs(2);
    config.frame_timeout = Duration::from_secs(2);
    config.http_threads = 2;
    config
}

/// A running central; `stop` shuts it down and returns `run`'s result.
pub struct TestCentral {
    pub telemetry: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<xdt_central::Result<()>>>,
}

impl TestCentral {
    pub async fn start(config: Config) -> Self {
        init_logs();
        let central = Central::bind(config).await.expect("bind central");
        let telemetry = central.telemetry_addr();
        let http = central.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(central.run(async move {
            let _ = stopped.await;
        }));
        Self {
            telemetry,
            http,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> xdt_central::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        timeout(STEP, task)
            .await
            .expect("central stops in time")
            .expect("central task")
    }
}

impl Drop for TestCentral {
    fn drop(&mut self) {
        // A failed test: ask central to stop; the runtime ends the rest.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---- agent ------------------------------------------------------------------------------

// The messages themselves are the crate's fixtures, shared with its unit tests.
pub use xdt_central::fixtures::*;

pub struct TestAgent {
    pub conn: Connection<TcpStream>,
}

impl TestAgent {
    /// Connects and exchanges preambles.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_as(addr, xdt_wire::PROTOCOL_VERSION).await
    }

    /// Connects offering protocol `version` (an older agent), and exchanges preambles.
    pub async fn connect_as(addr: SocketAddr, version: u16) -> Self {
        let stream = timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut conn = Connection::with_version(stream, version);
        conn.write_preamble().await.expect("preamble");
        timeout(STEP, conn.read_preamble())
            .await
            .expect("preamble in time")
            .expect("central's preamble");
        Self { conn }
    }

    /// Connects, says hello, and returns the agent with its welcome.
    pub async fn hello(addr: SocketAddr, hello: Hello) -> (Self, Welcome) {
        let mut agent = Self::connect(addr).await;
        agent.send(&Message::Hello(hello)).await;
        match agent.recv().await {
            Some(Message::Welcome(welcome)) => (agent, welcome),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &Message) {
        timeout(STEP, self.conn.write_message(message))
            .await
            .expect("write in time")
            .expect("write");
    }

    pub async fn recv(&mut self) -> Option<Message> {
        timeout(STEP, self.conn.read_message())
            .await
            .expect("read in time")
            .expect("read")
    }

    /// Sends the batch and returns the acknowledged sequence.
    pub async fn batch(&mut self, batch: Batch) -> u64 {
        self.send(&Message::Batch(batch)).await;
        self.ack().await
    }

    /// Sends the batch with flow records and returns the acknowledged sequence.
    pub async fn flow_batch(&mut self, batch: Batch, flows: Vec<Flow>, stats: FlowStats) -> u64 {
        self.send(&Message::FlowBatch(FlowBatch {
            batch,
            flows,
            stats,
        }))
        .await;
        self.ack().await
    }

    async fn ack(&mut self) -> u64 {
        match self.recv().await {
            Some(Message::Ack(ack)) => ack.sequence,
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    pub fn local_addr(&self) -> String {
        self.conn
            .get_ref()
            .local_addr()
            .expect("local addr")
            .to_string()
    }

    /// Writes bytes past the framing (for malformed input).
    pub async fn write_raw(&self, mut bytes: &[u8]) {
        let stream = self.conn.get_ref();
        let start = Instant::now();
        while !bytes.is_empty() {
            assert!(start.elapsed() < STEP, "write stalled");
            timeout(STEP, stream.writable())
                .await
                .expect("writable in time")
                .expect("writable");
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    /// Closes our sending side (the peer sees end of stream).
    pub fn half_close(&self) {
        socket2::SockRef::from(self.conn.get_ref())
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }

    /// Waits (bounded) until central closes; returns whether it sent nothing before.
    pub async fn wait_closed(&mut self) -> bool {
        match timeout(STEP, self.conn.read_message()).await {
            Ok(Ok(None) | Err(_)) => true,
            Ok(Ok(Some(message))) => panic!("expected a close, got {message:?}"),
            Err(elapsed) => panic!("central did not close the connection: {elapsed}"),
        }
    }

    /// Expects `Error(code)` then a clean close.
    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        let message = match self.recv().await {
            Some(Message::Error(e)) if e.code == code => e.message,
            other => panic!("expected Error({code:?}), got {other:?}"),
        };
        assert_eq!(self.recv().await, None, "closed after the error");
        message
    }
}

/// Reads a raw stream until the peer closes (bounded); returns what it sent.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match timeout(STEP, stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "read failed: {e}"
        ),
        Err(elapsed) => panic!("central did not close the connection: {elapsed}"),
    }
    out
}

// ---- HTTP -------------------------------------------------------------------------------

pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let raw = read_to_close(&mut stream).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let (_, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let headers = headers.to_owned();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..line_end])
                .expect("hex")
                .split(';')
                .next()
                .expect("size")
                .trim(),
            16,
        )
        .expect("chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Polls `/metrics.json` until `check` holds (bounded), returning the last document.
pub async fn wait_for_json(
    addr: SocketAddr,
    mut check: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let json = get(addr, "/metrics.json").await.json();
        if check(&json) {
            return json;
        }
        assert!(
            start.elapsed() < STEP,
            "condition never held; last: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn node<'a>(json: &'a serde_json::Value, agent_id: &str) -> &'a serde_json::Value {
    json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["agent_id"] == agent_id)
        .unwrap_or_else(|| panic!("no node {agent_id} in {json:#}"))
}

// ---- files ------------------------------------------------------------------------------

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("xdt-central-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
