//! Starts the real binary on an ephemeral loopback port and speaks HTTP to it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
};

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn answers_healthz_and_404() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xdt-service-health"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start service-health");
    let stdout = child.stdout.take().expect("stdout");
    let service = Service(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on ADDR")
        .to_owned();

    let ok = get(&addr, "/healthz");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("ok\n"), "{ok}");
    let missing = get(&addr, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let echo = get(&addr, "/echo/a/b?q=1");
    assert!(echo.starts_with("HTTP/1.1 200"), "{echo}");
    assert!(echo.ends_with("\r\n\r\n/echo/a/b\n"), "{echo}");

    // POST /echo returns the body byte for byte.
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    write!(
        stream,
        "POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("write");
    stream.write_all(&body).expect("body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    assert!(
        response.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&response[..split])
    );
    let echoed = &response[split + 4..];
    assert!(
        echoed == body,
        "echoed {} bytes, not the {} sent",
        echoed.len(),
        body.len()
    );
    drop(service);
}

#[test]
fn refuses_a_bad_listen_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_xdt-service-health"))
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on not-an-address"),
        "{stderr}"
    );
}
