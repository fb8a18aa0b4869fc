//! docs/kubernetes/ checked and run: every manifest validates against the Kubernetes schemas
//! (the kubernetes-validate package), and podman's `kube play` runs them with the images
//! `cargo xtask images` builds from this build's Debian package: central's Deployment (with its
//! Secret, ConfigMap and PersistentVolumeClaim) and the agent DaemonSet's pod for one node, its
//! init container attaching the real probe to a veth of a lab in network namespaces made here.
//! Frames sent from the lab's client must show up, counted exactly, in central's /metrics.json;
//! HTTP requests through a `steer` rule must be answered by the sample service in the node's
//! namespace and show up, read by the agent, in central's events. The pod runs under the
//! manifest's Localhost seccomp profile. The agent's liveness probe (podman's healthcheck made
//! from it) must pass on the running agent and fail within its max age once the agent is
//! stopped (SIGSTOP); restarted as the kubelet then would, the agent must steer again. The preStop hook (which podman 4.3 does not run) is run as the kubelet
//! would, and must detach the probe and delete the re-entry pair. Root only; needs podman, mmdebstrap, cargo-deb and kubernetes-validate (`cargo
//! xtask setup --tests`). Every pod, container, volume, secret, image and namespace it makes is
//! removed at the end, also when it fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use xdt_testkit::{
    http::{echo, steered_http_paths},
    net::{Netns, veth},
    process::{Process, sibling, xtask},
    root_or_skip, say, unique_name,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const NODE_ADDR: &str = "10.231.0.1";
const CLIENT_ADDR: &str = "10.231.0.2";
const PACKETS: u32 = 300;
/// The port of the `steer` rule, where the sample service listens in the node's namespace.
const STEERED_PORT: u16 = 8081;
const REQUESTS: usize = 10;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the test made in podman, removed on drop (pods first, then what they used).
struct Podman<'a> {
    node: &'a Netns,
    /// The containers.conf `cargo xtask images` wrote for this machine (its runtime).
    conf: PathBuf,
    /// Files given to `podman kube play`, taken down in reverse order.
    plays: Vec<PathBuf>,
    secret: Option<String>,
    /// Volumes kube play made: the PVC's and one per ConfigMap and Secret volume.
    volumes: Vec<String>,
    /// Images and networks that did not exist before the test.
    images: Vec<String>,
    network: Option<String>,
    pins: Option<PathBuf>,
    scratch: Option<PathBuf>,
}

