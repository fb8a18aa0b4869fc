//! What tiny_http's threads answer: the dashboard's files, `/catalogue.json`, `/metrics.json`,
//! `/metrics` and `/healthz`.

use std::{
    io::Cursor,
    sync::atomic::{AtomicBool, Ordering},
};

use log::{debug, error, warn};
use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{
    catalogue,
    export::{json, prom},
    state::Shared,
    ui,
};

/// What the HTTP threads share: the state, the Prometheus registry and the rendered
/// `/metrics.json`.
pub(super) struct Handler {
    state: Shared,
    registry: Registry,
    json: json::Cache,
}

impl Handler {
    /// `max_connections` is the telemetry listener's limit, reported on `/metrics`.
    pub(super) fn new(state: &Shared, max_connections: usize) -> Self {
        Self {
            state: state.clone(),
            registry: prom::registry(state.clone(), max_connections),
            json: json::Cache::default(),
        }
    }
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

pub(super) fn serve(server: &Server, handler: &Handler, stopping: &AtomicBool) {
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
