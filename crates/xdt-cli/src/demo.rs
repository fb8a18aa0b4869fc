//! `xdt demo`: a throw-away lab that shows xdt working. A client namespace talks to a node
//! namespace over a veth pair; the probe is attached to the node's end; central, the agent and
//! service-health run; the client sends HTTP (IPv4 and IPv6), DNS-like UDP and pings. Ctrl-C (or
//! `--duration`) removes every process, pin and namespace it made, also after a failure.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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
        let find = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{name} is not next to xdt in {} (build everything: cargo build --release --workspace)",
                    dir.display()
                )
            }
        };
        Ok(Self {
            central: find("xdt-central")?,
            agent: find("xdt-agent")?,
            service: find("xdt-service-health")?,
        })
    }
}

/// Everything the demo created; dropping it removes all of it, in reverse order.
struct Lab {
    dir: PathBuf,
    namespaces: Vec<&'static str>,
    attached: bool,
    children: Vec<(&'static str, Child)>,
}

impl Lab {
    fn spawn(&mut self, name: &'static str, command: &mut Command) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// The first child that has exited, with the end of its log.
    fn exited(&mut self) -> Option<String> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Some(format!(
                    "{name} exited ({status}):\n  {}",
                    tail.join("\n  ")
                ));
            }
        }
        None
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            // SIGTERM first so the agent flushes and central saves, then SIGKILL.
            let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
            println!("stopped {name}");
        }
        if self.attached {
            // The probe is attached (and pinned) in the node namespace.
            match in_netns(NODE_NS, || Ok(attach::detach(NODE_IF)?)) {
                Ok(()) => println!("detached the probe from {NODE_IF}"),
                Err(e) => eprintln!("xdt demo: detaching {NODE_IF}: {e:#}"),
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            println!("removed namespace {ns}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(format!("/run/netns/{ns}"))
                .with_context(|| format!("namespace {ns}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread in namespace {ns} panicked"))
    })
}

fn nsenter(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

pub fn run(options: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "xdt demo needs root: it creates network namespaces and attaches XDP (sudo xdt demo)"
        );
    }
    let binaries = Binaries::find()?;
    for ns in [CLIENT_NS, NODE_NS] {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("namespace {ns} exists: is another demo running? (if not: ip netns del {ns})");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle signals")?;
    }
    let dir = std::env::temp_dir().join(format!("xdt-demo-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut lab = Lab {
        dir: dir.clone(),
        namespaces: Vec::new(),
        attached: false,
        children: Vec::new(),
    };

    // The network: client <-> node over one veth pair, IPv4 and IPv6.
    for ns in [CLIENT_NS, NODE_NS] {
        ip(&["netns", "add", ns])?;
        lab.namespaces.push(ns);
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "link", "add", CLIENT_IF, "netns", CLIENT_NS, "type", "veth", "peer", "name", NODE_IF,
        "netns", NODE_NS,
    ])?;
    for (ns, dev, v4, v6) in [
        (CLIENT_NS, CLIENT_IF, CLIENT4, CLIENT6),
        (NODE_NS, NODE_IF, NODE4, NODE6),
    ] {
        ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    // The management link; it goes away with the node namespace.
    ip(&[
        "link",
        "add",
        MGMT_IF,
        "type",
        "veth",
        "peer",
        "name",
        MGMT_NODE_IF,
        "netns",
        NODE_NS,
    ])?;
    ip(&["addr", "add", &format!("{MGMT_HOST4}/30"), "dev", MGMT_IF])?;
    ip(&["link", "set", MGMT_IF, "up"])?;
    ip(&[
        "-n",
        NODE_NS,
        "addr",
        "add",
        &format!("{MGMT_NODE4}/30"),
        "dev",
        MGMT_NODE_IF,
    ])?;
    ip(&["-n", NODE_NS, "link", "set", MGMT_NODE_IF, "up"])?;
    let telemetry = format!("{MGMT_HOST4}:{}", options.telemetry_port);

    // The probe, with the demo's rules.
    let rules = parse_rules(RULES, "demo rules")?;
    let attached = in_netns(NODE_NS, || {
        Ok(attach::attach(
            NODE_IF,
            Mode::Auto,
            &rules,
            Capacity::default(),
        )?)
    })?;
    lab.attached = true;
    println!(
        "attached the probe to {NODE_IF} in {} mode (namespace {NODE_NS})",
        attached.mode
    );

    // Central, the agent, the service.
    let token = dir.join("token");
    fs::write(&token, random_hex()?)?;
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600))?;
    lab.spawn(
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
    wait_for_http(&options.http_listen, &mut lab)?;
    // The agent runs in the node namespace: its AF_XDP sockets and re-entry pair live there.
    lab.spawn(
        "xdt-agent",
        nsenter(NODE_NS, &binaries.agent)
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
    lab.spawn(
        "xdt-service-health",
        nsenter(NODE_NS, &binaries.service).args(["--listen", &format!("[::]:{SERVICE_PORT}")]),
    )?;
    if which("ping") {
        lab.spawn(
            "ping",
            nsenter(CLIENT_NS, Path::new("ping")).args(["-q", "-i", "0.5", NODE4]),
        )?;
        lab.spawn(
            "ping6",
            nsenter(CLIENT_NS, Path::new("ping")).args(["-q", "-6", "-i", "1", NODE6]),
        )?;
    } else {
        println!("(ping is not installed: no ICMP traffic; apt-get install iputils-ping)");
    }
    let traffic_stop = Arc::clone(&stop);
    let traffic = std::thread::spawn(move || {
        in_netns(CLIENT_NS, || {
            client_traffic(&traffic_stop);
            Ok(())
        })
    });

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

    let started = Instant::now();
    // Opened where the probe is attached; its maps are then read from here.
    let probe = in_netns(NODE_NS, || Ok(AttachedProbe::open(NODE_IF)?))?;
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
        if let Some(why) = lab.exited() {
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
    let _ = traffic.join();
    drop(probe);
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

fn wait_for_http(addr: &str, lab: &mut Lab) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(why) = lab.exited() {
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
