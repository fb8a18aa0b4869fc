//! The `xdt-central` binary: bad configuration exits 1 with a message naming the problem; a
//! real run serves the dashboard and endpoints, stops on SIGTERM and saves its state.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{STEP, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_xdt-central");

/// The server process, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary to completion (bounded: every case here ends at startup).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("XDT_TOKEN_FILE")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut server = Server(command.spawn().expect("start xdt-central"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < STEP, "xdt-central {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    server
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    server
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    Output {
        code: status.code(),
        stdout,
        stderr,
    }
}

fn assert_fails(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let out = run(args, env);
    let stderr = out.stderr;
    assert_eq!(out.code, Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configuration_exits_1_naming_the_problem() {
    let dir = TempDir::new("cli-bad");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let token = token.to_str().expect("path");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").expect("empty");
    let empty = empty.to_str().expect("path");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("path");

    assert_fails(&[], &[], "--token-file");
    assert_fails(&["--token-file", empty], &[], "is empty");
    assert_fails(
        &["--token-file", missing],
        &[],
        "cannot read the token file",
    );
    // The token is taken from a file only: there is no option that carries it.
    assert_fails(&["--token-file", token, "--token", "x"], &[], "--token");
    assert_fails(
        &["--token-file", token, "--otlp-endpoint", "collector:4318"],
        &[],
        "--otlp-endpoint",
    );
    assert_fails(
        &["--token-file", token, "--recent-events", "0"],
        &[],
        "--recent-events",
    );
    assert_fails(
        &["--token-file", token, "--max-agents", "many"],
        &[],
        "--max-agents",
    );
    assert_fails(
        &["--token-file", token, "--http-listen", "nowhere"],
        &[],
        "--http-listen",
    );
    assert_fails(&[], &[("XDT_TOKEN_FILE", empty)], "is empty");
    // The token file is read within a bound: neither /dev/zero nor a FIFO without a writer
    // takes central's memory or hangs it.
    assert_fails(
        &["--token-file", "/dev/zero"],
        &[],
        "cannot read the token file",
    );
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    assert_fails(
        &["--token-file", fifo.to_str().expect("path")],
        &[],
        "cannot read the token file",
    );

    // A taken port is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    assert_fails(
        &[
            "--token-file",
            token,
            "--telemetry-listen",
            &addr,
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[],
        &format!("cannot listen for telemetry on {addr}"),
    );

    let help = run(&["--help"], &[]);
    assert_eq!(help.code, Some(0));
    let help = help.stdout;
    for option in [
        "--telemetry-listen",
        "--http-listen",
        "--token-file",
        "--otlp-endpoint",
        "--otlp-interval",
        "--state-dir",
        "--max-connections",
        "--recent-events",
        "--max-agents",
        "--log-level",
    ] {
        assert!(
            help.contains(option),
            "{option} missing from --help:\n{help}"
        );
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_then_stops_on_sigterm_and_saves_state() {
    let dir = TempDir::new("cli-run");
    let token = dir.path().join("token");
    std::fs::write(&token, "  s3cret \n").expect("token");
    let state = dir.path().join("state");
    let mut child = Server(
        Command::new(BIN)
            .args(["--token-file", token.to_str().expect("path")])
            .args([
                "--telemetry-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("STATE_DIRECTORY", &state)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start xdt-central"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        let line = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("no 'listening' line; stderr: {seen:#?}"));
        if line.contains("xdt-central listening") {
            break line;
        }
        seen.push(line);
    };
    let telemetry: std::net::SocketAddr = field(&listening, "telemetry")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no telemetry address in {listening:?}"));
    let http: std::net::SocketAddr = field(&listening, "http")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no http address in {listening:?}"));

    // The token file's surrounding whitespace is not part of the token.
    let (mut agent, welcome) =
        common::TestAgent::hello(telemetry, common::hello("bin-1", 3, "s3cret")).await;
    assert_eq!(welcome.last_sequence, 0);
    assert_eq!(agent.batch(common::batch(1, 1, 10, vec![])).await, 1);

    let health = common::get(http, "/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let index = common::get(http, "/").await;
    if xdt_central::ui::file("/index.html").is_some() {
        assert_eq!(index.status, 200);
        assert!(
            index
                .header("Content-Type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{}",
            index.headers
        );
        // Every embedded file is served with its type.
        for path in xdt_central::ui::paths() {
            let response = common::get(http, path).await;
            assert_eq!(response.status, 200, "{path}");
            assert_eq!(
                response.body.as_slice(),
                xdt_central::ui::file(path).expect("embedded").1,
                "{path}"
            );
        }
    } else {
        assert_eq!(index.status, 404);
        assert!(index.text().contains("ui/index.html"), "{}", index.text());
    }
    assert_eq!(common::get(http, "/nope").await.status, 404);
    assert_eq!(common::get(http, "/tests/package.json").await.status, 404);
    let json = common::get(http, "/metrics.json").await.json();
    assert_eq!(
        common::node(&json, "bin-1")["counters"]["total_packets"],
        10
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < STEP,
            "xdt-central did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(agent.recv().await, None, "the session was closed");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).expect("state"))
            .expect("JSON");
    assert_eq!(saved["agents"][0]["agent_id"], "bin-1");
    assert_eq!(saved["agents"][0]["sequences"], serde_json::json!([[3, 1]]));
}
