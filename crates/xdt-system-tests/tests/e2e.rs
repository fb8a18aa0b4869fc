//! End to end, as root: the `xdt` binary attaches the probe to a veth in a node namespace; a
//! client namespace sends a known mix of frames over the veth with an AF_PACKET socket (IPv6 and
//! ARP are off on the pair, so nothing else crosses it), and `xdt stats --json` must show exact
//! counts. Each test cleans up its namespaces and pins, also when it fails.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use xdt_testkit::{frames::*, root_or_skip};

const MIX_RULES: &str = "\
web   dst 10.88.0.0/24 proto tcp dport 80
dns   proto udp dport 53 action sample 10
web6  dst fd00:88::/64 proto tcp
ping6 proto icmpv6
";

fn traffic_mix(mode: &str) {
    let lab = Lab::new();
    let attached = lab.attach(mode, MIX_RULES);
    let v4 = |proto, l4: Vec<u8>| ethernet(ETH_P_IP, &ipv4(CLIENT4, NODE4, proto, &l4));
    let v6f = |proto, l4: Vec<u8>| ethernet(ETH_P_IPV6, &ipv6(client6(), node6(), proto, &l4));
    let mix: Vec<(Vec<u8>, usize, &str)> = vec![
        (v4(TCP, tcp(40000, 80, 0x02, b"")), 50, "web"),
        (v4(TCP, tcp(40000, 22, 0x02, b"ssh")), 20, ""),
        (v4(UDP, udp(5353, 53, b"query")), 30, "dns"),
        (v4(UDP, udp(5353, 123, b"ntp")), 10, ""),
        (v4(ICMP, icmp_echo(false, &[0; 56])), 15, ""),
        (v6f(TCP, tcp(40000, 443, 0x02, b"")), 25, "web6"),
        (v6f(ICMPV6, icmp_echo(true, &[0; 56])), 12, "ping6"),
        (v6f(UDP, udp(5353, 53, b"q6")), 5, "dns"),
        (ethernet(ETH_P_ARP, &[0; 28]), 4, ""),
    ];
    let frames: Vec<(Vec<u8>, usize)> = mix.iter().map(|(f, n, _)| (f.clone(), *n)).collect();
    lab.send(&frames);

    let count = |pick: &dyn Fn(&Vec<u8>) -> bool| -> u64 {
        mix.iter()
            .filter(|(f, _, _)| pick(f))
            .map(|(_, n, _)| *n as u64)
            .sum()
    };
    let ethertype = |f: &Vec<u8>| u16::from_be_bytes([f[12], f[13]]);
    let proto = |f: &Vec<u8>| match ethertype(f) {
        0x0800 => f[14 + 9],
        0x86dd => f[14 + 6],
        _ => 0,
    };
    let total = count(&|_| true);
    let stats = lab.wait_for_total(total);
    assert_eq!(stats["total_packets"], total, "{stats}");
    assert_eq!(
        stats["total_bytes"],
        mix.iter()
            .map(|(f, n, _)| (f.len() * n) as u64)
            .sum::<u64>()
    );
    assert_eq!(stats["ipv4_packets"], count(&|f| ethertype(f) == 0x0800));
    assert_eq!(stats["ipv6_packets"], count(&|f| ethertype(f) == 0x86dd));
    assert_eq!(stats["non_ip_packets"], 4);
    assert_eq!(stats["tcp_packets"], count(&|f| proto(f) == TCP));
    assert_eq!(stats["udp_packets"], count(&|f| proto(f) == UDP));
    assert_eq!(
        stats["icmp_packets"],
        count(&|f| proto(f) == ICMP || proto(f) == ICMPV6)
    );
    assert_eq!(stats["other_packets"], 4);
    for name in ["web", "dns", "web6", "ping6"] {
        let packets: u64 = mix
            .iter()
            .filter(|(_, _, l)| *l == name)
            .map(|(_, n, _)| *n as u64)
            .sum();
        let bytes: u64 = mix
            .iter()
            .filter(|(_, _, l)| *l == name)
            .map(|(f, n, _)| (f.len() * n) as u64)
            .sum();
        assert_eq!(label(&stats, name), (packets, bytes), "label {name}");
    }
    assert_eq!(stats["matched_packets"], 50 + 30 + 25 + 12 + 5);
    assert_eq!(
        stats["sampled_events"], 3,
        "1 of every 10 of 35 dns packets (one CPU sends)"
    );
    assert_eq!(stats["lost_events"], 0);
    assert_eq!(stats["errors"], 0);

    // The sampled events, through the CLI.
    let out = lab.ok(&[
        "events",
        "-i",
        &lab.node_if,
        "--json",
        "--count",
        "3",
        "--timeout",
        "5",
    ]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    assert_eq!(events.len(), 3, "{out}");
    assert!(
        events
            .iter()
            .all(|e| e["label"] == "dns" && e["dst_port"] == 53 && e["action"] == "sample")
    );

    // Status shows the attachment.
    let status: Value =
        serde_json::from_str(&lab.ok(&["status", "-i", &lab.node_if, "--json"])).expect("status");
    assert_eq!(status[0]["mode"], mode);
    assert_eq!(status[0]["rules"], 4);
    assert_eq!(status[0]["program_id"], attached.program_id);

    // Detach leaves no pin and no program behind.
    let program_id = attached.program_id;
    assert!(program_exists(program_id));
    lab.ok(&["detach", "-i", &lab.node_if]);
    std::mem::forget(attached);
    assert!(
        !xdt_datapath_pin_dir(&lab, &lab.node_if).exists(),
        "pins left behind"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while program_exists(program_id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !program_exists(program_id),
        "program {program_id} still loaded after detach"
    );
    let link = lab
        .node
        .ip(&["link", "show", &lab.node_if])
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP still on the interface"
    );
}

/// Where the pins of `iface` in the lab's node namespace are.
fn xdt_datapath_pin_dir(lab: &Lab, iface: &str) -> PathBuf {
    let netns = xdt_datapath::paths::Netns::of_file(std::path::Path::new(&lab.node.path()))
        .expect("node namespace");
    xdt_datapath::paths::PinDir::of(netns, iface)
        .path()
        .to_owned()
}

#[test]
fn traffic_mix_native() {
    if root_or_skip("traffic_mix_native") {
        traffic_mix("native");
    }
}

#[test]
fn traffic_mix_generic() {
    if root_or_skip("traffic_mix_generic") {
        traffic_mix("generic");
    }
}

#[test]
fn rules_replaced_under_traffic_lose_no_count() {
    if !root_or_skip("rules_replaced_under_traffic_lose_no_count") {
        return;
    }
    let lab = Lab::new();
    let _attached = lab.attach("native", "web dst 10.88.0.0/24\n");
    let a = lab.file("a.rules", "web dst 10.88.0.0/24\n");
    let b = lab.file(
        "b.rules",
        "other dst 10.99.0.0/16\nweb dst 10.88.0.5 proto tcp priority 1\nweb proto tcp\n",
    );
    let frame = ethernet(
        ETH_P_IP,
        &ipv4(CLIENT4, NODE4, TCP, &tcp(40000, 80, 0x02, b"")),
    );
    let sent = 30_000;
    let mut loads = 0;
    std::thread::scope(|s| {
        let sender = s.spawn(|| lab.send(&[(frame.clone(), sent)]));
        while !sender.is_finished() || loads < 4 {
            lab.ok(&[
                "rules",
                "load",
                "-i",
                &lab.node_if,
                if loads % 2 == 0 { &b } else { &a },
            ]);
            loads += 1;
            assert!(loads < 10_000, "sender never finished");
        }
    });
    let stats = lab.wait_for_total(sent as u64);
    assert!(loads >= 4);
    assert_eq!(stats["total_packets"], sent as u64);
    assert_eq!(
        label(&stats, "web").0,
        sent as u64,
        "after {loads} rule swaps: {stats}"
    );
    assert_eq!(stats["errors"], 0);
}

#[test]
fn clear_errors() {
    if !root_or_skip("clear_errors") {
        return;
    }
    let lab = Lab::new();
    let iface = lab.node_if.clone();

    assert!(
        lab.fails(&["attach", "-i", "xdt-none0"])
            .contains("unknown interface \"xdt-none0\"")
    );
    assert!(
        lab.fails(&["stats", "-i", &iface])
            .contains("xdt is not attached to")
    );
    let bad = lab.file(
        "bad.rules",
        "ok dst 10.0.0.0/8\nbad proto tcp dport 80-70\n",
    );
    let e = lab.fails(&["attach", "-i", &iface, "--rules", &bad]);
    assert!(e.contains("bad.rules:2: bad port \"80-70\""), "{e}");
    assert!(
        !xdt_datapath_pin_dir(&lab, &iface).exists(),
        "a failed attach left pins"
    );

    // Another XDP program holds the interface: attached (and held) from a thread inside the
    // node namespace, so the ifindex is the veth's.
    let e = lab
        .node
        .enter(|| {
            let mut other = aya::Ebpf::load(xdt_datapath::probe::BENCH_PASS_OBJECT).expect("load");
            let program: &mut aya::programs::Xdp = other
                .program_mut("bench_pass")
                .expect("program")
                .try_into()
                .expect("xdp");
            program.load().expect("load program");
            program
                .attach(&iface, aya::programs::XdpMode::Skb)
                .expect("attach other");
            lab.fails(&["attach", "-i", &iface])
        })
        .expect("node namespace");
    assert!(e.contains("another XDP program is already attached"), "{e}");
    assert!(
        !xdt_datapath_pin_dir(&lab, &iface).exists(),
        "a failed attach left pins"
    );

    let attached = lab.attach("generic", "web dst 10.88.0.0/24\n");
    let e = lab.fails(&["attach", "-i", &iface]);
    assert!(e.contains("already attached"), "{e}");
    // A bad rules file changes nothing.
    let before = lab.ok(&["rules", "list", "-i", &iface]);
    let e = lab.fails(&["rules", "load", "-i", &iface, &bad]);
    assert!(e.contains("bad.rules:2:"), "{e}");
    assert_eq!(lab.ok(&["rules", "list", "-i", &iface]), before);
    let e = lab.fails(&["rules", "add", "-i", &iface, "x", "dst", "300.1.1.1"]);
    assert!(e.contains("bad CIDR \"300.1.1.1\""), "{e}");
    let e = lab.fails(&["rules", "add", "-i", &iface, "x", "proto", "sctpish"]);
    assert!(e.contains("bad protocol"), "{e}");
    let e = lab.fails(&["rules", "del", "-i", &iface, "7"]);
    assert!(e.contains("no rule 7"), "{e}");
    assert_eq!(lab.ok(&["rules", "list", "-i", &iface]), before);
    drop(attached);

    // Rule table full.
    let small = {
        let file = lab.file("one.rules", "a dst 10.0.0.0/8\n");
        lab.ok(&[
            "attach",
            "-i",
            &iface,
            "--mode",
            "generic",
            "--max-rules",
            "2",
            "--rules",
            &file,
        ]);
        Attached {
            lab: &lab,
            program_id: 0,
        }
    };
    lab.ok(&["rules", "add", "-i", &iface, "b", "dst", "10.1.0.0/16"]);
    let e = lab.fails(&["rules", "add", "-i", &iface, "c", "dst", "10.2.0.0/16"]);
    assert!(
        e.contains("rule table full: 3 rules, the probe has room for 2"),
        "{e}"
    );
    assert_eq!(lab.ok(&["rules", "list", "-i", &iface]).lines().count(), 2);

    // No privileges (in the node namespace, where the probe is).
    let out = lab
        .node
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            xdt_testkit::process::xdt(),
            "stats",
            "-i",
            &iface,
        ])
        .output()
        .expect("setpriv");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("xdt needs root"), "{e}");

    // bpffs missing (in a private mount namespace without it).
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "umount /sys/fs/bpf && {xdt} stats -i {iface}",
                xdt = xdt_testkit::process::xdt()
            ),
        ])
        .output()
        .expect("unshare");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bpffs is not mounted at /sys/fs/bpf"), "{e}");

    // attach mounts bpffs itself when it is missing (again in a private mount namespace: the
    // pins vanish with it, and the program with the last process holding it).
    drop(small);
    let script = format!(
        "umount /sys/fs/bpf && {xdt} attach -i {iface} --mode generic && {xdt} status -i {iface} --json \
         && {xdt} detach -i {iface}",
        xdt = xdt_testkit::process::xdt()
    );
    let out = lab
        .node
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("attached to") && stdout.contains("\"mode\": \"generic\""),
        "{stdout}"
    );
}

#[test]
fn stats_watch_shows_rates() {
    if !root_or_skip("stats_watch_shows_rates") {
        return;
    }
    let lab = Lab::new();
    let _attached = lab.attach("native", "");
    let watch = lab
        .node
        .command(xdt_testkit::process::xdt())
        .args([
            "stats",
            "-i",
            &lab.node_if,
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "6",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let frame = ethernet(ETH_P_IP, &ipv4(CLIENT4, NODE4, UDP, &udp(1, 9, &[0; 100])));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sent = 0;
    while Instant::now() < deadline {
        lab.send(&[(frame.clone(), 500)]);
        sent += 500;
    }
    let out = watch.wait_with_output().expect("watch");
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(
        lines
            .iter()
            .any(|l| l["packets_per_second"].as_f64() > Some(0.0)),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["bits_per_second"].as_f64() > Some(0.0)),
        "{lines:?}"
    );
    let totals: Vec<u64> = lines
        .iter()
        .map(|l| l["total_packets"].as_u64().expect("total"))
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] <= w[1]),
        "totals go back: {totals:?}"
    );
    assert!(totals[5] <= sent);
}
