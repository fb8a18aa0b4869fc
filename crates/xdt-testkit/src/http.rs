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
