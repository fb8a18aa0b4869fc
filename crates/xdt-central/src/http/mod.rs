//! The HTTP side: the dashboard (embedded from `ui/`) and its `/catalogue.json`, `/metrics.json`, `/metrics` and
//! `/healthz`, answered by tiny_http on a few plain threads, behind a bounded front.
//!
//! tiny_http 0.12 takes only a listener: its accept thread ends at the first failed accept (out
//! of file descriptors, say) and never restarts; it reads the request line and headers with no
//! bound and no timeout; and it gives every connection a thread of its own. So the public port
//! is ours: a tokio task accepts under a connection limit (overall and per peer address; when
//! every slot is taken, the oldest client still sending its head after a second makes room), reads
//! the request head within `--http-timeout` and at most [`MAX_HEAD`] bytes, refuses a body, and
//! hands tiny_http a minimal request (`METHOD PATH`, `Connection: close`) over a Unix socket in
//! a private directory; the response is copied back within the same kind of deadline. tiny_http
//! sees only well-formed, small requests from us, at most `--http-max-connections` at a time.
//!
//! [`HttpHealth::check`] asks tiny_http for `/healthz` over that socket and checks the front is
//! accepting: the watchdog is fed only while both answer.

use std::{
    collections::{HashMap, VecDeque},
    io::Cursor,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use log::{debug, error, warn};
use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UnixStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::{Instant, timeout, timeout_at},
};

use crate::{
    catalogue,
    counters::Counters,
    error::{Error, Result},
    export::{json, prom},
    state::Shared,
    ui,
};

/// Longest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// A client sending its head for this long may be closed to make room when every HTTP slot is
/// taken.
const HEAD_GRACE: Duration = Duration::from_secs(1);
/// Most headers in a request head.
const MAX_HEADERS: usize = 64;
/// HTTP connections one peer address may hold at once (a browser opens about 6).
pub const MAX_PER_PEER: usize = 16;
/// Refusals (503) being written at once; beyond, a connection over the limit is just closed.
pub(crate) const MAX_REFUSING: usize = 16;
/// How long a refusal or an error answer may take to write, and how long (and how much) of the
/// client's unread request is drained after it, so the answer is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 8 << 20;
/// Longest a response may take to reach the client (a large /metrics.json to a slow reader).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// The health check's deadline.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// File descriptors an HTTP connection takes: the client's, our end of the Unix socket, and
/// tiny_http's accepted end with the clone it makes of it.
pub const FDS_PER_CONNECTION: usize = 4;

/// The front's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub threads: usize,
    pub max_connections: usize,
    pub timeout: Duration,
    /// The telemetry side's `--max-connections`, which `/metrics` reports.
    pub telemetry_max_connections: usize,
}

