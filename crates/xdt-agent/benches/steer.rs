//! AF_XDP steering and re-injection against the plain kernel path, in one run. As root, after
//! `cargo build --release --workspace`: `cargo bench -p xdt-agent --bench steer`
//! (docs/benchmarks.md).
//!
//! Two labs, one after the other, with the same topology: a client namespace and a node
//! namespace joined by a one-queue veth pair, the probe attached natively to the node's end with
//! two rules (UDP to the sink port, UDP to the echo ports), the release `xdt-central` and
//! `xdt-agent` in the node namespace. In the kernel lab the rules `count` and the agent runs
//! with `--no-steer`; in the steering lab they `steer`, so each such frame goes to the agent's
//! AF_XDP socket, is inspected, and comes back into the node's stack through the re-entry pair.
//!
//! Per lab, for each payload size: a UDP blast (sendmmsg) of fixed-size datagrams into a sink
//! that counts what it receives (recvmmsg, 64 MiB receive buffer), 1 s warm-up then a 5 s
//! window; the losses of each stage (probe, AF_XDP rings, re-injection, UDP socket) over the
//! whole phase; the agent's CPU time over the window. The steering lab then sends each payload
//! size again at 80% of the rate the kernel path delivered, where nothing may be lost. Then UDP
//! ping-pong to an echo server, one round trip outstanding at a time (only client -> node is
//! steered).
//!
//! Placement on the 2 cores: the sender and the ping client on CPU 0, so the veth's receive
//! softirq and the probe run there too; the sink on CPU 1; one echo server on each CPU; the
//! agent and central where the scheduler puts them, as deployed. `XDT_BENCH_AGENT_ARGS` adds
//! flags to the agent, for experiments.
#![expect(
    clippy::cast_precision_loss,
    reason = "rates, shares and percentiles for a report"
)]

use std::{
    collections::HashMap,
    net::UdpSocket,
    os::fd::AsRawFd,
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdt_testkit::{
    lab::{self, Central, Side},
    net::FrameSender,
    process::sibling,
};

/// UDP payload sizes of the throughput phase.
const PAYLOADS: [usize; 2] = [64, 1400];
const WARM_UP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
const ROUND_TRIPS: usize = 20_000;
const ROUND_TRIPS_WARM_UP: usize = 1_000;
/// Datagrams per sendmmsg / recvmmsg.
const BATCH: usize = 64;
/// The share of the kernel path's delivered rate the paced steering phases offer.
const PACED_SHARE: f64 = 0.8;
const SINK_BUFFER: i32 = 64 << 20;
/// The sink's pause when its socket is empty (64 MiB hold far more than this much traffic).
const SINK_NAP: Duration = Duration::from_micros(200);
const CLIENT: &str = "10.91.0.1";
const NODE: &str = "10.91.0.2";
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
/// The echo servers: where each runs relative to the ping client (CPU 0), its port and CPU.
/// On the other CPU every round trip needs a cross-CPU wake-up each way, which costs tens of
/// microseconds in this VM; on the same CPU the kernel path needs none, while the steering path
/// needs them whenever the agent's thread runs on the other CPU.
const ECHOES: [(&str, u16, usize); 2] =
    [("other CPU", ECHO_PORT, 1), ("same CPU", ECHO_PORT + 1, 0)];
const AGENT: &str = "bench-node";
const TICKS_PER_SECOND: f64 = 100.0; // USER_HZ on Linux

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Kernel,
    Steer,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Steer => "steer",
        }
    }
}

/// Client and node namespaces, the probe, central and the agent.
struct BenchLab {
    path: Path,
    agent: u32,
    central: Central,
    lab: lab::Lab,
}

impl std::ops::Deref for BenchLab {
    type Target = lab::Lab;
    fn deref(&self) -> &lab::Lab {
        &self.lab
    }
}

