//! A minimal HTTP client for tests against xdt's own loopback servers. It speaks HTTP/1.0, so
//! the server answers with a plain body (no chunked transfer encoding) and closes.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

/// `GET path` on 127.0.0.1:`port`: the status code and the body, or `None` if the server cannot
/// be reached or the answer is not HTTP.
#[must_use]
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The body of a `200 OK` answer to `GET path`, or `None`.
#[must_use]
pub fn get_ok(port: u16, path: &str) -> Option<String> {
    get(port, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// Polls central's `/metrics.json` (fetched by `fetch`, which may run in another namespace) until
/// the node of `agent_id` satisfies `pick`, and returns it; panics after `timeout` with `what`
/// and the last node seen.
pub fn central_node_when(
    fetch: impl Fn() -> Option<String>,
    agent_id: &str,
    what: &str,
    timeout: Duration,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let node = fetch()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["agent_id"] == agent_id)
                    .cloned()
            });
        if let Some(node) = &node
            && pick(node)
        {
            return node.clone();
        }
        assert!(
            std::time::Instant::now() <= deadline,
            "{what}: not seen in /metrics.json; node: {node:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The HTTP paths central's `node` shows in its recent events' inspections: the requests the
/// agent steered and read.
#[must_use]
pub fn steered_http_paths(node: &serde_json::Value) -> std::collections::HashSet<String> {
    node["recent_events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["inspection"]["http"]["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET http://HOST:PORT/echo/NAME` with curl in `client`'s namespace (`xdt-service-health`
/// answers with the path); panics unless that is the answer.
pub fn echo(client: &xdt_lab::Netns, host: &str, port: u16, name: &str) {
    let url = format!("http://{host}:{port}/echo/{name}");
    let out = client
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-g", &url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("/echo/{name}\n"),
        "{url}"
    );
}
