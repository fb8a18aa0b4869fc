//! The real `xdt-agent` against a central that stops reading, as root: the probe attached in a
//! node namespace samples every frame a client namespace sends, and a "central" in the node
//! namespace does the handshake and then never reads again (a frozen process: its socket
//! buffers fill, and the agent's writes can no longer proceed). The agent must still stop
//! within its 5 s flush on SIGTERM and say what it could not deliver, and left alone it must
//! give the connection up and connect again.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use xdt_testkit::{
    frames::{ETH_P_IP, UDP, ethernet, ipv4, udp},
    lab::{self, Lab, Side},
    process::Process,
    root_or_skip,
};
use xdt_wire::{Hello, Message, Preamble, Welcome, frame};

const AGENT: &str = env!("CARGO_BIN_EXE_xdt-agent");
const RULES: &str = "all proto udp action sample 1\n";

/// Client and node namespaces, the probe on the node's end sampling every UDP frame, the
/// agent's token in the lab's directory.
fn frozen_lab() -> Lab {
    let mut lab = lab::lab(
        Side::unique("xfc", "fc"),
        Side::unique("xfn", "fn"),
        1,
        "xdt-frozen-",
    );
    // Loopback's 64 KiB MTU lets TCP grow the agent's send buffer past a megabyte; at an
    // Ethernet MTU it stays small, and a central that stops reading stops the agent's writes
    // after a few batches.
    lab.node
        .ip(&["link", "set", "lo", "mtu", "1500"])
        .expect("ip link set lo mtu");
    lab::attach(&mut lab, "native", RULES);
    lab.file("token", "frozen-token\n").expect("token");
    lab
}

/// The agent in the node namespace, its stderr in `log`.
fn agent(lab: &Lab, central: u16, log: &std::path::Path) -> Process {
    Process::start(
        lab.node
            .command(AGENT)
            .args(["--interface", &lab.node_if, "--agent-id", "frozen-test"])
            .args(["--interval", "0.05", "--no-steer"])
            .args(["--central", &format!("127.0.0.1:{central}")])
            .arg("--token-file")
            .arg(lab.dir.join("token"))
            .stderr(std::fs::File::create(log).expect("log file")),
    )
}

/// `count` sampled UDP frames from the client.
fn send(lab: &Lab, count: usize) {
    let frame = ethernet(
        ETH_P_IP,
        &ipv4([10, 88, 0, 9], [10, 88, 0, 5], UDP, &udp(5353, 9999, b"x")),
    );
    lab::send_frames(lab, &[(frame, count)]);
}

/// A listener in the node namespace with a small receive buffer (inherited by what it
/// accepts), so a central that stops reading stops the agent's writes after little data.
fn listener(lab: &Lab) -> (TcpListener, u16) {
    lab.node
        .enter(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::RcvBuf, &4096)
                .expect("SO_RCVBUF");
            let port = listener.local_addr().expect("addr").port();
            (listener, port)
        })
        .expect("node namespace")
}

fn read_frame(stream: &mut TcpStream) -> Message {
    let mut header = [0; 4];
    stream.read_exact(&mut header).expect("frame header");
    let mut payload = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut payload).expect("frame payload");
    frame::decode(&payload).expect("a message")
}

/// Accepts one agent, exchanges preambles, takes its Hello and welcomes it; from then on the
/// connection is read no more. Returns the connection (to keep it open) and the Hello's
/// instance.
fn accept_and_freeze(listener: &TcpListener) -> (TcpStream, u64) {
    let (stream, hello) = welcome(listener, "frozen");
    (stream, hello.instance)
}

/// Accepts one agent, exchanges preambles, takes its Hello and welcomes it as central
/// `version` holding nothing of it.
fn welcome(listener: &TcpListener, version: &str) -> (TcpStream, Hello) {
    let (mut stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut preamble = [0; Preamble::LEN];
    stream.read_exact(&mut preamble).expect("agent preamble");
    stream
        .write_all(&Preamble::ours().encode())
        .expect("preamble");
    let Message::Hello(hello) = read_frame(&mut stream) else {
        panic!("no Hello");
    };
    let mut out = Vec::new();
    frame::encode(
        &Message::Welcome(Welcome {
            central_version: version.into(),
            last_sequence: 0,
        }),
        &mut out,
    )
    .expect("encode");
    stream.write_all(&out).expect("welcome");
    (stream, hello)
}

/// Accepts connections on a thread until the test ends; each accepted agent's instance is
/// sent on the channel as it connects.
fn frozen_central(listener: TcpListener) -> mpsc::Receiver<(u64, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        loop {
            let (stream, instance) = accept_and_freeze(&listener);
            kept.push(stream);
            if tx.send((instance, Instant::now())).is_err() {
                return;
            }
        }
    });
    rx
}

fn sigterm(process: &Process) {
    let pid = nix::unistd::Pid::from_raw(process.id().cast_signed());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
}