impl BenchLab {
    fn new(path: Path) -> Self {
        let mut lab = lab::lab(
            Side::unique("xbsc", "bsc").v4(&format!("{CLIENT}/24")),
            Side::unique("xbsn", "bsn").v4(&format!("{NODE}/24")),
            1,
            "xdt-steer-bench-",
        );
        let action = match path {
            Path::Kernel => "count",
            Path::Steer => "steer",
        };
        lab::attach(
            &mut lab,
            "native",
            &format!(
                "sink proto udp dport {SINK_PORT} action {action}\n\
                 echo proto udp dport {ECHO_PORT}-{} action {action}\n",
                ECHO_PORT + 1
            ),
        );
        let central = lab::start_central(&mut lab, &[]);
        let mut agent = lab.node.command(sibling("xdt-agent"));
        agent
            .args(["--interface", &lab.node_if, "--agent-id", AGENT])
            .args(central.agent_args());
        if path == Path::Kernel {
            agent.arg("--no-steer");
        }
        if let Ok(extra) = std::env::var("XDT_BENCH_AGENT_ARGS") {
            agent.args(extra.split_whitespace());
        }
        let agent = lab
            .processes
            .spawn("xdt-agent", agent.stdout(Stdio::null()))
            .expect("start xdt-agent");
        let lab = Self {
            path,
            agent,
            central,
            lab,
        };
        lab.agent_node("agent connected", |n| {
            n["connected"] == true
                && (path == Path::Kernel || n["agent"]["steering"]["sockets"] == 1)
        });
        lab
    }

    /// The agent's node in central's /metrics.json once `pick` holds (fails after 20 s).
    fn agent_node(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        self.central.node_when(&self.lab, AGENT, what, pick)
    }

    /// `xdt stats --json` of the node's interface.
    fn probe(&self) -> Value {
        lab::stats(&self.lab)
    }

    /// Every counter of the settled lab: probe, agent (through central), both stacks' SNMP.
    fn snapshot(&self) -> Snapshot {
        let mut counters = HashMap::new();
        let probe = self.probe();
        for name in ["steered_packets", "steer_fallback_packets"] {
            counters.insert(name.to_owned(), number(&probe[name]));
        }
        let sink = probe["labels"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["label"] == "sink"))
            .map_or(0, |l| number(&l["packets"]));
        counters.insert("probe_sink_packets".to_owned(), sink);
        let node = self.agent_node("agent stats", |_| true);
        for name in STEERING {
            counters.insert(
                (*name).to_owned(),
                node["agent"]["steering"][name].as_u64().unwrap_or(0),
            );
        }
        counters.insert(
            "dropped_events".to_owned(),
            number(&node["agent"]["dropped_events"]),
        );
        for (side, ns) in [("node", &self.node), ("client", &self.client)] {
            for (name, value) in nstat(ns) {
                counters.insert(format!("{side}.{name}"), value);
            }
        }
        Snapshot(counters)
    }

    /// Waits until the agent's last figures have reached central: its steering counters
    /// unchanged over 1.5 s (the agent reports once a second).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let node = self.agent_node("agent stats", |_| true);
            let now = Some(node["agent"]["steering"].clone());
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= Duration::from_millis(1500) {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("steer bench: the agent's figures did not settle within 20 s");
                return;
            }
        }
    }
}

/// The agent's steering counters in /metrics.json.
const STEERING: &[&str] = &[
    "received_packets",
    "reinjected_packets",
    "reinject_dropped",
    "rx_dropped",
    "rx_ring_full",
    "rx_fill_ring_empty",
    "tx_invalid_descs",
];

fn number(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a counter: {v}"))
}

