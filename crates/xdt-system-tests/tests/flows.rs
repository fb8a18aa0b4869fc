//! `xdt flows` with real traffic, as root: a client namespace sends known frames over a veth
//! (AF_PACKET, so every byte is known) or opens real TCP connections to a node namespace whose
//! interface carries the probe with flows on; `xdt flows --json` must give every flow with its
//! exact packets and bytes, TCP flags, label and handshake time, a full table must be counted
//! exactly, and flows off must cost nothing. Then softflowd on the same interface with the same
//! traffic, as the reference: the same flow keys with the same packet counts.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
    net::{IpAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::frames::{Key, Subnet, describe};
use serde_json::Value;
use xdt_common::flows::{FlowKey, FlowRecord, TABLE_MAPS};
use xdt_testkit::{
    frames::*,
    lab::{self, Lab, Side},
    net::FrameSender,
    root_or_skip,
};

/// 10.91.0.0/24 and fd00:91::/64.
const NET: Subnet = Subnet { v4: 91, v6: 0x91 };

/// Quiet ends (no addresses: no ARP, no IPv6 solicitations), so only the test's frames cross.
fn quiet_lab() -> Lab {
    lab::lab(
        Side::unique("xfc", "fc"),
        Side::unique("xfn", "fn"),
        1,
        "xdt-flows-",
    )
}

/// `xdt attach --flows N` on the node's interface, detached when the lab is dropped; the pin
/// directory.
fn attach(lab: &mut Lab, flows: Option<u32>, rules: &str) -> PathBuf {
    let file = lab.file("flows.rules", rules).expect("rules file");
    let mut command = lab::xdt(
        lab,
        &["attach", "-i", &lab.node_if, "--mode", "native", "--json"],
    );
    command.arg("--rules").arg(&file);
    if let Some(n) = flows {
        command.args(["--flows", &n.to_string()]);
    }
    let out = command.output().expect("xdt attach");
    assert!(
        out.status.success(),
        "xdt attach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.on_drop(|lab| {
        lab::xdt(lab, &["detach", "-i", &lab.node_if]).output()?;
        Ok(format!("detached the probe from {}", lab.node_if))
    });
    let report: Value = serde_json::from_slice(&out.stdout).expect("attach json");
    PathBuf::from(report["pin_dir"].as_str().expect("pin_dir"))
}

/// Sends each frame `count` times from the client, from one CPU (in order).
fn send(lab: &Lab, frames: &[(Vec<u8>, usize)]) {
    let iface = lab.client_if.clone();
    lab.client
        .enter(move || {
            FrameSender::pin_to_cpu(0);
            let sender = FrameSender::open(&iface);
            for (frame, count) in frames {
                for _ in 0..*count {
                    sender.send(frame);
                }
            }
        })
        .expect("client namespace");
}