#[test]
fn sigterm_stops_the_agent_within_its_flush_when_central_stopped_reading() {
    if !root_or_skip("sigterm_stops_the_agent_within_its_flush_when_central_stopped_reading") {
        return;
    }
    let lab = frozen_lab();
    let (listener, port) = listener(&lab);
    let connected = frozen_central(listener);
    let log = lab.dir.join("agent.log");
    let mut agent = agent(&lab, port, &log);
    connected
        .recv_timeout(Duration::from_secs(15))
        .expect("the agent connects");
    // About 2.4 MB of events: far more than the frozen connection's buffers take.
    send(&lab, 40_000);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(agent.0.try_wait(), Ok(None)),
        "the agent died: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let stopping = Instant::now();
    sigterm(&agent);
    let bound = Duration::from_secs(5) + Duration::from_millis(1500);
    let status = loop {
        if let Some(status) = agent.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "the agent still runs {:?} after SIGTERM: {}",
            stopping.elapsed(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        took <= bound,
        "stopped {took:?} after SIGTERM, over {bound:?}: {log}"
    );
    assert!(status.success(), "{status}: {log}");
    let lost = log
        .lines()
        .find(|l| l.contains("central did not acknowledge"))
        .unwrap_or_else(|| panic!("no count of what was not delivered: {log}"));
    assert!(
        lost.contains("sampled or steered events") && lost.contains("in them are lost"),
        "{lost}"
    );
    xdt_testkit::say(&format!(
        "sigterm_stops_the_agent_within_its_flush_when_central_stopped_reading: stopped after {took:?}; {lost}"
    ));
}

#[test]
fn a_central_that_stopped_reading_is_left_for_a_new_connection() {
    if !root_or_skip("a_central_that_stopped_reading_is_left_for_a_new_connection") {
        return;
    }
    let lab = frozen_lab();
    let (listener, port) = listener(&lab);
    let connected = frozen_central(listener);
    let log = lab.dir.join("agent.log");
    let _agent = agent(&lab, port, &log);
    let (instance, first) = connected
        .recv_timeout(Duration::from_secs(15))
        .expect("the agent connects");
    send(&lab, 40_000);
    let (again, second) = connected
        .recv_timeout(Duration::from_secs(40))
        .unwrap_or_else(|_| {
            panic!(
                "no new connection within 40 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert_eq!(again, instance, "the same agent process");
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("timed out") || log.contains("took no data"),
        "{log}"
    );
    xdt_testkit::say(&format!(
        "a_central_that_stopped_reading_is_left_for_a_new_connection: reconnected {:?} after the first connection",
        second - first
    ));
}

/// Accepts one agent and acknowledges every batch it sends for `serve`; returns the batches.
fn accept_and_acknowledge(listener: &TcpListener, serve: Duration) -> Vec<xdt_wire::Batch> {
    let (mut stream, _) = welcome(listener, "acking");
    let mut out = Vec::new();
    let until = Instant::now() + serve;
    let mut batches = Vec::new();
    while Instant::now() < until {
        let Message::Batch(batch) = read_frame(&mut stream) else {
            panic!("not a Batch");
        };
        out.clear();
        frame::encode(
            &Message::Ack(xdt_wire::Ack {
                sequence: batch.sequence,
            }),
            &mut out,
        )
        .expect("encode");
        stream.write_all(&out).expect("ack");
        batches.push(batch);
    }
    batches
}

/// An agent killed while central had acknowledged none of its events: the next agent of the
/// interface counts every one of them in `dropped_events` (from the probe's `XDT_AGENT`
/// ledger). Before, they were lost with every loss counter at 0.
#[test]
fn events_a_killed_agent_held_are_counted_by_the_next() {
    if !root_or_skip("events_a_killed_agent_held_are_counted_by_the_next") {
        return;
    }
    let lab = frozen_lab();
    let (frozen, port) = listener(&lab);
    let connected = frozen_central(frozen);
    let log = lab.dir.join("killed.log");
    let killed = agent(&lab, port, &log);
    connected
        .recv_timeout(Duration::from_secs(15))
        .expect("the agent connects");
    send(&lab, 3000);
    std::thread::sleep(Duration::from_secs(2));
    drop(killed); // SIGKILL

    let (acking, port) = listener(&lab);
    let log = lab.dir.join("next.log");
    let _next = agent(&lab, port, &log);
    let batches = accept_and_acknowledge(&acking, Duration::from_secs(2));
    let last = batches.last().expect("batches");
    let counter = |name: &str| {
        last.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("no counter {name}"), |(_, v)| *v)
    };
    let (sampled, lost_in_ring) = (counter("sampled_events"), counter("lost_events"));
    let delivered: u64 = batches.iter().map(|b| b.events.len() as u64).sum();
    let held_by_the_killed = sampled - lost_in_ring - delivered;
    assert!(held_by_the_killed > 0, "the killed agent held nothing");
    assert_eq!(
        last.agent.dropped_events,
        held_by_the_killed,
        "sampled {sampled}, lost in the ring {lost_in_ring}, delivered by the next agent {delivered}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains(&format!("ended holding {held_by_the_killed} events")),
        "{log}"
    );
    xdt_testkit::say(&format!(
        "events_a_killed_agent_held_are_counted_by_the_next: {held_by_the_killed} of {sampled} sampled events were held by the killed agent, counted by the next"
    ));
}
