//! The agent's IPFIX export checked by real collectors, as root: a client namespace sends
//! known TCP, UDP and ICMP frames over IPv4 and IPv6 to a node namespace whose interface carries
//! the probe with flows on; the real agent drains the flow tables and exports IPFIX to nfdump's
//! `nfcapd` on the node's loopback while `tshark` captures the same stream there, and sends the
//! same records to central. What nfcapd stored (`nfdump -r`) and what central shows
//! (`/metrics.json`) must give every flow's exact packets and bytes, and tshark must decode
//! every message without a malformed packet or an expert warning, with the end reasons the
//! timeouts and TCP flags call for.

mod common;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use common::frames::{Key, Subnet, describe};
use xdt_testkit::{
    frames::*,
    lab::{self, Lab, Side},
    process::{free_port, sibling},
    root_or_skip,
};

const AGENT: &str = "ipfix-node";
/// 10.92.0.0/24 and fd00:92::/64.
const NET: Subnet = Subnet { v4: 92, v6: 0x92 };

/// Runs `command`, panicking with its stderr when it fails; its stdout.
fn output(command: &mut Command) -> String {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGTERM to the lab's process `name` (by its pid) and waits up to 10 s for it to exit.
fn stop(lab: &mut Lab, name: &str, pid: u32) {
    output(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab
            .processes
            .exited()
            .is_some_and(|e| e.starts_with(&format!("{name} exited")))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `name`'s log holds `text` (20 s at most).
fn wait_log(lab: &Lab, name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.processes.log(name).contains(text) {
        assert!(
            Instant::now() < deadline,
            "{name} never logged {text:?}: {}",
            lab.processes.log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn ipfix_to_nfcapd_and_tshark_gives_exact_flows() {
    if !root_or_skip("ipfix_to_nfcapd_and_tshark_gives_exact_flows") {
        return;
    }
    for tool in ["nfcapd", "nfdump", "tshark"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: cargo xtask setup --tests installs it"
        );
    }
    let mut lab = lab::lab(
        Side::unique("xic", "ic"),
        Side::unique("xin", "in"),
        1,
        "xdt-ipfix-",
    );
    let rules = lab
        .file(
            "ipfix.rules",
            "web proto tcp dport 80\nping6 proto icmpv6\n",
        )
        .expect("rules");
    output(
        lab::xdt(
            &lab,
            &[
                "attach",
                "-i",
                &lab.node_if,
                "--mode",
                "native",
                "--flows",
                "256",
            ],
        )
        .arg("--rules")
        .arg(&rules),
    );
    lab.on_drop(|lab| {
        lab::xdt(lab, &["detach", "-i", &lab.node_if]).output()?;
        Ok(format!("detached the probe from {}", lab.node_if))
    });
    let central = lab::start_central(&mut lab, &[]);
    let port = free_port();
    let store = lab.dir.join("nfcapd");
    std::fs::create_dir_all(&store).expect("nfcapd dir");
    let pcap = lab.dir.join("ipfix.pcapng");

    let mut tshark = lab.node.command("tshark");
    tshark
        .args(["-i", "lo", "-f", &format!("udp port {port}"), "-w"])
        .arg(&pcap);
    let tshark_pid = lab.processes.spawn("tshark", &mut tshark).expect("tshark");
    wait_log(&lab, "tshark", "Capturing on");
    let mut nfcapd = lab.node.command("nfcapd");
    nfcapd
        .args([
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "3600",
            "-w",
        ])
        .arg(&store);
    let nfcapd_pid = lab.processes.spawn("nfcapd", &mut nfcapd).expect("nfcapd");
    wait_log(&lab, "nfcapd", "Startup");

    let mut agent = lab.node.command(sibling("xdt-agent"));
    agent
        .args(["--interface", &lab.node_if, "--interval", "0.2"])
        .args(["--flow-idle", "1", "--flow-active", "1"])
        .args(["--ipfix", &format!("127.0.0.1:{port}")])
        .args(["--ipfix-template-refresh", "1", "--ipfix-domain", "4242"])
        .args(["--no-steer", "--log-level", "debug", "--agent-id", AGENT])
        .args(central.agent_args());
    let agent_pid = lab.processes.spawn("xdt-agent", &mut agent).expect("agent");
    wait_log(&lab, "xdt-agent", "flows: draining");

    // Flows that end by FIN (v4 40000 -> 80) and RST (v6 40003 -> 80), the others by idle.
    let mix: Vec<(Vec<u8>, usize)> = vec![
        (NET.v4(TCP, &tcp(40000, 80, 0x02, b"")), 1),
        (NET.v4(TCP, &tcp(40000, 80, 0x10, b"")), 1),
        (
            NET.v4(TCP, &tcp(40000, 80, 0x18, b"GET / HTTP/1.1\r\n")),
            12,
        ),
        (NET.v4(TCP, &tcp(40000, 80, 0x11, b"")), 1),
        (NET.v4(TCP, &tcp(40001, 80, 0x18, &[7; 300])), 5),
        (NET.v4(UDP, &udp(5353, 53, b"query")), 30),
        (NET.v4(UDP, &udp(5353, 123, &[0; 48])), 10),
        (NET.v4(ICMP, &icmp_echo(false, &[0; 56])), 15),
        (NET.v6(TCP, &tcp(40003, 80, 0x04, b"")), 2),
        (NET.v6(UDP, &udp(6000, 7000, &[2; 512])), 8),
        (NET.v6(ICMPV6, &icmp_echo(true, &[0; 56])), 12),
    ];
    lab::send_frames(&lab, &mix);
    // A long flow: a packet every 250 ms for 3 s, past the 1 s active timeout twice or more.
    let long = NET.v4(UDP, &udp(7777, 9999, &[1; 100]));
    for _ in 0..12 {
        lab::send_frames(&lab, &[(long.clone(), 1)]);
        std::thread::sleep(Duration::from_millis(250));
    }
    // Past the idle timeout (1 s) and a few drains.
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut lab, "xdt-agent", agent_pid);
    let agent_log = lab.processes.log("xdt-agent");
    stop(&mut lab, "nfcapd", nfcapd_pid);
    // tshark writes what it captured as it stops.
    std::thread::sleep(Duration::from_millis(300));
    stop(&mut lab, "tshark", tshark_pid);

    let mut want: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for (frame, count) in mix.iter().chain([(long.clone(), 12)].iter()) {
        let frame = describe(frame);
        let e = want.entry(frame.key).or_default();
        e.0 += *count as u64;
        e.1 += frame.ip_len * *count as u64;
    }

    // What nfcapd stored, summed per flow (the long flow comes in several records).
    let dump = output(Command::new("nfdump").arg("-R").arg(&store).args([
        "-q",
        "-N",
        "-o",
        "fmt:%pr|%sa|%sp|%da|%dp|%pkt|%byt",
    ]));
    let mut got: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    let mut records: BTreeMap<Key, usize> = BTreeMap::new();
    for line in dump.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(f.len(), 7, "nfdump line {line:?}");
        let protocol = match f[0] {
            "TCP" => TCP,
            "UDP" => UDP,
            "ICMP" => ICMP,
            "ICMP6" => ICMPV6,
            other => other.parse().expect("protocol"),
        };
        let dport = match f[4].split_once('.') {
            // ICMP: type.code
            Some((t, c)) => {
                (t.parse::<u16>().expect("type") << 8) | c.parse::<u16>().expect("code")
            }
            None => f[4].parse().expect("port"),
        };
        let key = Key {
            protocol,
            src: f[1].parse().expect("src"),
            src_port: f[2].parse().expect("sport"),
            dst: f[3].parse().expect("dst"),
            dst_port: dport,
        };
        let e = got.entry(key).or_default();
        e.0 += f[5].parse::<u64>().expect("packets");
        e.1 += f[6].parse::<u64>().expect("bytes");
        *records.entry(key).or_default() += 1;
    }
    assert_eq!(got, want, "nfdump:\n{dump}\nagent:\n{agent_log}");
    let long_key = describe(&long).key;
    assert!(
        records[&long_key] >= 2,
        "the active timeout cut the long flow: {dump}"
    );

    central_has_the_flows(&lab, &central, &want);

    // tshark: every message decodes, with no malformed packet and no expert warning.
    let decode = |extra: &[&str]| {
        output(
            Command::new("tshark")
                .arg("-r")
                .arg(&pcap)
                .args(["-d", &format!("udp.port=={port},cflow")])
                .args(extra),
        )
    };
    let verbose = decode(&["-V"]);
    assert!(verbose.contains("Version: 10"), "no IPFIX in the capture");
    assert!(!verbose.contains("Malformed"), "{verbose}");
    let expert = decode(&["-q", "-z", "expert,warn"]);
    assert!(
        !expert.contains("Warns") && !expert.contains("Errors"),
        "tshark's expert info: {expert}"
    );
    assert!(verbose.contains("Observation Domain Id: 4242"), "domain id");
    // End reasons per record: source port and flowEndReason, in message order.
    let fields = decode(&[
        "-T",
        "fields",
        "-e",
        "cflow.srcport",
        "-e",
        "cflow.dstport",
        "-e",
        "cflow.flow_end_reason",
    ]);
    let mut reasons: BTreeMap<(u16, u16), Vec<u8>> = BTreeMap::new();
    for line in fields.lines() {
        let cols: Vec<Vec<&str>> = line
            .split('\t')
            .map(|c| c.split(',').filter(|s| !s.is_empty()).collect())
            .collect();
        if cols.len() < 3 {
            continue;
        }
        for ((s, d), r) in cols[0].iter().zip(&cols[1]).zip(&cols[2]) {
            reasons
                .entry((s.parse().expect("sport"), d.parse().expect("dport")))
                .or_default()
                .push(r.parse().expect("reason"));
        }
    }
    assert_eq!(reasons[&(40000, 80)], [3], "FIN ends the flow: {fields}");
    assert_eq!(reasons[&(40003, 80)], [3], "RST ends the flow: {fields}");
    assert_eq!(reasons[&(5353, 53)], [1], "idle: {fields}");
    // Active timeouts cut the long flow. Its last piece ends by the idle timeout only when it
    // holds one packet: with both timeouts at 1 s, a piece's active timeout (its first packet
    // plus 1 s) comes before its idle timeout (its last packet plus 1 s), and the flow then
    // ends idle with nothing left to export.
    let long_reasons = &reasons[&(7777, 9999)];
    let (last, before) = long_reasons.split_last().expect("records of the long flow");
    assert!(
        !before.is_empty() && before.iter().all(|r| *r == 2) && matches!(last, 1 | 2),
        "active timeouts, then active or idle: {long_reasons:?}"
    );
}

/// Central got every record: its totals are the traffic's, each flow it names (the 10 largest
/// by bytes and by packets) has exactly its packets and bytes, and what it does not name adds
/// up to `other`.
fn central_has_the_flows(lab: &Lab, central: &lab::Central, want: &BTreeMap<Key, (u64, u64)>) {
    let sum = |flows: &BTreeMap<Key, (u64, u64)>| {
        flows
            .values()
            .fold((0, 0), |(p, b), (wp, wb)| (p + wp, b + wb))
    };
    let (packets, bytes) = sum(want);
    let node = central.node_when(lab, AGENT, "every flow record", |node| {
        node["flows"]["total"]["packets"] == packets
    });
    let flows = &node["flows"];
    assert_eq!(flows["total"]["bytes"], bytes, "{flows:#}");
    assert_eq!(
        node["agent"]["flows"]["dropped_records"], 0,
        "{:#}",
        node["agent"]
    );
    for (ranking, other) in [
        ("top_bytes", "other_by_bytes"),
        ("top_packets", "other_by_packets"),
    ] {
        let named = flows[ranking].as_array().expect("ranking");
        assert_eq!(named.len(), want.len().min(10), "{ranking}: {flows:#}");
        let mut rest = want.clone();
        for flow in named {
            let key = Key::of_json(flow);
            let count = rest
                .remove(&key)
                .unwrap_or_else(|| panic!("central names {key:?}, not sent: {flows:#}"));
            assert_eq!(
                (flow["packets"].as_u64(), flow["bytes"].as_u64()),
                (Some(count.0), Some(count.1)),
                "{key:?} in {ranking}"
            );
        }
        let (p, b) = sum(&rest);
        assert_eq!(
            (
                flows[other]["packets"].as_u64(),
                flows[other]["bytes"].as_u64()
            ),
            (Some(p), Some(b)),
            "{other}: the flows not named ({rest:?})"
        );
    }
}