impl Podman<'_> {
    /// `podman ARGS` in the node's network namespace: a pod with hostNetwork shares it.
    fn podman(&self) -> Command {
        let mut c = self.node.command("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--log-level=error");
        c
    }

    fn exists(&self, what: &str, name: &str) -> bool {
        self.podman()
            .args([what, "exists", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn play(&mut self, file: &Path) {
        self.play_with(file, &[]);
    }

    fn play_with(&mut self, file: &Path, options: &[&str]) {
        self.plays.push(file.to_owned());
        let out = self
            .podman()
            .args(["kube", "play"])
            .args(options)
            .arg(file)
            .output()
            .expect("run podman kube play");
        assert!(
            out.status.success(),
            "podman kube play {} failed: {}\n{}",
            file.display(),
            text(&out),
            self.logs()
        );
    }

    /// Every container's state and log tail, for a failure's message.
    fn logs(&self) -> String {
        let names = self
            .podman()
            .args(["ps", "--all", "--format", "{{.Names}} {{.Status}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut all = String::new();
        for line in names.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let log = self
                .podman()
                .args(["logs", "--tail", "20", name])
                .output()
                .map(|o| text(&o))
                .unwrap_or_default();
            all.push_str("--- ");
            all.push_str(line);
            all.push('\n');
            all.push_str(&log);
        }
        all
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        for file in self.plays.iter().rev() {
            let _ = self.podman().args(["kube", "down"]).arg(file).output();
        }
        for volume in &self.volumes {
            let _ = self
                .podman()
                .args(["volume", "rm", "--force", volume])
                .output();
        }
        if let Some(secret) = &self.secret {
            let _ = self.podman().args(["secret", "rm", secret]).output();
        }
        if let Some(network) = &self.network {
            let _ = self
                .podman()
                .args(["network", "rm", "--force", network])
                .output();
        }
        for image in &self.images {
            let _ = self.podman().args(["rmi", "--force", image]).output();
        }
        if let Some(pins) = &self.pins {
            let _ = std::fs::remove_dir_all(pins);
            // The namespace's directory, unless another interface there is attached.
            let _ = pins.parent().map(std::fs::remove_dir);
        }
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

fn central_json(node: &Netns, central_ip: &str) -> Option<serde_json::Value> {
    let out = node
        .command("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{central_ip}:8080/metrics.json"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn label_packets(node: &serde_json::Value, label: &str) -> u64 {
    node["label_counts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["label"] == label)
        .and_then(|c| c["packets"].as_u64())
        .unwrap_or(0)
}

/// Central's entry for the one agent, once `predicate` holds (panics after `timeout`).
fn wait_for_agent(
    podman: &Podman,
    central_ip: &str,
    what: &str,
    timeout: Duration,
    predicate: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(doc) = central_json(podman.node, central_ip) {
            if let Some(entry) = doc["nodes"].as_array().and_then(|n| n.first()).cloned()
                && predicate(&entry)
            {
                return entry;
            }
            last = Some(doc);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "central never showed {what} within {timeout:?}; last /metrics.json: {last:?}\n{}",
        podman.logs()
    );
}

/// The PID of a container's main process.
fn main_pid(podman: &Podman, container: &str) -> i32 {
    check(
        "podman inspect",
        podman
            .podman()
            .args(["inspect", "--format", "{{.State.Pid}}", container]),
    )
    .trim()
    .parse()
    .expect("a PID")
}

/// A field of /proc/PID/status of a container's main process (`VmRSS`, `Seccomp`, ...).
fn status_field(podman: &Podman, container: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", main_pid(podman, container)))
        .expect("the container's main process");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/PID/status of {container}"))
        .trim()
        .to_owned()
}

fn rss_kib(podman: &Podman, container: &str) -> u64 {
    status_field(podman, container, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS")
}

/// `podman healthcheck run`: the container's liveness probe, as podman made it from the
/// manifest's; whether it passed, and what it said.
fn liveness(podman: &Podman, container: &str) -> (bool, String) {
    let out = podman
        .podman()
        .args(["healthcheck", "run", container])
        .output()
        .expect("podman healthcheck run");
    (out.status.success(), text(&out).trim().to_owned())
}

/// Sends SIGCONT on drop to a process the test stopped: a stopped agent holds up the pod's
/// removal.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // The process may be gone (killed while stopped): nothing to resume then.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

/// The liveness probe's max age in the manifest (`--max-age S` of its command).
fn liveness_max_age(agent_yaml: &str) -> Duration {
    let line = agent_yaml
        .lines()
        .find(|l| l.contains("--check-heartbeat"))
        .expect("the agent's liveness probe");
    let seconds = line
        .split(&['"', ',', '[', ']', ' '][..])
        .filter(|w| !w.is_empty())
        .skip_while(|w| *w != "--max-age")
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no --max-age in {line}"));
    Duration::from_secs_f64(seconds)
}

#[test]
fn the_kubernetes_manifests_validate_and_run_under_podman() {
    if !root_or_skip("the_kubernetes_manifests_validate_and_run_under_podman") {
        return;
    }
    let repo = repo();
    let manifests = repo.join("docs/kubernetes");
    let files: Vec<PathBuf> = ["central.yaml", "agent.yaml", "service-health.yaml"]
        .iter()
        .map(|f| manifests.join(f))
        .collect();

    // The schemas of the oldest Kubernetes release still supported upstream and of the newest
    // the package ships; --strict refuses unknown fields.
    for version in ["1.32.0", "1.34.0"] {
        let out = check(
            "kubernetes-validate",
            Command::new("kubernetes-validate")
                .args(["--strict", "--kubernetes-version", version])
                .args(&files),
        );
        say(&format!(
            "kubernetes-validate {version}: {} resources passed",
            out.matches("passed").count()
        ));
    }
    // The manifests name the images of this version.
    for file in &files {
        let yaml = std::fs::read_to_string(file).expect("manifest");
        for line in yaml
            .lines()
            .filter(|l| l.trim_start().starts_with("image:"))
        {
            assert!(
                line.ends_with(&format!(":{VERSION}")),
                "{}: {line}",
                file.display()
            );
        }
    }

    // The pod's seccomp profile is the container runtime's default plus what xdt needs: made
    // again from this machine's default (containers-common's, podman's RuntimeDefault), it is
    // the same file.
    let profile_file = manifests.join("xdt-agent-seccomp.json");
    let derived = check(
        "seccomp-profile",
        Command::new(repo.join("crates/xtask/containers/seccomp-profile"))
            .arg("/usr/share/containers/seccomp.json"),
    );
    assert!(
        derived == std::fs::read_to_string(&profile_file).expect("the seccomp profile"),
        "{} is not what crates/xtask/containers/seccomp-profile makes of this machine's \
         /usr/share/containers/seccomp.json: run it and review the difference",
        profile_file.display()
    );

    // The images, from this build's binaries (the test's siblings).
    let node = Netns::new("xk8n");
    let client = Netns::new("xk8c");
    let mut podman = Podman {
        node: &node,
        conf: PathBuf::new(),
        plays: Vec::new(),
        secret: None,
        volumes: Vec::new(),
        images: vec![
            format!("localhost/xdt-agent:{VERSION}"),
            format!("localhost/xdt-central:{VERSION}"),
        ],
        network: None,
        pins: None,
        scratch: None,
    };
    let built = check(
        "cargo xtask images",
        xtask("images").args(["--no-lintian", "--fast", "--tag", VERSION]),
    );
    let base = built
        .lines()
        .find_map(|l| l.strip_prefix("base: "))
        .map(str::to_owned);
    podman.images.extend(base);
    podman.conf = built
        .lines()
        .find_map(|l| l.strip_prefix("podman config: "))
        .map(PathBuf::from)
        .expect("cargo xtask images names its podman config");

    // The lab: the node's interface faces a client; central's pod sits on podman's bridge in
    // the node's namespace, which the agent (host network = the node's namespace) reaches.
    let iface = unique_name("xk");
    veth(&node, &iface, &client, "eth0", 1);
    node.ip(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", &iface]);
    node.ip(&["link", "set", &iface, "up"]);
    client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    let node_netns = xdt_datapath::paths::Netns::of_file(std::path::Path::new(&node.path()))
        .expect("node namespace");
    podman.pins = Some(
        xdt_datapath::paths::PinDir::of(node_netns, &iface)
            .path()
            .to_owned(),
    );

    let scratch = std::env::temp_dir().join(unique_name("xdt-k8s-"));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    podman.scratch = Some(scratch.clone());
    // What kube play makes beside the pods, to be removed whatever happens.
    podman.volumes = ["xdt-central-state", "xdt-central", "xdt-agent", "xdt-token"]
        .map(str::to_owned)
        .to_vec();
    let kube_network = "podman-default-kube-network";
    if !podman.exists("network", kube_network) {
        podman.network = Some(kube_network.to_owned());
    }
    let pause = "localhost/podman-pause:4.3.1-0";
    if !podman.exists("image", pause) {
        podman.images.push(pause.to_owned());
    }

    // The token as Kubernetes stores it (podman reads `data`, not `stringData`).
    let token = format!("k8s-test-token-{}", std::process::id());
    let encoded = check(
        "base64",
        Command::new("sh").args(["-c", &format!("printf %s '{token}' | base64 -w0")]),
    );
    let secret_yaml = scratch.join("secret.yaml");
    std::fs::write(
        &secret_yaml,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: xdt-token\n  namespace: xdt\ndata:\n  token: {encoded}\n"
        ),
    )
    .expect("secret.yaml");
    podman.secret = Some("xdt-token".to_owned());
    podman.play(&secret_yaml);

    // Central's Deployment as it is.
    podman.play(&manifests.join("central.yaml"));
    let central_ip = check(
        "central's address",
        podman.podman().args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            "xdt-central-pod-0-central",
        ]),
    )
    .trim()
    .to_owned();
    assert!(!central_ip.is_empty(), "central's pod has no address");
    say(&format!("central's pod: {central_ip}"));

    // The sample service on the node, behind the `steer` rule (it runs in the node's network
    // namespace as a hostNetwork pod would; killed on drop).
    let _service = Process::start(
        node.command(sibling("xdt-service-health").to_str().expect("path"))
            .args(["--listen", &format!("{NODE_ADDR}:{STEERED_PORT}")]),
    );

    // The DaemonSet's pod for this node, with the site's interface, central address and rules.
    let rules = scratch.join("node.rules");
    std::fs::write(
        &rules,
        format!("counted proto udp dport 9999\napi proto tcp dport {STEERED_PORT} action steer\n"),
    )
    .expect("rules");
    let node_name = "k8s-node-1";
    let pod_yaml = scratch.join("agent-pod.yaml");
    let pod = check(
        "node_pod.py",
        Command::new("python3")
            .arg(repo.join("crates/xdt-system-tests/tests/kubernetes/node_pod.py"))
            .arg(manifests.join("agent.yaml"))
            .args([node_name, &iface, &format!("{central_ip}:50051")])
            .arg(&rules),
    );
    std::fs::write(&pod_yaml, pod).expect("agent-pod.yaml");
    let agent_pod = format!("xdt-agent-{node_name}");
    let agent = format!("{agent_pod}-agent");
    // The manifest's Localhost seccomp profile, from where the kubelet would look up its name.
    podman.play_with(
        &pod_yaml,
        &[
            "--seccomp-profile-root",
            manifests.to_str().expect("a UTF-8 path"),
        ],
    );

    let pins = podman.pins.clone().expect("pins");
    assert!(
        pins.join("prog").exists() || pins.is_dir(),
        "the init container pinned nothing under {}",
        pins.display()
    );
    let connected = wait_for_agent(
        &podman,
        &central_ip,
        "the agent connected, steering",
        Duration::from_secs(90),
        |n| n["connected"] == true && n["agent"]["steering"]["sockets"].as_u64() >= Some(1),
    );
    say(&format!(
        "agent at central: {}, steering {}",
        connected["agent_id"], connected["agent"]["steering"]
    ));
    // The profile is in force (2: a filter), in the containers that run on.
    for container in [&agent, &format!("{agent_pod}-detach")] {
        assert_eq!(
            status_field(&podman, container, "Seccomp"),
            "2",
            "{container} runs without a seccomp filter"
        );
    }
    // Set up, the agent holds no capability.
    assert_eq!(
        status_field(&podman, &agent, "CapEff"),
        "0000000000000000",
        "the agent kept capabilities"
    );

    // Known traffic: neighbours first, then PACKETS datagrams to the counted port.
    check(
        "ping",
        client
            .command("ping")
            .args(["-c", "2", "-W", "5", NODE_ADDR]),
    );
    check(
        "send UDP",
        client.command("bash").args([
            "-c",
            &format!("for i in $(seq {PACKETS}); do printf x > /dev/udp/{NODE_ADDR}/9999; done"),
        ]),
    );
    let entry = wait_for_agent(
        &podman,
        &central_ip,
        "every counted packet",
        Duration::from_mins(1),
        |n| label_packets(n, "counted") >= u64::from(PACKETS),
    );
    std::thread::sleep(Duration::from_secs(3));
    let settled = wait_for_agent(
        &podman,
        &central_ip,
        "the count",
        Duration::from_secs(10),
        |_| true,
    );
    assert_eq!(
        label_packets(&settled, "counted"),
        u64::from(PACKETS),
        "{entry}"
    );

    // Steered: each request answered through the agent and its re-entry pair, each in central's
    // events with its path.
    let paths: Vec<String> = (0..REQUESTS).map(|i| format!("k8s-{i}")).collect();
    for path in &paths {
        echo(&client.0, NODE_ADDR, STEERED_PORT, path);
    }
    let steered = wait_for_agent(
        &podman,
        &central_ip,
        "every steered request in the events",
        Duration::from_secs(30),
        |n| {
            let seen = steered_http_paths(n);
            paths.iter().all(|p| seen.contains(&format!("/echo/{p}")))
        },
    );
    let steering = &steered["agent"]["steering"];
    say(&format!("steered {REQUESTS} requests: {steering}"));
    assert!(
        steered["recent_events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["action"] == "steer")
            .all(|e| e["label"] == "api" && e["inspection"]["reinjected"] == true),
        "a steered packet was not re-injected: {steered}"
    );

    // Liveness: podman's healthcheck, made from the manifest's probe, passes on the running
    // agent, and fails within the probe's max age of the agent's stopping.
    let max_age = liveness_max_age(
        &std::fs::read_to_string(manifests.join("agent.yaml")).expect("agent.yaml"),
    );
    let (healthy, said) = liveness(&podman, &agent);
    assert!(
        healthy,
        "the running agent is not live: {said}\n{}",
        podman.logs()
    );
    // The agent beats every 2 s (docs/operations.md): once the last beat before the stop is
    // more than the max age old, every probe must fail. A probe's own run can be slow on a
    // loaded machine, so what counts is when it started (it reads the heartbeat later).
    let bound = max_age + Duration::from_millis(2500);
    let stopped = Stopped::stop(main_pid(&podman, &agent));
    let since = Instant::now();
    let (took, said) = loop {
        let started = since.elapsed();
        let (healthy, said) = liveness(&podman, &agent);
        if !healthy {
            break (started, said);
        }
        assert!(
            started <= bound,
            "a probe started {started:?} after SIGSTOP still passed (max age {max_age:?}): {said}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    say(&format!(
        "liveness failed in a probe started {took:.1?} after SIGSTOP (max age {max_age:?}): {said}"
    ));
    drop(stopped);
    let resumed = Instant::now();
    while !liveness(&podman, &agent).0 {
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "the agent is not live again after SIGCONT: {}",
            liveness(&podman, &agent).1
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    echo(&client.0, NODE_ADDR, STEERED_PORT, "after-sigcont");

    let agent_rss = rss_kib(&podman, &agent);
    let central_rss = rss_kib(&podman, "xdt-central-pod-0-central");
    say(&format!(
        "RSS: agent {agent_rss} KiB, central {central_rss} KiB"
    ));

    // What the kubelet does once the probe has failed often enough: kill the agent's container
    // (SIGTERM, SIGKILL after the grace period: a hung agent does not stop by itself) and start
    // it again. Init containers do not run again: the new agent must take over the probe that
    // is still attached and the re-entry pair the killed one left, and steer again.
    let killed = main_pid(&podman, &agent);
    let stopped = Stopped::stop(killed);
    check(
        "podman restart",
        podman.podman().args(["restart", "--time", "2", &agent]),
    );
    drop(stopped);
    assert_ne!(
        main_pid(&podman, &agent),
        killed,
        "the agent was not restarted"
    );
    let restarted = Instant::now();
    while !liveness(&podman, &agent).0 {
        assert!(
            restarted.elapsed() < Duration::from_mins(1),
            "the restarted agent is not live: {}\n{}",
            liveness(&podman, &agent).1,
            podman.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for_agent(
        &podman,
        &central_ip,
        "the restarted agent steering",
        Duration::from_mins(1),
        |n| n["connected"] == true && n["agent"]["steering"]["sockets"].as_u64() >= Some(1),
    );
    echo(&client.0, NODE_ADDR, STEERED_PORT, "after-restart");
    wait_for_agent(
        &podman,
        &central_ip,
        "a request steered by the restarted agent",
        Duration::from_secs(30),
        |n| steered_http_paths(n).contains("/echo/after-restart"),
    );
    say(&format!(
        "restarted as the kubelet would: live and steering again after {:.1?}",
        restarted.elapsed()
    ));

    // The preStop hooks, as the kubelet runs them before stopping the pod.
    let hooks: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&check(
        "node_pod.py --pre-stop",
        Command::new("python3")
            .arg(repo.join("crates/xdt-system-tests/tests/kubernetes/node_pod.py"))
            .arg("--pre-stop")
            .arg(manifests.join("agent.yaml")),
    ))
    .expect("the preStop hooks");
    assert!(hooks.contains_key("detach"), "{hooks:?}");
    for (container, command) in &hooks {
        let argv: Vec<&str> = command
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        check(
            &format!("preStop of {container}"),
            podman
                .podman()
                .args(["exec", &format!("{agent_pod}-{container}")])
                .args(&argv),
        );
    }
    assert!(!pins.exists(), "the preStop hook left {}", pins.display());
    let links = check("ip link", node.command("ip").args(["-o", "link"]));
    assert!(
        !links.lines().any(|l| l.contains(": xdt")),
        "the preStop hook left the re-entry pair: {links}"
    );
    let link = check(
        "ip link",
        node.command("ip").args(["-d", "link", "show", &iface]),
    );
    assert!(!link.contains("xdp"), "the probe is still attached: {link}");
}
