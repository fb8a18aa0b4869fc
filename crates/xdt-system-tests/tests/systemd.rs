//! The daemons' side of systemd, as root, without systemd: `xdt-central` and `xdt-agent` are
//! started from config files with `NOTIFY_SOCKET` and `WATCHDOG_USEC` pointing at a datagram
//! socket of the test, which reads what they send (sd_notify(3)): READY=1 once listening or
//! attached, STATUS= lines, WATCHDOG=1 within the period, RELOADING=1 and READY=1 around a
//! SIGHUP that re-reads the config file (without dropping the agent's connection), a refused
//! bad file, STOPPING=1 at SIGTERM. The VM test (vm-tests/) runs the same under real systemd.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use xdt_testkit::{
    process::{Process, free_port, sibling},
    root_or_skip,
};

/// The test's end of a daemon's `NOTIFY_SOCKET`, drained by a thread as systemd would (a
/// datagram socket whose queue fills up blocks the sender).
struct Notifications {
    received: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if sender.send(message).is_err() {
                    return;
                }
            }
        });
        Self {
            received,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a message with a line satisfying `pick`; returns that line.
    fn expect(&mut self, what: &str, within: Duration, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(message) = self.received.recv_timeout(left) else {
                break;
            };
            self.seen.push(message.clone());
            if let Some(line) = message.lines().find(|l| pick(l)) {
                return line.to_owned();
            }
        }
        panic!("no {what} within {within:?}; received: {:#?}", self.seen);
    }
}

fn with_notify<'a>(command: &'a mut Command, socket: &Path, watchdog: Duration) -> &'a mut Command {
    command
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
}

/// The agent's node in /metrics.json of the central at `http` in the lab's node namespace.
fn node(lab: &Lab, http: u16) -> Option<Value> {
    let text = xdt_testkit::lab::get(lab, http, "/metrics.json")?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["agent_id"] == "notify-node")
        .cloned()
}

fn node_when(lab: &Lab, http: u16, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    xdt_testkit::http::central_node_when(
        || xdt_testkit::lab::get(lab, http, "/metrics.json"),
        "notify-node",
        what,
        Duration::from_secs(20),
        pick,
    )
}

fn signal(process: &Process, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(process.id().cast_signed());
    nix::sys::signal::kill(pid, signal).expect("signal");
}

