//! `xdt demo`: a throw-away lab that shows xdt working. A client namespace talks to a node
//! namespace over a veth pair; the probe is attached to the node's end; central, the agent and
//! service-health run; the client sends HTTP (IPv4 and IPv6), DNS-like UDP and pings. Ctrl-C (or
//! `--duration`) removes every process, pin and namespace it made, also after a failure.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xdt_common::counters::Counter;
use xdt_datapath::{
    attach::{self, Mode},
    attached::AttachedProbe,
    probe::Capacity,
    rules::parse_rules,
};
use xdt_lab::{Lab, LabSpec, Processes, Side};

const CLIENT_NS: &str = "xdtdemo-client";
const NODE_NS: &str = "xdtdemo-node";
const CLIENT_IF: &str = "xdtdemo-c";
const NODE_IF: &str = "xdtdemo-n";
const CLIENT4: &str = "10.211.0.1";
const NODE4: &str = "10.211.0.2";
const CLIENT6: &str = "fd00:211::1";
const NODE6: &str = "fd00:211::2";
const SERVICE_PORT: u16 = 8081;
/// The management link between the host (central) and the node namespace (the agent).
const MGMT_IF: &str = "xdtdemo-m";
const MGMT_NODE_IF: &str = "xdtdemo-mn";
const MGMT_HOST4: &str = "10.211.9.1";
const MGMT_NODE4: &str = "10.211.9.2";

const RULES: &str = "\
web    dst 10.211.0.2 proto tcp dport 8081 action steer
web6   dst fd00:211::2 proto tcp dport 8081 action sample 5
dns    proto udp dport 53 action steer
ping   proto icmp action sample 1
ping6  proto icmpv6
";

#[derive(Debug)]
pub struct Options {
    pub duration: Option<f64>,
    pub http_listen: String,
    pub telemetry_port: u16,
}

/// The programs the demo starts, found next to `xdt`.
struct Binaries {
    central: PathBuf,
    agent: PathBuf,
    service: PathBuf,
}

impl Binaries {
    fn find() -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the xdt executable")?;
        let dir = exe.parent().context("xdt has no directory")?;
        Ok(Self {
            central: xdt_lab::binary(dir, "xdt-central")?,
            agent: xdt_lab::binary(dir, "xdt-agent")?,
            service: xdt_lab::binary(dir, "xdt-service-health")?,
        })
    }
}