/// `xdt stats --json` once the probe has seen `total` packets (10 s at most).
fn wait_for_total(lab: &Lab, total: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = lab::stats(lab);
        if stats["total_packets"].as_u64() >= Some(total) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn flows_json(lab: &Lab, extra: &[&str]) -> Value {
    let mut args = vec!["flows", "-i", &lab.node_if, "--json"];
    args.extend_from_slice(extra);
    let out = lab::xdt(lab, &args).output().expect("xdt flows");
    assert!(
        out.status.success(),
        "xdt flows: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("flows json")
}

/// What a test expects of one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Expected {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    label: Option<String>,
}

/// The flows a mix of frames makes: per key, packets, IP bytes and the OR of TCP flags.
fn expected(mix: &[(Vec<u8>, usize, Option<&str>)]) -> BTreeMap<Key, Expected> {
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for (frame, count, label) in mix {
        let frame = describe(frame);
        let e = out.entry(frame.key).or_default();
        e.packets += *count as u64;
        e.bytes += frame.ip_len * *count as u64;
        e.tcp_flags |= frame.tcp_flags;
        e.label = label.map(str::to_owned);
    }
    out
}

/// Several flows per family and protocol, with the rules that label some of them.
const RULES: &str = "web proto tcp dport 80\nping6 proto icmpv6\n";

fn mix() -> Vec<(Vec<u8>, usize, Option<&'static str>)> {
    vec![
        (NET.v4(TCP, &tcp(40000, 80, 0x02, b"")), 1, Some("web")),
        (NET.v4(TCP, &tcp(40000, 80, 0x10, b"")), 1, Some("web")),
        (
            NET.v4(TCP, &tcp(40000, 80, 0x18, b"GET / HTTP/1.1\r\n")),
            12,
            Some("web"),
        ),
        (NET.v4(TCP, &tcp(40000, 80, 0x11, b"")), 1, Some("web")),
        (
            NET.v4(TCP, &tcp(40001, 80, 0x18, &[7; 300])),
            5,
            Some("web"),
        ),
        (NET.v4(TCP, &tcp(40002, 22, 0x10, b"ssh")), 9, None),
        (NET.v4(UDP, &udp(5353, 53, b"query")), 30, None),
        (NET.v4(UDP, &udp(5354, 53, b"query-2")), 3, None),
        (NET.v4(UDP, &udp(5353, 123, &[0; 48])), 10, None),
        (NET.v4(ICMP, &icmp_echo(false, &[0; 56])), 15, None),
        (NET.v6(TCP, &tcp(40000, 443, 0x02, b"")), 1, None),
        (NET.v6(TCP, &tcp(40000, 443, 0x18, &[1; 1000])), 25, None),
        (NET.v6(TCP, &tcp(40003, 80, 0x04, b"")), 2, Some("web")),
        (NET.v6(UDP, &udp(5353, 53, b"q6")), 5, None),
        (NET.v6(UDP, &udp(6000, 7000, &[2; 512])), 8, None),
        (
            NET.v6(ICMPV6, &icmp_echo(true, &[0; 56])),
            12,
            Some("ping6"),
        ),
    ]
}

#[test]
fn known_traffic_gives_exact_flows() {
    if !root_or_skip("known_traffic_gives_exact_flows") {
        return;
    }
    let mut lab = quiet_lab();
    attach(&mut lab, Some(256), RULES);
    let mix = mix();
    let frames: Vec<(Vec<u8>, usize)> = mix.iter().map(|(f, n, _)| (f.clone(), *n)).collect();
    send(&lab, &frames);
    let total: usize = frames.iter().map(|(_, n)| n).sum();
    let stats = wait_for_total(&lab, total as u64);
    assert_eq!(stats["total_packets"], total, "{stats}");

    let want = expected(&mix);
    let report = flows_json(&lab, &[]);
    assert_eq!(report["flow_table_full"], 0, "{report}");
    assert_eq!(report["table_entries"], 256);
    let flows = report["flows"].as_array().expect("flows");
    let got: BTreeMap<Key, Expected> = flows
        .iter()
        .map(|f| {
            (
                Key::of_json(f),
                Expected {
                    packets: f["packets"].as_u64().expect("packets"),
                    bytes: f["bytes"].as_u64().expect("bytes"),
                    tcp_flags: u8::try_from(f["tcp_flags"].as_u64().expect("flags")).expect("u8"),
                    label: f["label"].as_str().map(str::to_owned),
                },
            )
        })
        .collect();
    assert_eq!(got, want, "xdt flows: {report}");
    assert_eq!(report["flow_count"], want.len());
    for f in flows {
        assert_eq!(f["vlans"], serde_json::json!([0, 0]));
        assert!(f["first_seen_ns"].as_u64() <= f["last_seen_ns"].as_u64());
        assert!(f["last_seen_ns"].as_u64() <= report["monotonic_now_ns"].as_u64());
        // The flows whose first segment was a SYN and a later one an ACK (v4 40000 -> 80,
        // v6 40000 -> 443) have a handshake time as the hook saw them; no other has one.
        let flags = f["tcp_flags"].as_u64().expect("flags");
        let handshake = f["handshake_ns"].as_u64();
        if flags & 0x12 == 0x12 {
            assert!(handshake > Some(0), "{f}");
        } else {
            assert_eq!(handshake, None, "{f}");
        }
    }

    // --top and --sort: the largest first, ties broken by key.
    let mut by_packets: Vec<(&Key, &Expected)> = want.iter().collect();
    by_packets.sort_by(|a, b| {
        b.1.packets
            .cmp(&a.1.packets)
            .then(b.1.bytes.cmp(&a.1.bytes))
    });
    let top = flows_json(&lab, &["--top", "3", "--sort", "packets"]);
    let top_keys: Vec<Key> = top["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(Key::of_json)
        .collect();
    let want_keys: Vec<Key> = by_packets.iter().take(3).map(|(k, _)| **k).collect();
    assert_eq!(top_keys, want_keys, "{top}");
    let top_bytes = flows_json(&lab, &["--top", "1"]);
    let biggest = want.iter().max_by_key(|(_, e)| e.bytes).expect("a flow");
    assert_eq!(Key::of_json(&top_bytes["flows"][0]), *biggest.0);

    // The table as text, for an operator.
    let out = lab::xdt(&lab, &["flows", "-i", &lab.node_if])
        .output()
        .expect("xdt flows");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("[fd00:91::1]:6000"),
        "{text}"
    );
}

#[test]
fn a_full_table_is_counted_exactly() {
    const ENTRIES: u16 = 16;
    const EXTRA: u16 = 5;
    const ROUNDS: usize = 3;
    if !root_or_skip("a_full_table_is_counted_exactly") {
        return;
    }
    let mut lab = quiet_lab();
    attach(&mut lab, Some(u32::from(ENTRIES)), "");
    // Round after round, flow by flow: the first ENTRIES flows get the records.
    let mut frames = Vec::new();
    for _ in 0..ROUNDS {
        for port in 0..ENTRIES + EXTRA {
            frames.push((NET.v4(UDP, &udp(20000 + port, 53, b"x")), 1));
        }
    }
    send(&lab, &frames);
    let total = frames.len() as u64;
    let stats = wait_for_total(&lab, total);
    assert_eq!(stats["total_packets"], total, "{stats}");
    let refused = u64::from(EXTRA) * ROUNDS as u64;
    assert_eq!(stats["flow_table_full"], refused, "{stats}");
    assert_eq!(stats["udp_packets"], total, "{stats}");
    let report = flows_json(&lab, &[]);
    assert_eq!(report["flow_count"], ENTRIES, "{report}");
    assert_eq!(report["flow_table_full"], refused);
    for f in report["flows"].as_array().expect("flows") {
        let port = f["src_port"].as_u64().expect("port");
        assert!(port < 20000 + u64::from(ENTRIES), "{f}");
        assert_eq!(f["packets"], ROUNDS, "{f}");
    }
}

#[test]
fn flows_off_cost_nothing_and_say_how_to_turn_them_on() {
    if !root_or_skip("flows_off_cost_nothing_and_say_how_to_turn_them_on") {
        return;
    }
    let mut lab = quiet_lab();
    let pins = attach(&mut lab, None, RULES);
    let frames: Vec<(Vec<u8>, usize)> = mix().iter().map(|(f, n, _)| (f.clone(), *n)).collect();
    send(&lab, &frames);
    let total: usize = frames.iter().map(|(_, n)| n).sum();
    let stats = wait_for_total(&lab, total as u64);
    assert_eq!(stats["total_packets"], total, "{stats}");
    assert_eq!(stats["flow_table_full"], 0, "{stats}");
    for name in TABLE_MAPS {
        assert_eq!(records(&pins.join(name)), 0, "{name} has records");
    }
    let out = lab::xdt(&lab, &["flows", "-i", &lab.node_if])
        .output()
        .expect("xdt flows");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xdt flows succeeded with flows off");
    assert!(
        error.contains("flows are off") && error.contains("--flows N"),
        "{error}"
    );
}

/// Records in a pinned flow table.
fn records(pin: &Path) -> usize {
    let data = aya::maps::MapData::from_pin(pin).expect("open the pinned flow table");
    let table: aya::maps::HashMap<_, FlowKey, FlowRecord> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
    table.keys().count()
}

#[test]
fn inbound_tcp_handshakes_are_timed() {
    if !root_or_skip("inbound_tcp_handshakes_are_timed") {
        return;
    }
    let mut lab = lab::lab(
        Side::unique("xfc", "fc")
            .v4("10.91.0.1/24")
            .v6("fd00:91::1/64"),
        Side::unique("xfn", "fn")
            .v4("10.91.0.2/24")
            .v6("fd00:91::2/64"),
        1,
        "xdt-flows-",
    );
    attach(&mut lab, Some(1024), "");
    let mut timed = HashMap::new();
    for (node, client_ip) in [("10.91.0.2", "10.91.0.1"), ("[fd00:91::2]", "fd00:91::1")] {
        let address = format!("{node}:8090");
        let listen = address.clone();
        let listener = lab
            .node
            .enter(move || TcpListener::bind(&listen))
            .expect("node namespace")
            .expect("listen");
        // The SYN leaves after `start`, the ACK before connect returns.
        let (port, elapsed) = lab
            .client
            .enter(move || {
                let start = Instant::now();
                let stream = TcpStream::connect(&address).expect("connect");
                let elapsed = start.elapsed();
                (stream.local_addr().expect("local address").port(), elapsed)
            })
            .expect("client namespace");
        let (mut accepted, _) = listener.accept().expect("accept");
        let mut rest = Vec::new();
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = accepted.read_to_end(&mut rest);
        timed.insert(client_ip.parse::<IpAddr>().expect("ip"), (port, elapsed));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = flows_json(&lab, &[]);
        let done = report["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .filter(|f| {
                f["protocol"] == 6 && f["dst_port"] == 8090 && !f["handshake_ns"].is_null()
            });
        if done.count() == 2 || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (client, (port, elapsed)) in &timed {
        let flow = report["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .find(|f| {
                f["protocol"] == 6
                    && f["dst_port"] == 8090
                    && f["src_port"] == *port
                    && f["src"].as_str() == Some(&client.to_string())
            })
            .unwrap_or_else(|| panic!("no flow from {client}:{port}: {report}"));
        let handshake = Duration::from_nanos(flow["handshake_ns"].as_u64().unwrap_or(0));
        // Between the SYN's and the ACK's departure, plus the little the ACK may take to
        // reach the hook after connect() returned.
        assert!(
            handshake > Duration::ZERO && handshake <= *elapsed + Duration::from_millis(5),
            "handshake {handshake:?}, connect took {elapsed:?}: {flow}"
        );
        // SYN, ACK, then FIN when the client closed.
        let flags = flow["tcp_flags"].as_u64().expect("flags");
        assert_eq!(flags & 0x13, 0x13, "{flow}");
    }
}

