//! The HTTP side on a few plain threads sharing one tiny_http server: the dashboard (embedded
//! from `ui/`), `/metrics.json`, `/metrics` and `/healthz`.

use std::{
    io::Cursor,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use log::{debug, error, warn};
use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{
    error::{Error, Result},
    json, prom,
    state::Shared,
    ui,
};

/// The running HTTP threads; [`Http::stop`] ends them.
pub(crate) struct Http {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("server", &self.server.server_addr())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// Opens the HTTP listener (so a taken port fails startup, before anything runs).
pub(crate) fn bind(addr: SocketAddr) -> Result<(Arc<Server>, SocketAddr)> {
    let server = Server::http(addr).map_err(|e| Error::HttpBind {
        addr,
        reason: e.to_string(),
    })?;
    let local = server.server_addr().to_ip().unwrap_or(addr);
    Ok((Arc::new(server), local))
}

impl Http {
    pub(crate) fn start(server: Arc<Server>, state: &Shared, threads: usize) -> Result<Self> {
        let stopping = Arc::new(AtomicBool::new(false));
        let registry = Arc::new(prom::registry(state.clone()));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let server = Arc::clone(&server);
            let state = state.clone();
            let registry = Arc::clone(&registry);
            let stopping = Arc::clone(&stopping);
            let handle = std::thread::Builder::new()
                .name(format!("xdt-http-{i}"))
                .spawn(move || serve(&server, &state, &registry, &stopping))
                .map_err(|source| Error::Thread {
                    name: "HTTP",
                    source,
                })?;
            handles.push(handle);
        }
        Ok(Self {
            server,
            threads: handles,
            stopping,
        })
    }

    /// Wakes every thread and waits for them; the listener closes when the last reference to
    /// the server is dropped.
    pub(crate) fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.threads {
            self.server.unblock();
        }
        for thread in self.threads {
            if thread.join().is_err() {
                error!("an HTTP thread panicked");
            }
        }
    }
}

fn serve(server: &Server, state: &Shared, registry: &Registry, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => handle(request, state, registry),
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

fn text(status: u16, body: &str) -> Response<Cursor<Vec<u8>>> {
    Response::from_data(body.as_bytes().to_vec())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn handle(request: Request, state: &Shared, registry: &Registry) {
    let response = respond(&request, state, registry);
    if let Err(e) = request.respond(response) {
        debug!(cause:% = e; "writing an HTTP response failed");
    }
}

fn respond(request: &Request, state: &Shared, registry: &Registry) -> Response<Cursor<Vec<u8>>> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return text(405, "only GET and HEAD are served\n")
            .with_header(header("Allow", "GET, HEAD"))
            .with_header(header("Cache-Control", "no-store"));
    }
    let path = request.url().split(['?', '#']).next().unwrap_or("/");
    let response =
        match path {
            "/healthz" => text(200, "ok\n"),
            "/metrics.json" => {
                let body = json::render(&state.read());
                Response::from_data(body).with_header(header("Content-Type", "application/json"))
            }
            "/metrics" => match prom::render(registry) {
                Ok(body) => Response::from_data(body.into_bytes())
                    .with_header(header("Content-Type", prom::CONTENT_TYPE)),
                Err(e) => {
                    error!(cause:% = e; "cannot render /metrics");
                    text(500, "cannot render metrics\n")
                }
            },
            "/" => match ui::file("/index.html") {
                Some((content_type, body)) => Response::from_data(body.to_vec())
                    .with_header(header("Content-Type", content_type)),
                None => text(
                    404,
                    "no dashboard: ui/index.html was missing when xdt-central was built \
                 (/metrics.json, /metrics and /healthz are served)\n",
                ),
            },
            path => match ui::file(path) {
                Some((content_type, body)) => Response::from_data(body.to_vec())
                    .with_header(header("Content-Type", content_type)),
                None => text(404, "not found\n"),
            },
        };
    response.with_header(header("Cache-Control", "no-store"))
}
