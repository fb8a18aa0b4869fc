//! The agent's heartbeat file and `xdt-agent --check-heartbeat`, the liveness probe's command,
//! as root against the real agent of a real probe in a network namespace: healthy while the
//! main loop runs, unhealthy within the probe's max age once it hangs (the test fault
//! `XDT_TEST_FAULTS=hang-on-sigusr2`, the same one the VM test's systemd watchdog catches).
//! Without root: what the check says of a missing, malformed, future and old heartbeat.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use xdt_testkit::{
    net::{Netns, quiet_veth},
    process::{Process, sibling},
    root_or_skip, say,
};

const AGENT: &str = env!("CARGO_BIN_EXE_xdt-agent");
const MAX_AGE: &str = "5";

fn check(file: &Path, max_age: &str) -> Output {
    Command::new(AGENT)
        .arg("--check-heartbeat")
        .arg(file)
        .args(["--max-age", max_age])
        .env_remove("XDT_INTERFACE")
        .output()
        .expect("run xdt-agent --check-heartbeat")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(xdt_testkit::unique_name("xdt-heartbeat-"));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    now.tv_sec().cast_unsigned() * 1_000_000_000 + now.tv_nsec().cast_unsigned()
}

/// The check of `file` with the usual max age fails (exit status 1) saying `why`.
fn unhealthy(file: &Path, why: &str) {
    let out = check(file, MAX_AGE);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(why), "{}", text(&out));
}

#[test]
fn the_check_names_what_is_wrong_with_a_heartbeat() {
    let scratch = Scratch::new();
    let file = scratch.0.join("heartbeat");

    unhealthy(&file, "no heartbeat file");

    std::fs::write(&file, "yesterday\n").expect("write");
    unhealthy(&file, "does not hold a time");

    std::fs::write(&file, format!("{}\n", monotonic_ns() + 3_600_000_000_000)).expect("write");
    unhealthy(&file, "ahead of");

    std::fs::write(&file, format!("{}\n", monotonic_ns() - 6_000_000_000)).expect("write");
    unhealthy(&file, "more than 5s");
    let out = check(&file, "10");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).starts_with("healthy: heartbeat 6."),
        "{}",
        text(&out)
    );

    // A file of a megabyte is read no further than a number can be long.
    std::fs::write(&file, vec![b'1'; 1 << 20]).expect("write");
    unhealthy(&file, "does not hold a time");

    let out = check(&file, "0");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--max-age must be"), "{}", text(&out));
}

/// The probe on a veth end in a namespace of its own, detached on drop.
struct Lab {
    node: Netns,
    iface: String,
    _client: Netns,
}

impl Lab {
    fn new(scratch: &Path) -> Self {
        let node = Netns::new("xhbn");
        let client = Netns::new("xhbc");
        let iface = xdt_testkit::unique_name("hb");
        quiet_veth(&client, "eth0", &node, &iface, 1);
        std::fs::write(scratch.join("rules"), "udp proto udp\n").expect("rules");
        let out = node
            .command(sibling("xdt").to_str().expect("path"))
            .args(["attach", "-i", &iface, "--rules"])
            .arg(scratch.join("rules"))
            .output()
            .expect("xdt attach");
        assert!(out.status.success(), "attach: {}", text(&out));
        Self {
            node,
            iface,
            _client: client,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self
            .node
            .command(sibling("xdt").to_str().expect("path"))
            .args(["detach", "-i", &self.iface])
            .output();
    }
}

#[test]
fn a_hung_main_loop_stops_the_heartbeat_within_the_max_age() {
    if !root_or_skip("a_hung_main_loop_stops_the_heartbeat_within_the_max_age") {
        return;
    }
    let scratch = Scratch::new();
    let lab = Lab::new(&scratch.0);
    let file = scratch.0.join("heartbeat");
    // Left by an earlier agent: the new one must not be vouched for by it.
    std::fs::write(&file, format!("{}\n", monotonic_ns())).expect("stale heartbeat");
    std::fs::write(scratch.0.join("token"), "heartbeat-token\n").expect("token");
    let log = scratch.0.join("agent.log");
    // No central listens: the agent keeps reconnecting, and its main loop runs all the same.
    let agent = Process::start(
        lab.node
            .command(AGENT)
            .args(["--interface", &lab.iface, "--no-steer"])
            .args(["--central", "127.0.0.1:9"])
            .arg("--token-file")
            .arg(scratch.0.join("token"))
            .arg("--heartbeat")
            .arg(&file)
            .env("XDT_TEST_FAULTS", "hang-on-sigusr2")
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Healthy within a few seconds of the start, and for a while after (beats keep coming).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(&file, MAX_AGE).status.success() {
        assert!(
            Instant::now() < deadline,
            "never healthy: {}\nagent: {}",
            text(&check(&file, MAX_AGE)),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(2));
        let out = check(&file, "3.5");
        assert!(
            out.status.success(),
            "{}\nagent: {}",
            text(&out),
            log_text()
        );
    }

    let pid = nix::unistd::Pid::from_raw(agent.id().cast_signed());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).expect("SIGUSR2");
    let hung = Instant::now();
    // The last beat came before the hang: a check that starts more than the max age later must
    // fail, however slowly it then runs (half a second for the signal's way to the loop).
    let bound =
        Duration::from_secs_f64(MAX_AGE.parse().expect("seconds")) + Duration::from_millis(500);
    let (took, out) = loop {
        let started = hung.elapsed();
        let out = check(&file, MAX_AGE);
        if !out.status.success() {
            break (started, out);
        }
        assert!(
            started <= bound,
            "a check started {started:?} after the hang still passed: {}\nagent: {}",
            text(&out),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    say(&format!(
        "unhealthy in a check started {took:.1?} after the main loop hung"
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("more than 5s"), "{}", text(&out));
    assert!(
        log_text().contains("test fault: the main loop hangs"),
        "{}",
        log_text()
    );
    // The writer thread is still there; nothing beats for it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!check(&file, MAX_AGE).status.success());
    drop(agent);
}