/// softflowd (Debian's) on the node's interface is the reference: it must see the same flows
/// with the same packet and byte (IP octet) counts as `xdt flows`.
#[test]
fn softflowd_sees_the_same_flows() {
    if !root_or_skip("softflowd_sees_the_same_flows") {
        return;
    }
    let softflowd = PathBuf::from("/usr/sbin/softflowd");
    if !softflowd.exists() {
        xdt_testkit::skip_outside_ci(
            "softflowd_sees_the_same_flows",
            "softflowd is missing (apt-get install softflowd, or cargo xtask setup --tests)",
        );
        return;
    }
    let mut lab = quiet_lab();
    attach(&mut lab, Some(256), RULES);
    // softflowd cannot start without its export socket, which needs a loopback that is up.
    lab.node
        .ip(&["link", "set", "lo", "up"])
        .expect("loopback up");
    let control = lab.dir.join("softflowd.ctl");
    let mut command = lab.node.command(&softflowd);
    command
        .args(["-d", "-i", &lab.node_if, "-c"])
        .arg(&control)
        .arg("-p")
        .arg(lab.dir.join("softflowd.pid"))
        // An export target is required; nothing listens there and nothing needs to.
        .args(["-n", "127.0.0.1:9995", "-v", "10", "-T", "full"]);
    lab.processes
        .spawn("softflowd", &mut command)
        .expect("start softflowd");
    let ctl = softflowd.with_file_name("softflowctl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while softflowctl(&lab, &ctl, &control, "statistics").is_none_or(|s| s.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "softflowd did not come up: {}",
            lab.processes.log("softflowd")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mix = mix();
    let frames: Vec<(Vec<u8>, usize)> = mix.iter().map(|(f, n, _)| (f.clone(), *n)).collect();
    send(&lab, &frames);
    let total: usize = frames.iter().map(|(_, n)| n).sum();
    wait_for_total(&lab, total as u64);

    let ours: BTreeMap<Key, (u64, u64)> = flows_json(&lab, &[])["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            let count = |name: &str| f[name].as_u64().expect("count");
            (Key::of_json(f), (count("packets"), count("bytes")))
        })
        .collect();
    // softflowd's libpcap (TPACKET_V3) hands packets over a block at a time, and a block of
    // a quiet link is not passed on for a long time: push the test's packets through with
    // non-IP frames that softflowd ignores and that make no flow of ours either.
    let filler = ethernet(0x88b5, &[0; 1400]);
    let mut dump = String::new();
    let mut theirs = BTreeMap::new();
    for _ in 0..40 {
        dump = softflowctl(&lab, &ctl, &control, "dump-flows").unwrap_or_default();
        theirs = parse_softflowd(&dump);
        if theirs.values().map(|(packets, _)| packets).sum::<u64>() >= total as u64 {
            break;
        }
        send(&lab, &[(filler.clone(), 200)]);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!theirs.is_empty(), "softflowd saw nothing: {dump}");
    assert_eq!(
        ours, theirs,
        "xdt flows (left) and softflowd (right) disagree"
    );
}