pub fn run(options: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "xdt demo needs root: it creates network namespaces and attaches XDP (sudo xdt demo)"
        );
    }
    let binaries = Binaries::find()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle signals")?;
    }
    // The network: client <-> node over one veth pair, IPv4 and IPv6. Dropping the lab stops
    // every process (SIGTERM first so the agent flushes and central saves), detaches the probe
    // and removes the namespaces, also after a failure.
    let side = |ns: &str, iface: &str, v4: &str, v6: &str| Side {
        ns: ns.to_owned(),
        iface: iface.to_owned(),
        v4: Some(format!("{v4}/24")),
        v6: Some(format!("{v6}/64")),
    };
    let mut lab = Lab::new(&LabSpec {
        client: side(CLIENT_NS, CLIENT_IF, CLIENT4, CLIENT6),
        node: side(NODE_NS, NODE_IF, NODE4, NODE6),
        queues: 1,
        dir_prefix: "xdt-demo-".to_owned(),
        grace: Duration::from_secs(3),
        report: true,
    })?;
    let dir = lab.dir.clone();
    // The management link. It would go with the node namespace, but the kernel removes a
    // namespace's devices asynchronously: deleted here, it is gone when the demo has ended.
    xdt_lab::veth((None, MGMT_IF), (Some(&lab.node), MGMT_NODE_IF), 1)?;
    lab.on_drop(|_| {
        xdt_lab::ip(&["link", "del", MGMT_IF])?;
        Ok(format!("removed the management link {MGMT_IF}"))
    });
    xdt_lab::ip(&["addr", "add", &format!("{MGMT_HOST4}/30"), "dev", MGMT_IF])?;
    xdt_lab::ip(&["link", "set", MGMT_IF, "up"])?;
    let mgmt_node = format!("{MGMT_NODE4}/30");
    lab.node
        .ip(&["addr", "add", &mgmt_node, "dev", MGMT_NODE_IF])?;
    lab.node.ip(&["link", "set", MGMT_NODE_IF, "up"])?;
    let telemetry = format!("{MGMT_HOST4}:{}", options.telemetry_port);

    // The probe, with the demo's rules.
    let rules = parse_rules(RULES, "demo rules")?;
    let attached = lab
        .node
        .enter(|| attach::attach(NODE_IF, Mode::Auto, &rules, Capacity::default()))??;
    lab.on_drop(|lab| {
        lab.node.enter(|| attach::detach(NODE_IF))??;
        Ok(format!("detached the probe from {NODE_IF}"))
    });
    println!(
        "attached the probe to {NODE_IF} in {} mode (namespace {NODE_NS})",
        attached.mode
    );

    // Central, the agent, the service.
    let token = lab.file("token", &random_hex()?)?;
    lab.processes.spawn(
        "xdt-central",
        Command::new(&binaries.central)
            .args([
                "--telemetry-listen",
                &telemetry,
                "--http-listen",
                &options.http_listen,
            ])
            .arg("--token-file")
            .arg(&token),
    )?;
    wait_for_http(&options.http_listen, &mut lab.processes)?;
    // The agent runs in the node namespace: its AF_XDP sockets and re-entry pair live there.
    lab.processes.spawn(
        "xdt-agent",
        lab.node
            .command(&binaries.agent)
            .args([
                "--interface",
                NODE_IF,
                "--central",
                &telemetry,
                "--agent-id",
                "demo-node",
            ])
            .arg("--token-file")
            .arg(&token),
    )?;
    lab.processes.spawn(
        "xdt-service-health",
        lab.node
            .command(&binaries.service)
            .args(["--listen", &format!("[::]:{SERVICE_PORT}")]),
    )?;
    if which("ping") {
        lab.processes.spawn(
            "ping",
            lab.client.command("ping").args(["-q", "-i", "0.5", NODE4]),
        )?;
        lab.processes.spawn(
            "ping6",
            lab.client
                .command("ping")
                .args(["-q", "-6", "-i", "1", NODE6]),
        )?;
    } else {
        println!("(ping is not installed: no ICMP traffic; apt-get install iputils-ping)");
    }

    println!();
    println!("xdt demo is running:");
    println!("  dashboard   http://{}/", options.http_listen);
    println!(
        "  JSON        http://{}/metrics.json   Prometheus: /metrics",
        options.http_listen
    );
    println!("  counters    sudo xdt stats --interface {NODE_IF}");
    println!("  events      (the agent reads them; see the dashboard)");
    println!("  logs        {}", dir.display());
    println!("Ctrl-C stops it and removes everything.");
    println!();

    let (client, node, processes) = (&lab.client, &lab.node, &mut lab.processes);
    let outcome = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| client.enter(|| client_traffic(&stop)));
        let started = Instant::now();
        // Opened where the probe is attached; its maps are then read from here.
        let probe = node.enter(|| AttachedProbe::open(NODE_IF))??;
        let maps = probe.maps();
        let mut last_line = Instant::now();
        let outcome = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if options
                .duration
                .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
            {
                stop.store(true, Ordering::Relaxed);
                break Ok(());
            }
            if let Some(why) = processes.exited() {
                stop.store(true, Ordering::Relaxed);
                break Err(anyhow::anyhow!("{why}"));
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                if let Ok(c) = maps.counters() {
                    println!(
                        "{NODE_IF}: {} packets (tcp {}, udp {}, icmp {}, other {}), {} labelled, {} sampled, {} steered to the agent",
                        c.get(Counter::TotalPackets),
                        c.get(Counter::TcpPackets),
                        c.get(Counter::UdpPackets),
                        c.get(Counter::IcmpPackets),
                        c.get(Counter::OtherPackets),
                        c.get(Counter::MatchedPackets),
                        c.get(Counter::SampledEvents),
                        c.get(Counter::SteeredPackets),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::Relaxed);
        if traffic.join().is_err() {
            eprintln!("xdt demo: the client's traffic thread panicked");
        }
        drop(probe);
        outcome
    });
    println!("stopping the demo");
    drop(lab);
    outcome
}

/// HTTP over IPv4 and IPv6 and DNS-like UDP from the client namespace, about 15 requests a
/// second, until `stop`.
fn client_traffic(stop: &AtomicBool) {
    let udp = UdpSocket::bind("0.0.0.0:0").ok();
    let v4: SocketAddr = format!("{NODE4}:{SERVICE_PORT}")
        .parse()
        .expect("constant address");
    let v6: SocketAddr = format!("[{NODE6}]:{SERVICE_PORT}")
        .parse()
        .expect("constant address");
    let dns: SocketAddr = format!("{NODE4}:53").parse().expect("constant address");
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let _ = http_get(v4, &format!("/echo/demo/{}", round % 20));
        if round.is_multiple_of(3) {
            let _ = http_get(v6, "/healthz");
        }
        if round.is_multiple_of(2)
            && let Some(udp) = &udp
        {
            // A DNS query for example.com (nothing answers; the port is closed).
            let _ = udp.send_to(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", dns);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink)?;
    Ok(())
}

fn wait_for_http(addr: &str, processes: &mut Processes) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(why) = processes.exited() {
            bail!("{why}");
        }
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            if s.read_to_string(&mut r).is_ok() && r.split_whitespace().nth(1) == Some("200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("central did not answer on http://{addr}/healthz within 15 s")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex.concat())
}