/// The running HTTP side; [`Http::stop`] ends it.
pub(crate) struct Http {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    front: tokio::task::JoinHandle<()>,
    health: HttpHealth,
    dir: PathBuf,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("socket", &self.health.socket)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// Whether the HTTP side answers (for the watchdog).
#[derive(Debug, Clone)]
pub struct HttpHealth {
    socket: PathBuf,
    front_alive: Arc<AtomicBool>,
}

impl HttpHealth {
    /// `Ok` when the front is accepting and tiny_http answers `/healthz` within 2 s.
    pub async fn check(&self) -> std::result::Result<(), String> {
        if !self.front_alive.load(Ordering::SeqCst) {
            return Err("the HTTP accept task has stopped".into());
        }
        let ask = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: central\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            (&mut stream).take(4096).read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match timeout(HEALTH_TIMEOUT, ask).await {
            Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") => Ok(()),
            Ok(Ok(answer)) => Err(format!(
                "/healthz answered {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            )),
            Ok(Err(e)) => Err(format!("/healthz failed: {e}")),
            Err(_) => Err(format!(
                "/healthz did not answer within {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The HTTP listeners, open but not served yet.
#[derive(Debug)]
pub(crate) struct Bound {
    listener: Option<TcpListener>,
    pub addr: SocketAddr,
    backend: std::os::unix::net::UnixListener,
    dir: PathBuf,
    pub health: HttpHealth,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens the public HTTP listener (so a taken port fails startup, before anything runs) and
/// tiny_http's private one.
pub(crate) async fn bind(addr: SocketAddr) -> Result<Bound> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::HttpBind {
        addr,
        reason: e.to_string(),
    })?;
    let local = listener.local_addr().unwrap_or(addr);
    let dir = private_dir().map_err(|e| Error::HttpBind {
        addr,
        reason: format!("cannot create the private socket directory: {e}"),
    })?;
    let socket = dir.join("http.sock");
    let backend = match std::os::unix::net::UnixListener::bind(&socket) {
        Ok(backend) => backend,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::HttpBind {
                addr,
                reason: format!("cannot listen on {}: {e}", socket.display()),
            });
        }
    };
    Ok(Bound {
        listener: Some(listener),
        addr: local,
        backend,
        dir,
        health: HttpHealth {
            socket,
            front_alive: Arc::new(AtomicBool::new(true)),
        },
    })
}

impl Http {
    pub(crate) fn start(mut bound: Bound, state: &Shared, limits: Limits) -> Result<Self> {
        let addr = bound.addr;
        let backend = bound.backend.try_clone().map_err(|e| Error::HttpBind {
            addr,
            reason: e.to_string(),
        })?;
        let server =
            Arc::new(
                Server::from_listener(backend, None).map_err(|e| Error::HttpBind {
                    addr,
                    reason: e.to_string(),
                })?,
            );
        let dir = std::mem::take(&mut bound.dir);
        let health = bound.health.clone();
        let socket = health.socket.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Handler {
            state: state.clone(),
            registry: prom::registry(state.clone(), limits.telemetry_max_connections),
            json: json::Cache::default(),
        });
        let mut handles = Vec::with_capacity(limits.threads);
        for i in 0..limits.threads {
            let server = Arc::clone(&server);
            let handler = Arc::clone(&handler);
            let stopping = Arc::clone(&stopping);
            let handle = std::thread::Builder::new()
                .name(format!("xdt-http-{i}"))
                .spawn(move || serve(&server, &handler, &stopping))
                .map_err(|source| Error::Thread {
                    name: "HTTP",
                    source,
                })?;
            handles.push(handle);
        }
        let front = Front {
            socket: socket.clone(),
            limits,
            counters: Arc::clone(state.counters()),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            heads: Mutex::new(VecDeque::new()),
            next_head: AtomicU64::new(0),
        };
        let alive = Alive(Arc::clone(&health.front_alive));
        let Some(listener) = bound.listener.take() else {
            return Err(Error::HttpBind {
                addr,
                reason: "the listener was already served".into(),
            });
        };
        let front = tokio::spawn(front.run(listener, alive));
        Ok(Self {
            server,
            threads: handles,
            stopping,
            front,
            health,
            dir,
        })
    }

    /// Closes the public listener, wakes every thread and waits for them.
    pub(crate) async fn stop(self) {
        self.front.abort();
        let _ = self.front.await;
        let Self {
            server,
            threads,
            stopping,
            dir,
            ..
        } = self;
        let joined = tokio::task::spawn_blocking(move || {
            stopping.store(true, Ordering::SeqCst);
            for _ in &threads {
                server.unblock();
            }
            for thread in threads {
                if thread.join().is_err() {
                    error!("an HTTP thread panicked");
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
        if joined.is_err() {
            error!("stopping the HTTP threads panicked");
        }
    }
}

/// A directory only central's user can enter, for the Unix socket between the front and
/// tiny_http (nobody else may reach tiny_http without the front's limits).
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "xdt-central-http-{}-{nanos:09}",
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Clears the front's liveness flag however its task ends.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

struct Front {
    socket: PathBuf,
    limits: Limits,
    counters: Arc<Counters>,
    connections: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections still sending their request head, oldest first, each with the way to close
    /// it early.
    heads: Mutex<VecDeque<(u64, Instant, Arc<Notify>)>>,
    next_head: AtomicU64,
}

/// A connection's slot: overall and for its peer address.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    peer: IpAddr,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// Why a request head was refused.
enum Refusal {
    Timeout,
    TooLarge,
    Malformed,
    Body,
    Closed,
    /// Closed to make room for a newer connection: answered, not drained (its slot is wanted).
    PushedOut,
}

impl Front {
    async fn run(self, listener: TcpListener, alive: Alive) {
        let front = Arc::new(self);
        let _alive = alive;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait for connections to end, go on.
                    Counters::add(&front.counters.http_accept_errors);
                    warn!(cause:% = e; "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Some(mut slot) = front.admit(peer.ip()) {
                let front = Arc::clone(&front);
                if slot.permit.is_some() {
                    tokio::spawn(async move {
                        front.serve_one(stream, peer).await;
                        drop(slot);
                    });
                    continue;
                }
                // Every slot is taken: the oldest client still sending its head after a second
                // makes room (slow clients cannot lock the others out), if there is one.
                if front.push_out_oldest_head() {
                    tokio::spawn(async move {
                        let connections = Arc::clone(&front.connections);
                        if let Ok(Ok(permit)) = timeout(LINGER, connections.acquire_owned()).await {
                            slot.permit = Some(permit);
                            front.serve_one(stream, peer).await;
                        } else {
                            Counters::add(&front.counters.http_refused);
                            let mut stream = stream;
                            let busy = answer(503, "too many connections; retry\n");
                            let _ = timeout(LINGER, stream.write_all(&busy)).await;
                        }
                        drop(slot);
                    });
                    continue;
                }
            }
            Counters::add(&front.counters.http_refused);
            debug!(peer:% = peer; "HTTP connection refused: at the connection limit");
            if let Ok(permit) = Arc::clone(&front.refusing).try_acquire_owned() {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = timeout(
                        LINGER,
                        stream.write_all(&answer(503, "too many connections; retry\n")),
                    )
                    .await;
                    drop(permit);
                });
            }
        }
    }

    /// The peer's share, and an overall slot if one is free (`None` inside when all are
    /// taken); `None` when the peer holds its share already.
    fn admit(&self, peer: IpAddr) -> Option<Slot> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let held = per_peer.get(&peer).copied().unwrap_or(0);
        if held >= MAX_PER_PEER {
            return None;
        }
        let permit = Arc::clone(&self.connections).try_acquire_owned().ok();
        per_peer.insert(peer, held + 1);
        Some(Slot {
            permit,
            peer,
            per_peer: Arc::clone(&self.per_peer),
        })
    }

    /// Closes the oldest connection that has been sending its head for [`HEAD_GRACE`] or
    /// longer; returns whether there was one.
    fn push_out_oldest_head(&self) -> bool {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        match heads.front() {
            Some((_, since, _)) if since.elapsed() >= HEAD_GRACE => {}
            _ => return false,
        }
        heads.pop_front().is_some_and(|(_, _, close)| {
            close.notify_one();
            true
        })
    }

    /// One request: its head within the limits, then tiny_http's answer copied back.
    async fn serve_one(&self, mut stream: TcpStream, peer: SocketAddr) {
        let deadline = Instant::now() + self.limits.timeout;
        let id = self.next_head.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((id, Instant::now(), Arc::clone(&close)));
        let head = tokio::select! {
            head = timeout_at(deadline, read_head(&mut stream)) => Some(head),
            () = close.notified() => None,
        };
        {
            let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pos) = heads.iter().position(|(i, _, _)| *i == id) {
                heads.remove(pos);
            }
        }
        let forward = match head {
            Some(Ok(Ok(head))) => head,
            Some(Ok(Err(refusal))) => return self.refuse(stream, peer, refusal).await,
            Some(Err(_)) => return self.refuse(stream, peer, Refusal::Timeout).await,
            None => return self.refuse(stream, peer, Refusal::PushedOut).await,
        };
        let relay = async {
            let mut backend = UnixStream::connect(&self.socket).await?;
            backend.write_all(forward.as_bytes()).await?;
            tokio::io::copy(&mut backend, &mut stream).await?;
            stream.shutdown().await
        };
        match timeout(RESPONSE_TIMEOUT, relay).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(peer:% = peer, cause:% = e; "relaying an HTTP response failed"),
            Err(_) => {
                Counters::add(&self.counters.http_rejected);
                debug!(peer:% = peer; "an HTTP response was not taken in time: closed");
            }
        }
    }

    /// Answers a refused head with its status (when the client is still there) and closes.
    async fn refuse(&self, mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
        let (status, body) = match refusal {
            Refusal::Closed => return,
            Refusal::Timeout | Refusal::PushedOut => (408, "request not complete in time\n"),
            Refusal::TooLarge => (431, "request head too large or too many headers\n"),
            Refusal::Malformed => (400, "malformed request\n"),
            Refusal::Body => (413, "requests with a body are not served\n"),
        };
        let pushed_out = matches!(refusal, Refusal::PushedOut);
        Counters::add(&self.counters.http_rejected);
        debug!(peer:% = peer, status; "HTTP request refused");
        let send = async {
            stream.write_all(&answer(status, body)).await?;
            stream.shutdown().await
        };
        if !matches!(timeout(LINGER, send).await, Ok(Ok(()))) || pushed_out {
            return;
        }
        // Drain what the client is still sending for a moment, so our answer is not
        // overtaken by a reset.
        let drain = async {
            let mut buf = vec![0; 64 * 1024];
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = timeout(LINGER, drain).await;
    }
}

/// A complete HTTP/1.1 answer with a plain-text body, closing the connection.
fn answer(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request head (at most [`MAX_HEAD`] bytes) and returns the request to hand to
/// tiny_http: the method and target only, and `Connection: close`.
async fn read_head(stream: &mut TcpStream) -> std::result::Result<String, Refusal> {
    let mut buf = vec![0; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == MAX_HEAD {
            return Err(Refusal::TooLarge);
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|_| Refusal::Closed)?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => {}
            Ok(httparse::Status::Complete(_)) => {
                let has_body = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || (h.name.eq_ignore_ascii_case("content-length")
                            && h.value.iter().any(|b| (b'1'..=b'9').contains(b)))
                });
                if has_body {
                    return Err(Refusal::Body);
                }
                let (Some(method), Some(path), Some(minor)) =
                    (request.method, request.path, request.version)
                else {
                    return Err(Refusal::Malformed);
                };
                // The client's own version: tiny_http answers HTTP/1.1 with chunked bodies
                // above 32 KiB, which an HTTP/1.0 client cannot read.
                return Ok(format!(
                    "{method} {path} HTTP/1.{minor}\r\nHost: central\r\nConnection: close\r\n\r\n"
                ));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
            Err(_) => return Err(Refusal::Malformed),
        }
    }
}

/// What the HTTP threads share: the state, the Prometheus registry and the rendered
/// `/metrics.json`.
struct Handler {
    state: Shared,
    registry: Registry,
    json: json::Cache,
}

/// A response body: owned, embedded, or the shared `/metrics.json` document (not copied per
/// request).
enum Body {
    Owned(Vec<u8>),
    Static(&'static [u8]),
    Shared(json::Document),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Owned(bytes) => bytes,
            Self::Static(bytes) => bytes,
            Self::Shared(document) => document.as_ref(),
        }
    }
}

fn response(status: u16, content_type: &str, body: Body) -> Response<Cursor<Body>> {
    let len = body.as_ref().len();
    Response::new(
        tiny_http::StatusCode(status),
        vec![
            header("Content-Type", content_type),
            header("Cache-Control", "no-store"),
        ],
        Cursor::new(body),
        Some(len),
        None,
    )
}

fn serve(server: &Server, handler: &Handler, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => handle(request, handler),
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                warn!(cause:% = e; "receiving an HTTP request failed");
            }
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static ASCII header")
}