fn softflowctl(lab: &Lab, ctl: &Path, control: &Path, command: &str) -> Option<String> {
    let out = lab
        .node
        .command(ctl)
        .arg("-c")
        .arg(control)
        .arg(command)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// softflowd keeps a flow as one bidirectional entry; each direction that saw packets is one
/// of ours, with its packets and octets. Lines of `softflowctl dump-flows` look like
/// `ACTIVE seq:1 [10.91.0.1]:40000 <> [10.91.0.2]:80 proto:6 octets>:B packets>:N octets<:B2
/// packets<:M ...` (">" from the first address to the second).
fn parse_softflowd(dump: &str) -> BTreeMap<Key, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in dump.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(arrow) = words.iter().position(|w| *w == "<>") else {
            continue;
        };
        let endpoint = |w: &str| -> Option<(IpAddr, u16)> {
            let (addr, port) = w.rsplit_once("]:")?;
            Some((
                addr.trim_start_matches('[').parse().ok()?,
                port.parse().ok()?,
            ))
        };
        let (Some(a), Some(b)) = (endpoint(words[arrow - 1]), endpoint(words[arrow + 1])) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            words
                .iter()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let Some(protocol) = field("proto:").and_then(|p| u8::try_from(p).ok()) else {
            continue;
        };
        let forward = (field("packets>:"), field("octets>:"));
        let backward = (field("packets<:"), field("octets<:"));
        for (from, to, (packets, octets)) in [(a, b, forward), (b, a, backward)] {
            if let (Some(packets), Some(octets)) = (packets.filter(|&n| n > 0), octets) {
                let key = Key {
                    protocol,
                    src: from.0,
                    src_port: from.1,
                    dst: to.0,
                    dst_port: to.1,
                };
                let entry: &mut (u64, u64) = out.entry(key).or_default();
                entry.0 += packets;
                entry.1 += octets;
            }
        }
    }
    out
}

#[test]
fn softflowd_dump_lines_parse() {
    let dump = "ACTIVE seq:3 [10.91.0.1]:5353 <> [10.91.0.2]:53 proto:17 octets>:990 \
                packets>:30 octets<:0 packets<:0 start:2026-11-29T22:00:00.000 \
                finish:2026-11-29T22:00:01.000 tcp>:00 tcp<:00 flowlabel>:00000000 \
                flowlabel<:00000000\n";
    let flows = parse_softflowd(dump);
    let key = Key {
        protocol: 17,
        src: "10.91.0.1".parse().expect("ip"),
        src_port: 5353,
        dst: "10.91.0.2".parse().expect("ip"),
        dst_port: 53,
    };
    assert_eq!(flows.get(&key), Some(&(30, 990)));
    assert_eq!(flows.len(), 1);
}
