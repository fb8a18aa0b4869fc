//! The bounded front on the public port: accepts under the connection limits (overall, per
//! peer, the oldest slow head making room), reads and checks the request head within its time
//! and size bounds, and relays a minimal request to tiny_http over the private Unix socket.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use log::{debug, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UnixStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::{Instant, timeout, timeout_at},
};

use super::{
    HEAD_GRACE, LINGER, LINGER_BYTES, Limits, MAX_HEAD, MAX_HEADERS, MAX_PER_PEER, MAX_REFUSING,
    RESPONSE_TIMEOUT,
};
use crate::counters::Counters;

/// Clears the front's liveness flag however its task ends.
pub(super) struct Alive(pub(super) Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

pub(super) struct Front {
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
    pub(super) fn new(socket: PathBuf, limits: Limits, counters: Arc<Counters>) -> Self {
        Self {
            socket,
            limits,
            counters,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            heads: Mutex::new(VecDeque::new()),
            next_head: AtomicU64::new(0),
        }
    }

    pub(super) async fn run(self, listener: TcpListener, alive: Alive) {
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