/// Absolute UDP counters of a namespace (`nstat -asz`, history left alone).
fn nstat(ns: &xdt_lab::Netns) -> HashMap<String, u64> {
    let out = ns
        .command("nstat")
        .args(["-asz", "Udp*"])
        .output()
        .expect("nstat");
    assert!(out.status.success(), "nstat failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

#[derive(Debug)]
struct Snapshot(HashMap<String, u64>);

impl Snapshot {
    fn delta(&self, before: &Self, name: &str) -> u64 {
        let get = |s: &Self| s.0.get(name).copied().unwrap_or(0);
        get(self).saturating_sub(get(before))
    }
}

/// What the sink and the echo server run until `stop`.
#[derive(Debug, Default)]
struct Servers {
    stop: AtomicBool,
    ready: AtomicU32,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Sets `stop` on drop, so that a panic does not leave the servers' threads running.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn set_option(socket: &UdpSocket, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt with a pointer to an int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert!(
        rc == 0,
        "setsockopt {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}

fn get_option(socket: &UdpSocket, level: i32, name: i32) -> i32 {
    let mut value = 0i32;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt into an int with its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    assert!(rc == 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

/// Counts the datagrams and payload bytes that reach `NODE:SINK_PORT`, on CPU 1 (in the node
/// namespace).
///
/// It never sleeps in the socket: it drains it without blocking and naps `SINK_NAP` when it is
/// empty. A sink blocked in recvmmsg is woken for nearly every datagram, and in this VM the
/// cross-CPU wake-up costs the delivering CPU more than the datagram's whole receive path.
fn sink(servers: &Servers) {
    FrameSender::pin_to_cpu(1);
    let socket = UdpSocket::bind((NODE, SINK_PORT)).expect("bind sink");
    set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SINK_BUFFER);
    assert!(get_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF) >= SINK_BUFFER);
    let mut buffers = vec![[0u8; 2048]; BATCH];
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; zero is a valid initial value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    servers.ready.fetch_add(1, Ordering::Relaxed);
    while !servers.stop.load(Ordering::Relaxed) {
        // SAFETY: `messages` holds BATCH headers, each pointing at its own live buffer.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            let n = n.unsigned_abs() as usize;
            let bytes: u64 = messages[..n].iter().map(|m| u64::from(m.msg_len)).sum();
            servers.packets.fetch_add(n as u64, Ordering::Relaxed);
            servers.bytes.fetch_add(bytes, Ordering::Relaxed);
            continue;
        }
        let e = std::io::Error::last_os_error();
        assert!(
            matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)),
            "recvmmsg: {e}"
        );
        std::thread::sleep(SINK_NAP);
    }
}

/// Sends every datagram to `port` back to where it came from, from `cpu` (in the node
/// namespace).
fn echo(servers: &Servers, port: u16, cpu: usize) {
    FrameSender::pin_to_cpu(cpu);
    let socket = UdpSocket::bind((NODE, port)).expect("bind echo");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buffer = [0u8; 2048];
    servers.ready.fetch_add(1, Ordering::Relaxed);
    while !servers.stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(&buffer[..n], from);
        }
    }
}

/// Sends `payload`-byte datagrams to the sink from CPU 0 until `done`: as fast as the path takes
/// them, or at `pace` datagrams per second (in bursts of `BATCH`); counts the datagrams the
/// kernel accepted in `sent` (in the client namespace).
fn blast(payload: usize, pace: Option<f64>, done: &AtomicBool, sent: &AtomicU64) {
    FrameSender::pin_to_cpu(0);
    let socket = UdpSocket::bind((CLIENT, 0)).expect("bind sender");
    socket.connect((NODE, SINK_PORT)).expect("connect");
    socket
        .set_write_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let data = vec![0xa5u8; payload];
    let mut iovec = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: mmsghdr is plain data; zero is a valid initial value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &raw mut iovec;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) {
        if let Some(pps) = pace {
            // Ahead of the pace: wait until the datagrams sent so far are due.
            let due = Duration::from_secs_f64(sent.load(Ordering::Relaxed) as f64 / pps);
            if let Some(early) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(early);
                continue;
            }
        }
        // SAFETY: `messages` holds BATCH headers that all point at `iovec`, which points at
        // `data`; the kernel only reads them.
        let n =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(u64::from(n.unsigned_abs()), Ordering::Relaxed);
            continue;
        }
        let e = std::io::Error::last_os_error();
        // A full socket buffer (timeout), a full device queue, or an ICMP error of an earlier
        // datagram: try again.
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ECONNREFUSED | libc::EINTR)
            ),
            "sendmmsg: {e}"
        );
    }
}