#[test]
fn daemons_notify_systemd_and_reload_their_config_files() {
    if !root_or_skip("daemons_notify_systemd_and_reload_their_config_files") {
        return;
    }
    let lab = Lab::new();
    let _attached = lab.attach("native", "dns proto udp dport 53\n");
    let token = lab.file("token", "notify-token\n");
    let (http, telemetry) = (free_port(), free_port());
    let watchdog = Duration::from_secs(2);

    // Central, configured by its file only.
    let central_conf = lab.file(
        "central.conf",
        &format!(
            "# central\nXDT_TELEMETRY_LISTEN=127.0.0.1:{telemetry}\nXDT_HTTP_LISTEN=\"127.0.0.1:{http}\"\nXDT_TOKEN_FILE={token}\n"
        ),
    );
    let central_socket = lab.dir.join("central.notify");
    let mut central_notes = Notifications::bind(&central_socket);
    let central = Process::start(with_notify(
        lab.node
            .command(sibling("xdt-central"))
            .args(["--config", &central_conf]),
        &central_socket,
        watchdog,
    ));
    central_notes.expect("central's READY=1", Duration::from_secs(15), |l| {
        l == "READY=1"
    });
    let status = central_notes.expect("central's status", Duration::from_secs(1), |l| {
        l.starts_with("STATUS=")
    });
    assert!(
        status.contains(&format!("dashboard on http://127.0.0.1:{http}/")),
        "{status}"
    );
    assert!(xdt_testkit::lab::get(&lab, http, "/healthz").is_some());
    central_notes.expect("central's WATCHDOG=1", watchdog, |l| l == "WATCHDOG=1");

    // The agent, from its file; the command line adds the interface.
    let agent_conf = |interval: &str, extra: &str| {
        lab.file(
            "agent.conf",
            &format!(
                "XDT_CENTRAL=127.0.0.1:{telemetry}\nXDT_TOKEN_FILE={token}\nXDT_AGENT_ID=notify-node\nXDT_INTERVAL={interval}\nXDT_NO_STEER=true\n{extra}"
            ),
        )
    };
    let conf = agent_conf("0.2", "");
    let agent_socket = lab.dir.join("agent.notify");
    let mut agent_notes = Notifications::bind(&agent_socket);
    let agent = Process::start(with_notify(
        lab.node
            .command(sibling("xdt-agent"))
            .args(["--config", &conf])
            .args(["--interface", &lab.node_if]),
        &agent_socket,
        watchdog,
    ));
    agent_notes.expect("the agent's READY=1", Duration::from_secs(15), |l| {
        l == "READY=1"
    });
    agent_notes.expect("the agent's WATCHDOG=1", watchdog, |l| l == "WATCHDOG=1");
    let connected = format!("central 127.0.0.1:{telemetry} connected");
    let status = agent_notes.expect("a connected status", Duration::from_secs(10), |l| {
        l.starts_with("STATUS=") && l.contains(&connected)
    });
    assert!(status.contains(&lab.node_if), "{status}");
    let threads = xdt_testkit::process::thread_capabilities(agent.id());
    assert!(
        threads.iter().all(|&(_, eff, prm)| eff == 0 && prm == 0),
        "capabilities left (tid, CapEff, CapPrm): {threads:x?}"
    );

    // SIGHUP with a longer interval: applied in place, the connection stays.
    let before = node_when(&lab, http, "batches", |n| {
        n["last_sequence"].as_u64() > Some(5)
    });
    agent_conf("1.5", "XDT_LOG_LEVEL=debug\n");
    signal(&agent, nix::sys::signal::Signal::SIGHUP);
    agent_notes.expect("RELOADING=1", Duration::from_secs(5), |l| {
        l == "RELOADING=1"
    });
    agent_notes.expect("READY=1 after the reload", Duration::from_secs(5), |l| {
        l == "READY=1"
    });
    let start = node(&lab, http).expect("node")["last_sequence"]
        .as_u64()
        .expect("sequence");
    std::thread::sleep(Duration::from_secs(3));
    let after = node(&lab, http).expect("node");
    let batches = after["last_sequence"].as_u64().expect("sequence") - start;
    assert!(
        (1..=3).contains(&batches),
        "{batches} batches in 3 s at a 1.5 s interval"
    );
    assert_eq!(after["connected"], true);
    assert_eq!(
        after["connected_since_unix"], before["connected_since_unix"],
        "the reload reconnected"
    );
    assert_eq!(after["agent"]["reconnects"], before["agent"]["reconnects"]);

    // A bad file is refused whole: the agent keeps running at 1.5 s.
    agent_conf("0.2", "XDT_BOGUS=1\n");
    signal(&agent, nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let start = node(&lab, http).expect("node")["last_sequence"]
        .as_u64()
        .expect("sequence");
    std::thread::sleep(Duration::from_secs(3));
    let batches = node(&lab, http).expect("node")["last_sequence"]
        .as_u64()
        .expect("sequence")
        - start;
    assert!(
        (1..=3).contains(&batches),
        "a refused file changed the interval: {batches} batches in 3 s"
    );

    // Central reloads too, and both say STOPPING=1 at SIGTERM.
    signal(&central, nix::sys::signal::Signal::SIGHUP);
    central_notes.expect("central's RELOADING=1", Duration::from_secs(5), |l| {
        l == "RELOADING=1"
    });
    central_notes.expect(
        "central's READY=1 after the reload",
        Duration::from_secs(5),
        |l| l == "READY=1",
    );
    agent.stop();
    agent_notes.expect("the agent's STOPPING=1", Duration::from_secs(1), |l| {
        l == "STOPPING=1"
    });
    central.stop();
    central_notes.expect("central's STOPPING=1", Duration::from_secs(1), |l| {
        l == "STOPPING=1"
    });
}
