//! The HTTP front hands tiny_http each request with the client's own HTTP version: an HTTP/1.0
//! client gets a plain body it can read (tiny_http writes bodies above 32 KiB chunked to
//! HTTP/1.1 clients, and chunked transfer coding does not exist in HTTP/1.0).

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{TestCentral, config};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

async fn raw_get(addr: SocketAddr, version: &str, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} {version}\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    (
        String::from_utf8_lossy(&raw[..split]).into_owned(),
        raw[split + 4..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_a_plain_body() {
    let central = TestCentral::start(config()).await;
    let app = include_bytes!("../../../ui/app.js");
    assert!(
        app.len() > 32 * 1024,
        "app.js is no longer above tiny_http's chunking threshold"
    );

    let (head, body) = raw_get(central.http, "HTTP/1.0", "/app.js").await;
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "an HTTP/1.0 answer must not be chunked: {head}"
    );
    assert_eq!(body, app, "the body is the file as is");

    // HTTP/1.1 clients may get it chunked; either way, the head says how.
    let (head, _) = raw_get(central.http, "HTTP/1.1", "/app.js").await;
    assert!(head.contains(" 200 "), "{head}");
    central.stop().await.expect("stop");
}