fn text(status: u16, body: &'static str) -> Response<Cursor<Body>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Body::Static(body.as_bytes()),
    )
}

fn handle(request: Request, handler: &Handler) {
    let response = respond(&request, handler);
    if let Err(e) = request.respond(response) {
        debug!(cause:% = e; "writing an HTTP response failed");
    }
}

fn respond(request: &Request, handler: &Handler) -> Response<Cursor<Body>> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return text(405, "only GET and HEAD are served\n")
            .with_header(header("Allow", "GET, HEAD"));
    }
    let path = request.url().split(['?', '#']).next().unwrap_or("/");
    match path {
        "/healthz" => text(200, "ok\n"),
        "/metrics.json" => response(
            200,
            "application/json",
            Body::Shared(handler.json.get(&handler.state)),
        ),
        "/catalogue.json" => response(200, "application/json", Body::Static(catalogue::document())),
        "/metrics" => match prom::render(&handler.registry) {
            Ok(body) => response(200, prom::CONTENT_TYPE, Body::Owned(body.into_bytes())),
            Err(e) => {
                error!(cause:% = e; "cannot render /metrics");
                text(500, "cannot render metrics\n")
            }
        },
        "/" => match ui::file("/index.html") {
            Some((content_type, body)) => response(200, content_type, Body::Static(body)),
            None => text(
                404,
                "no dashboard: ui/index.html was missing when xdt-central was built \
                 (/metrics.json, /metrics and /healthz are served)\n",
            ),
        },
        path => match ui::file(path) {
            Some((content_type, body)) => response(200, content_type, Body::Static(body)),
            None => text(404, "not found\n"),
        },
    }
}