/// CPU time (utime + stime, clock ticks) of a process or thread from its `stat` file.
fn ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

/// The agent's steering thread (`xdt-steer`), if it has one.
fn steer_thread(agent: u32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{agent}/task"))
        .ok()?
        .filter_map(Result::ok)
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "xdt-steer"))
        .map(|t| t.join("stat").display().to_string())
}

/// Busy and softirq time of one core, and all its time, in ticks.
#[derive(Clone, Copy, Debug, Default)]
struct CoreTimes {
    busy: u64,
    softirq: u64,
    total: u64,
}

/// Per core from /proc/stat (the `cpuN` lines).
fn cores() -> Vec<CoreTimes> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            // user nice system idle iowait irq softirq steal
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            CoreTimes {
                busy: total - idle,
                softirq: v.get(6).copied().unwrap_or(0),
                total,
            }
        })
        .collect()
}

/// CPU times at one moment.
#[derive(Clone, Debug)]
struct Cpu {
    agent: u64,
    steer_thread: u64,
    central: u64,
    cores: Vec<CoreTimes>,
}

impl Cpu {
    fn now(lab: &BenchLab, thread: Option<&str>) -> Self {
        Self {
            agent: ticks(&format!("/proc/{}/stat", lab.agent)),
            steer_thread: thread.map_or(0, ticks),
            central: ticks(&format!("/proc/{}/stat", lab.central.pid)),
            cores: cores(),
        }
    }
}

/// The throughput of one payload size on one path.
#[derive(Debug)]
struct Throughput {
    path: Path,
    payload: usize,
    /// The sender's pace (datagrams/s), or `None` for as fast as the path takes them.
    pace: Option<f64>,
    offered_pps: f64,
    delivered_pps: f64,
    delivered_mbps: f64,
    /// Percent of one core, over the window.
    agent_cpu: f64,
    steer_thread_cpu: f64,
    central_cpu: f64,
    /// Per core: busy and softirq percent over the window.
    cores: Vec<(f64, f64)>,
    /// Counts over the whole phase (warm-up, window, drain).
    sent: u64,
    received: u64,
    before: Snapshot,
    after: Snapshot,
}

impl Throughput {
    /// How the sender sent: as fast as the path took it, or its pace.
    fn sender(&self) -> String {
        self.pace.map_or_else(
            || "max".to_owned(),
            |pps| format!("{pps:.0} pps ({:.0}% of kernel)", PACED_SHARE * 100.0),
        )
    }
}

