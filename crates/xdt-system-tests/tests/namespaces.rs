//! Pins are kept per network namespace, as root: two namespaces each attach the probe to an
//! interface of the same name, each `xdt` and each agent reads (and changes) its own, and a
//! namespace without the probe is refused with an error naming the namespaces instead of
//! reading, changing or detaching another namespace's probe.

use std::{path::Path, process::Output, time::Duration};

use serde_json::Value;
use xdt_datapath::paths::{Netns as NetnsId, PinDir};
use xdt_testkit::{
    frames::*,
    http::{central_node_when, get_ok},
    net::{FrameSender, Netns, quiet_veth, veth},
    process::{Process, free_port, sibling},
    root_or_skip, unique_name,
};

fn xdt(ns: &Netns, args: &[&str]) -> Output {
    ns.command(xdt_testkit::process::xdt())
        .args(args)
        .output()
        .expect("run xdt")
}

fn ok(ns: &Netns, args: &[&str]) -> String {
    let out = xdt(ns, args);
    assert!(
        out.status.success(),
        "xdt {args:?} in {} failed: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(ns: &Netns, args: &[&str]) -> String {
    let out = xdt(ns, args);
    assert!(
        !out.status.success(),
        "xdt {args:?} in {} should fail: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn netns_id(ns: &Netns) -> NetnsId {
    NetnsId::of_file(Path::new(&ns.path())).expect("namespace inode")
}

/// One node namespace whose interface `iface` faces `client_if` in the client namespace; the
/// probe attached with `rules` is detached on drop.
struct Node<'a> {
    ns: &'a Netns,
    iface: &'a str,
}

impl<'a> Node<'a> {
    fn attach(ns: &'a Netns, iface: &'a str, rules: &str, dir: &Path) -> Self {
        let file = dir.join(format!("{}.rules", ns.name()));
        std::fs::write(&file, rules).expect("rules file");
        let file = file.display().to_string();
        ok(
            ns,
            &["attach", "-i", iface, "--mode", "generic", "--rules", &file],
        );
        Self { ns, iface }
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&ok(self.ns, &["stats", "-i", self.iface, "--json"]))
            .expect("stats json")
    }

    fn wait_for_total(&self, total: u64) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.stats()["total_packets"].as_u64() < Some(total)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.stats()
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        let _ = xdt(self.ns, &["detach", "-i", self.iface]);
    }
}

fn send(client: &Netns, iface: &str, frame: &[u8], count: usize) {
    let iface = iface.to_owned();
    client.enter(move || {
        let sender = FrameSender::open(&iface);
        for _ in 0..count {
            sender.send(frame);
        }
    });
}

