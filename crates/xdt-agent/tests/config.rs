//! The real `xdt-agent` binary and the files and values an operator hands it: buffer sizes of
//! zero, token and config files that are not regular files, values too long to echo, and a
//! reload that is refused (which must change nothing, the log level included).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use xdt_datapath::testing::DemoCounter;
use xdt_testkit::{process::Process, root_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_xdt-agent");

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(xdt_testkit::unique_name("xdt-agent-config-"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "t0ken\n").expect("token");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the agent to completion (it must stop by itself within 10 s) and returns its output.
fn agent(args: &[&str], token: &Path) -> Output {
    let mut child = Command::new(AGENT)
        .args(["--interface", "eth-test", "--central", "127.0.0.1:1"])
        .arg("--token-file")
        .arg(token)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the agent still ran after 10 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn zero_buffer_sizes_are_refused() {
    let dir = Dir::new();
    for (flag, name) in [
        ("--buffer-batches", "--buffer-batches"),
        ("--buffer-events", "--buffer-events"),
    ] {
        let stderr = refused(&agent(&[flag, "0"], &dir.path("token")));
        assert!(
            stderr.contains(&format!("{name} must be at least 1, not 0")),
            "{stderr}"
        );
    }
}

/// Flow options out of range are refused with the flag and the range, from the command line
/// and from the config file alike.
#[test]
fn flow_options_out_of_range_are_refused() {
    let dir = Dir::new();
    for (args, message) in [
        (
            &["--flow-idle", "0"][..],
            "--flow-idle must be between 1 and 3600 seconds, not 0",
        ),
        (
            &["--flow-active", "100000"][..],
            "--flow-active must be between 1 and 86400 seconds, not 100000",
        ),
        (
            &["--ipfix-template-refresh", "0.5"][..],
            "--ipfix-template-refresh must be between 1 and 86400 seconds, not 0.5",
        ),
        (
            &["--flow-max", "0"][..],
            "--flow-max must be between 1 and 16777216, not 0",
        ),
    ] {
        let stderr = refused(&agent(args, &dir.path("token")));
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let config = dir.path("agent.conf");
    std::fs::write(&config, "XDT_FLOW_IDLE=0\n").expect("write");
    let stderr = refused(&agent(
        &["--config", config.to_str().expect("path")],
        &dir.path("token"),
    ));
    assert!(
        stderr.contains("--flow-idle must be between 1 and 3600 seconds, not 0"),
        "{stderr}"
    );
}

/// Steering options out of range are refused with the flag and what it takes.
#[test]
fn steering_options_out_of_range_are_refused() {
    let dir = Dir::new();
    for (args, message) in [
        (
            &["--steer-spin", "10001"][..],
            "--steer-spin must be between 0 and 10000 microseconds, not 10001",
        ),
        (
            &["--steer-cpu", "4096"][..],
            "--steer-cpu 4096 is not a CPU the agent may run on (0",
        ),
    ] {
        let stderr = refused(&agent(args, &dir.path("token")));
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// A token or config file that is a FIFO (nobody writes to it) is refused at once instead of
/// hanging the agent; `/dev/zero` instead of exhausting memory; a file over the bound is
/// refused too.
#[test]
fn token_and_config_files_must_be_regular_and_bounded() {
    let dir = Dir::new();
    let fifo = dir.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let stderr = refused(&agent(&[], &fifo));
    assert!(
        stderr.contains(&format!(
            "cannot read token file {}: a FIFO, not a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
    let stderr = refused(&agent(&[], Path::new("/dev/zero")));
    assert!(
        stderr.contains("/dev/zero: a character device, not a regular file"),
        "{stderr}"
    );
    let big = dir.path("big-token");
    std::fs::write(&big, "x".repeat(10_000)).expect("write");
    let stderr = refused(&agent(&[], &big));
    assert!(stderr.contains("larger than 4096 bytes"), "{stderr}");

    let out = agent(
        &["--config", fifo.to_str().expect("path")],
        &dir.path("token"),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a FIFO, not a regular file"), "{stderr}");
}

/// A 60 KB bad value in the config file, a 100 KB one in the environment (a process's
/// environment strings stop at 128 KiB; the file, at 64 KiB): each error is one short line
/// naming the option. A 5 MB config file is refused for its size.
#[test]
fn long_bad_values_are_clipped() {
    let dir = Dir::new();
    let config = dir.path("agent.conf");
    std::fs::write(&config, format!("XDT_INTERVAL=x{}\n", "1".repeat(60_000))).expect("write");
    let out = agent(
        &["--config", config.to_str().expect("path")],
        &dir.path("token"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.len() < 500 && stderr.contains("--interval"),
        "{} bytes: {}",
        stderr.len(),
        &stderr[..500.min(stderr.len())]
    );
    std::fs::write(
        &config,
        format!("XDT_INTERVAL=x{}\n", "1".repeat(5_000_000)),
    )
    .expect("write");
    let out = agent(
        &["--config", config.to_str().expect("path")],
        &dir.path("token"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.len() < 500 && stderr.contains("larger than 65536 bytes"),
        "{} bytes: {}",
        stderr.len(),
        &stderr[..500.min(stderr.len())]
    );
    let out = Command::new(AGENT)
        .args(["--interface", "eth-test"])
        .env("XDT_INTERVAL", format!("x{}", "1".repeat(100_000)))
        .output()
        .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.len() < 500 && stderr.contains("100003 bytes"),
        "{} bytes: {}",
        stderr.len(),
        &stderr[..500.min(stderr.len())]
    );
}

/// A reload refused for a bad value must not apply the file's log level either. The agent
/// warns at every failed connection to central (none listens on port 1); a refused reload
/// asking for `error` only must leave those warnings coming.
#[test]
fn a_refused_reload_changes_nothing() {
    if !root_or_skip("a_refused_reload_changes_nothing") {
        return;
    }
    // The otel demo's counter program: a map for `--map-id`.
    let counter = DemoCounter::load();
    let dir = Dir::new();
    let config = dir.path("agent.conf");
    std::fs::write(&config, "XDT_LOG_LEVEL=info\n").expect("write");
    let log = dir.path("agent.log");
    let agent = Process::start(
        Command::new(AGENT)
            .args(["--interface", "eth-test", "--central", "127.0.0.1:1"])
            .args(["--map-id", &counter.map_id.to_string(), "--no-steer"])
            .arg("--config")
            .arg(&config)
            .arg("--token-file")
            .arg(dir.path("token"))
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = |text: &str| text.matches("central 127.0.0.1:1:").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while warnings(&read()) < 2 {
        assert!(
            Instant::now() < deadline,
            "no connection warnings: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&config, "XDT_LOG_LEVEL=error\nXDT_INTERVAL=0\n").expect("write");
    let pid = nix::unistd::Pid::from_raw(agent.id().cast_signed());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read().contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal: {}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    let at_refusal = read().len();
    // Backoff doubles from 0.5 s: the next attempts come within 16 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while warnings(&read()[at_refusal..]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no warning since the refused reload: the log level changed: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
}