fn throughput(lab: &BenchLab, servers: &Servers, payload: usize, pace: Option<f64>) -> Throughput {
    let before = lab.snapshot();
    let received_before = servers.packets.load(Ordering::Relaxed);
    let sent = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let thread = steer_thread(lab.agent);
    let (window, counts, cpu) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&done);
        let (done, sent) = (&done, &sent);
        s.spawn(move || {
            lab.client
                .enter(|| blast(payload, pace, done, sent))
                .expect("client namespace");
        });
        std::thread::sleep(WARM_UP);
        eprintln!(
            "steer bench: {} {payload} B{}: window starts (agent pid {})",
            lab.path.name(),
            pace.map_or_else(String::new, |pps| format!(" at {pps:.0} pps")),
            lab.agent
        );
        let start = (
            Instant::now(),
            sent.load(Ordering::Relaxed),
            servers.packets.load(Ordering::Relaxed),
            servers.bytes.load(Ordering::Relaxed),
            Cpu::now(lab, thread.as_deref()),
        );
        std::thread::sleep(WINDOW);
        let end = (
            Instant::now(),
            sent.load(Ordering::Relaxed),
            servers.packets.load(Ordering::Relaxed),
            servers.bytes.load(Ordering::Relaxed),
            Cpu::now(lab, thread.as_deref()),
        );
        (
            end.0 - start.0,
            (end.1 - start.1, end.2 - start.2, end.3 - start.3),
            (start.4, end.4),
        )
    });
    // Let the sink drain what is queued, then let the agent's figures reach central.
    let mut last = servers.packets.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = servers.packets.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    lab.settle();
    let after = lab.snapshot();
    let seconds = window.as_secs_f64();
    let (start, end) = cpu;
    let core_share =
        |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SECOND / seconds * 100.0;
    let cores = start
        .cores
        .iter()
        .zip(&end.cores)
        .map(|(a, b)| {
            let total = b.total.saturating_sub(a.total).max(1) as f64;
            (
                b.busy.saturating_sub(a.busy) as f64 / total * 100.0,
                b.softirq.saturating_sub(a.softirq) as f64 / total * 100.0,
            )
        })
        .collect();
    Throughput {
        path: lab.path,
        payload,
        pace,
        offered_pps: counts.0 as f64 / seconds,
        delivered_pps: counts.1 as f64 / seconds,
        delivered_mbps: counts.2 as f64 * 8.0 / seconds / 1e6,
        agent_cpu: core_share(start.agent, end.agent),
        steer_thread_cpu: core_share(start.steer_thread, end.steer_thread),
        central_cpu: core_share(start.central, end.central),
        cores,
        sent: sent.load(Ordering::Relaxed),
        received: servers.packets.load(Ordering::Relaxed) - received_before,
        before,
        after,
    }
}

/// Round-trip times of the ping-pong, in nanoseconds, sorted, and the number of lost rounds.
#[derive(Debug)]
struct Latency {
    path: Path,
    placement: &'static str,
    rtt_ns: Vec<u64>,
    lost: u32,
    steered: u64,
    /// The agent's CPU time over the ping-pong, in % of one core: what a spinning steering
    /// thread costs at one round trip at a time.
    agent_cpu: f64,
}

impl Latency {
    /// The quantile of `per_mille` / 1000 (nearest rank), in microseconds.
    fn us(&self, per_mille: usize) -> f64 {
        let n = self.rtt_ns.len();
        let rank = (n * per_mille).div_ceil(1000).clamp(1, n);
        self.rtt_ns[rank - 1] as f64 / 1000.0
    }
}

fn latency(lab: &BenchLab, placement: &'static str, port: u16) -> Latency {
    let before = number(&lab.probe()["steered_packets"]);
    let agent_stat = format!("/proc/{}/stat", lab.agent);
    let started = (Instant::now(), ticks(&agent_stat));
    let (rtt_ns, lost) = lab
        .client
        .enter(|| {
            FrameSender::pin_to_cpu(0);
            let socket = UdpSocket::bind((CLIENT, 0)).expect("bind ping");
            socket.connect((NODE, port)).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut rtt_ns = Vec::with_capacity(ROUND_TRIPS);
            let mut lost = 0u32;
            let mut message = [0u8; 64];
            let mut reply = [0u8; 64];
            let deadline = Instant::now() + Duration::from_mins(2);
            for i in 0..(ROUND_TRIPS_WARM_UP + ROUND_TRIPS) as u64 {
                assert!(Instant::now() < deadline, "ping-pong took over 120 s");
                message[..8].copy_from_slice(&i.to_ne_bytes());
                let sent = Instant::now();
                socket.send(&message).expect("send");
                let answered = loop {
                    match socket.recv(&mut reply) {
                        // A late answer to an earlier round: skip it.
                        Ok(n) if n >= 8 && reply[..8] != message[..8] => {}
                        Ok(_) => break true,
                        Err(_) => break false,
                    }
                };
                let rtt = sent.elapsed();
                if i < ROUND_TRIPS_WARM_UP as u64 {
                    continue;
                }
                if answered {
                    rtt_ns.push(rtt.as_nanos() as u64);
                } else {
                    lost += 1;
                }
            }
            rtt_ns.sort_unstable();
            (rtt_ns, lost)
        })
        .expect("client namespace");
    assert!(!rtt_ns.is_empty(), "no echo came back");
    Latency {
        path: lab.path,
        placement,
        rtt_ns,
        lost,
        agent_cpu: ticks(&agent_stat).saturating_sub(started.1) as f64
            / TICKS_PER_SECOND
            / started.0.elapsed().as_secs_f64()
            * 100.0,
        steered: number(&lab.probe()["steered_packets"]) - before,
    }
}