#[test]
fn each_namespace_has_its_own_probe_on_an_interface_of_the_same_name() {
    if !root_or_skip("each_namespace_has_its_own_probe_on_an_interface_of_the_same_name") {
        return;
    }
    let client = Netns::new("xdtsc");
    let (node_a, node_b, elsewhere) = (
        Netns::new("xdtsa"),
        Netns::new("xdtsb"),
        Netns::new("xdtse"),
    );
    let same = unique_name("xs");
    let (to_a, to_b) = (unique_name("xca"), unique_name("xcb"));
    quiet_veth(&client, &to_a, &node_a, &same, 1);
    quiet_veth(&client, &to_b, &node_b, &same, 1);
    // An interface of that name in a third namespace too, without a probe.
    let other_end = unique_name("xco");
    veth(&client, &other_end, &elsewhere, &same, 1);
    let dir = std::env::temp_dir().join(unique_name("xdt-netns-"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let a = Node::attach(&node_a, &same, "alpha proto udp\n", &dir);
    let b = Node::attach(&node_b, &same, "beta proto udp\ngamma proto tcp\n", &dir);
    let (id_a, id_b, id_e) = (netns_id(&node_a), netns_id(&node_b), netns_id(&elsewhere));
    for (ns, id) in [(&node_a, id_a), (&node_b, id_b)] {
        assert!(
            PinDir::of(id, &same).link().exists(),
            "no pins of {same} in {}",
            ns.name()
        );
    }

    let udp = ethernet(
        ETH_P_IP,
        &ipv4([10, 9, 0, 1], [10, 9, 0, 2], UDP, &udp(1, 53, b"q")),
    );
    send(&client, &to_a, &udp, 5);
    send(&client, &to_b, &udp, 9);
    let stats_a = a.wait_for_total(5);
    let stats_b = b.wait_for_total(9);
    assert_eq!(stats_a["total_packets"].as_u64(), Some(5), "{stats_a}");
    assert_eq!(stats_b["total_packets"].as_u64(), Some(9), "{stats_b}");
    assert_eq!(stats_a["labels"][0]["label"], "alpha", "{stats_a}");
    assert_eq!(stats_b["labels"][0]["label"], "beta", "{stats_b}");

    // An agent in each namespace with a probe streams that namespace's counters (to a central
    // on that namespace's loopback); one where the interface has no probe refuses to start.
    let token = dir.join("token");
    std::fs::write(&token, "namespaces-token\n").expect("token");
    for (ns, total) in [(&node_a, 5), (&node_b, 9)] {
        let (http, telemetry) = (free_port(), free_port());
        let _central = Process::start(
            ns.command(sibling("xdt-central").to_str().expect("path"))
                .args(["--telemetry-listen", &format!("127.0.0.1:{telemetry}")])
                .args(["--http-listen", &format!("127.0.0.1:{http}")])
                .arg("--token-file")
                .arg(&token),
        );
        let _agent = Process::start(
            ns.command(sibling("xdt-agent").to_str().expect("path"))
                .args(["--interface", &same, "--agent-id", "netns-node"])
                .args(["--interval", "0.2", "--no-steer"])
                .args(["--central", &format!("127.0.0.1:{telemetry}")])
                .arg("--token-file")
                .arg(&token),
        );
        let node = central_node_when(
            || ns.enter(|| get_ok(http, "/metrics.json")),
            "netns-node",
            "this namespace's counters",
            Duration::from_secs(15),
            |n| n["counters"]["total_packets"].as_u64().is_some(),
        );
        assert_eq!(
            node["counters"]["total_packets"].as_u64(),
            Some(total),
            "{}: {node}",
            ns.name()
        );
    }
    let refused = elsewhere
        .command(sibling("xdt-agent").to_str().expect("path"))
        .args([
            "--interface",
            &same,
            "--no-steer",
            "--central",
            "127.0.0.1:9",
        ])
        .arg("--token-file")
        .arg(&token)
        .output()
        .expect("run xdt-agent");
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the agent started: {e}");
    for id in [id_e, id_a, id_b] {
        assert!(e.contains(&id.to_string()), "agent: {e} lacks {id}");
    }

    // Rules change in one namespace only.
    ok(
        &node_a,
        &["rules", "add", "-i", &same, "delta", "proto", "icmp"],
    );
    assert_eq!(
        ok(&node_a, &["rules", "list", "-i", &same]).lines().count(),
        2
    );
    assert_eq!(
        ok(&node_b, &["rules", "list", "-i", &same]).lines().count(),
        2
    );
    let listed: Value =
        serde_json::from_str(&ok(&node_b, &["status", "--json"])).expect("status json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["network_namespace"], id_b.to_string(), "{listed}");

    // A namespace with an interface of that name but no probe reads, changes and detaches
    // nothing, and says where the probes are.
    for args in [
        vec!["stats", "-i", &same],
        vec!["rules", "list", "-i", &same],
        vec!["detach", "-i", &same],
    ] {
        let e = fails(&elsewhere, &args);
        for id in [id_e, id_a, id_b] {
            assert!(e.contains(&id.to_string()), "{args:?}: {e} lacks {id}");
        }
        assert!(e.contains("not attached"), "{args:?}: {e}");
    }
    assert!(
        ok(&elsewhere, &["status"]).contains("not attached to any interface"),
        "another namespace's probes listed"
    );
    assert_eq!(a.stats()["total_packets"].as_u64(), Some(5));
    assert_eq!(b.stats()["total_packets"].as_u64(), Some(9));

    // Detaching in one namespace leaves the other's probe.
    drop(a);
    assert!(!PinDir::of(id_a, &same).path().exists(), "pins left in A");
    assert!(
        !id_a.pin_root().exists(),
        "A's namespace directory left behind"
    );
    assert_eq!(b.stats()["total_packets"].as_u64(), Some(9));

    // An interface deleted under its probe leaves the pins: xdt says so instead of reading a
    // probe that sees no traffic, and detach removes them.
    node_b.ip(&["link", "del", &same]);
    let e = fails(&node_b, &["stats", "-i", &same]);
    assert!(e.contains("of an interface that is gone"), "{e}");
    ok(&node_b, &["detach", "-i", &same]);
    drop(b);
    assert!(!PinDir::of(id_b, &same).path().exists(), "pins left in B");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes what the old-layout test leaves if it fails half-way: the pins in either place.
struct OldPins {
    ns: Netns,
    iface: String,
}

impl Drop for OldPins {
    fn drop(&mut self) {
        let _ = xdt(&self.ns, &["detach", "-i", &self.iface]);
        let _ = xdt(&self.ns, &["detach", "-i", &self.iface]);
    }
}

#[test]
fn pins_of_the_old_layout_are_named_and_detached() {
    if !root_or_skip("pins_of_the_old_layout_are_named_and_detached") {
        return;
    }
    let client = Netns::new("xdtoc");
    let iface = unique_name("xo");
    let old = OldPins {
        ns: Netns::new("xdton"),
        iface: iface.clone(),
    };
    quiet_veth(&client, &unique_name("xoc"), &old.ns, &iface, 1);
    ok(&old.ns, &["attach", "-i", &iface, "--mode", "generic"]);
    // Where xdt kept the pins before namespaces were part of the path (bpffs renames them).
    let pins = PinDir::of(netns_id(&old.ns), &iface);
    let legacy = xdt_datapath::paths::legacy_dir(&iface);
    std::fs::rename(pins.path(), &legacy).expect("move the pins to the old place");
    let _ = std::fs::remove_dir(netns_id(&old.ns).pin_root());

    for args in [
        vec!["stats", "-i", &iface],
        vec!["attach", "-i", &iface, "--mode", "generic"],
    ] {
        let e = fails(&old.ns, &args);
        assert!(
            e.contains(&legacy.display().to_string()) && e.contains("older xdt"),
            "{args:?}: {e}"
        );
    }
    ok(&old.ns, &["detach", "-i", &iface]);
    assert!(!legacy.exists(), "old pins left");
    let link = old.ns.ip(&["link", "show", &iface]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP still on the interface"
    );
    // The new place works again.
    ok(&old.ns, &["attach", "-i", &iface, "--mode", "generic"]);
    assert!(pins.link().exists());
}
