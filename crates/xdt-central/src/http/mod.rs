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
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use log::error;
use tiny_http::Server;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UnixStream},
    time::timeout,
};

use self::{
    front::{Alive, Front},
    routes::{Handler, serve},
};
use crate::{
    error::{Error, Result},
    state::Shared,
};

mod front;
mod routes;

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
        let handler = Arc::new(Handler::new(state, limits.telemetry_max_connections));
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
        let front = Front::new(socket.clone(), limits, Arc::clone(state.counters()));
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