/// Measures one path: each payload as fast as the path takes it, then each of `paced` (payload,
/// datagrams/s), then the latencies.
fn measure(path: Path, paced: &[(usize, f64)]) -> (Vec<Throughput>, Vec<Latency>, String) {
    let lab = BenchLab::new(path);
    let servers = Servers::default();
    let (throughputs, latencies) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&servers.stop);
        let (lab, servers) = (&lab, &servers);
        s.spawn(move || lab.node.enter(|| sink(servers)).expect("node namespace"));
        for (_, port, cpu) in ECHOES {
            s.spawn(move || {
                lab.node
                    .enter(|| echo(servers, port, cpu))
                    .expect("node namespace");
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while servers.ready.load(Ordering::Relaxed) < 1 + ECHOES.len() as u32 {
            assert!(Instant::now() < deadline, "sink and echo did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let throughputs: Vec<Throughput> = PAYLOADS
            .iter()
            .map(|&payload| (payload, None))
            .chain(paced.iter().map(|&(payload, pps)| (payload, Some(pps))))
            .map(|(payload, pace)| throughput(lab, servers, payload, pace))
            .collect();
        let latencies = ECHOES
            .iter()
            .map(|&(placement, port, _)| latency(lab, placement, port))
            .collect();
        (throughputs, latencies)
    });
    let mode = lab.agent_node("steering mode", |_| true)["agent"]["steering"]["mode"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    (throughputs, latencies, mode)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("steer: needs root (namespaces, XDP, AF_XDP); run it with sudo");
        return;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let (kernel_tput, kernel_rtt, _) = measure(Path::Kernel, &[]);
    // The steering path again at this share of the kernel path's rate: what it must carry
    // without a loss.
    let paced: Vec<(usize, f64)> = kernel_tput
        .iter()
        .map(|k| (k.payload, k.delivered_pps * PACED_SHARE))
        .collect();
    let (steer_tput, steer_rtt, mode) = measure(Path::Steer, &paced);

    println!(
        "Linux {}, {}, {cores} cores. kernel: rules `count`, agent --no-steer; steer: rules \
         `steer`, AF_XDP {mode} mode. {}-s window after {}-s warm-up.\n",
        kernel.trim(),
        cpu_model(),
        WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    println!(
        "| path | payload B | sender | offered pps | delivered pps | delivered Mbit/s | delivered / offered | steer / kernel | agent CPU % (steer thread) | central CPU % | busy % (softirq %) per core |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in kernel_tput.iter().chain(&steer_tput) {
        let ratio = if t.path == Path::Steer && t.pace.is_none() {
            kernel_tput
                .iter()
                .find(|k| k.payload == t.payload)
                .map_or_else(String::new, |k| {
                    format!("{:.2}x", t.delivered_pps / k.delivered_pps)
                })
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {ratio} | {:.1} ({:.1}) | {:.1} | {} |",
            t.path.name(),
            t.payload,
            t.sender(),
            t.offered_pps,
            t.delivered_pps,
            t.delivered_mbps,
            t.delivered_pps / t.offered_pps,
            t.agent_cpu,
            t.steer_thread_cpu,
            t.central_cpu,
            t.cores
                .iter()
                .map(|(busy, softirq)| format!("{busy:.0} ({softirq:.0})"))
                .collect::<Vec<_>>()
                .join(" / "),
        );
    }

    println!(
        "\nWhere datagrams went over each whole phase (warm-up, window and drain):\n\n\
         | path | payload B | sender | sent | at probe | steered | fallback | agent received | rx_dropped | rx_ring_full | fill_ring_empty | reinject_dropped | reinjected | client UdpSndbufErrors | node UdpRcvbufErrors | node UdpInErrors | sink received | events dropped |"
    );
    println!(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for t in kernel_tput.iter().chain(&steer_tput) {
        let d = |name: &str| t.after.delta(&t.before, name);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.path.name(),
            t.payload,
            t.sender(),
            t.sent,
            d("probe_sink_packets"),
            d("steered_packets"),
            d("steer_fallback_packets"),
            d("received_packets"),
            d("rx_dropped"),
            d("rx_ring_full"),
            d("rx_fill_ring_empty"),
            d("reinject_dropped"),
            d("reinjected_packets"),
            d("client.UdpSndbufErrors"),
            d("node.UdpRcvbufErrors"),
            d("node.UdpInErrors"),
            t.received,
            d("dropped_events"),
        );
    }

    println!(
        "\nUDP ping-pong from CPU 0, {ROUND_TRIPS} round trips after {ROUND_TRIPS_WARM_UP}, one outstanding (us):\n\n\
         | echo server on | path | answered | lost | steered packets | agent CPU % | p50 | p90 | p99 | p99.9 | max |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (k, s) in kernel_rtt.iter().zip(&steer_rtt) {
        for l in [k, s] {
            println!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                l.placement,
                l.path.name(),
                l.rtt_ns.len(),
                l.lost,
                l.steered,
                l.agent_cpu,
                l.us(500),
                l.us(900),
                l.us(990),
                l.us(999),
                l.us(1000),
            );
        }
        println!(
            "| {} | added (steer - kernel) | | | | | {:.1} | {:.1} | {:.1} | {:.1} | |",
            k.placement,
            added(k, s, 500),
            added(k, s, 900),
            added(k, s, 990),
            added(k, s, 999)
        );
    }

    println!("\nTargets:");
    let verdict = |met: bool| if met { "met" } else { "missed" };
    for s in steer_tput.iter().filter(|s| s.pace.is_none()) {
        if let Some(k) = kernel_tput.iter().find(|k| k.payload == s.payload) {
            let ratio = s.delivered_pps / k.delivered_pps;
            println!(
                "- {} B: steer delivers {ratio:.2}x the kernel path's packets/s (target >= 1.0x): {}",
                s.payload,
                verdict(ratio >= 1.0)
            );
        }
    }
    for s in steer_tput.iter().filter(|s| s.pace.is_some()) {
        let d = |name: &str| s.after.delta(&s.before, name);
        let lost = s.sent.saturating_sub(s.received);
        let counted: u64 = LOSSES.iter().map(|name| d(name)).sum();
        let events = d("dropped_events");
        println!(
            "- {} B {}: {lost} of {} datagrams lost, {counted} counted by the stages; {events} \
             events dropped (target 0 and 0): {}",
            s.payload,
            s.sender(),
            s.sent,
            verdict(lost == 0 && counted == 0 && events == 0)
        );
    }
    for (k, s) in kernel_rtt.iter().zip(&steer_rtt) {
        let p99 = added(k, s, 990);
        let target = if k.placement == "same CPU" {
            50.0
        } else {
            20.0
        };
        println!(
            "- echo server on the {}: added p99 RTT {p99:.1} us (target <= {target} us): {}",
            k.placement,
            verdict(p99 <= target)
        );
    }
}

/// Every counter of a stage that loses a steered datagram.
const LOSSES: &[&str] = &[
    "steer_fallback_packets",
    "rx_dropped",
    "rx_ring_full",
    "reinject_dropped",
    "tx_invalid_descs",
    "client.UdpSndbufErrors",
    // UdpInErrors counts UdpRcvbufErrors too: the sum takes it alone.
    "node.UdpInErrors",
];

/// Steering's added round-trip time at quantile `per_mille` / 1000, in microseconds.
fn added(kernel: &Latency, steer: &Latency, per_mille: usize) -> f64 {
    steer.us(per_mille) - kernel.us(per_mille)
}
