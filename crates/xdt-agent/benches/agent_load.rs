//! Agent RSS and CPU at fixed sampled-event rates. As root, after `cargo build --release
//! --workspace`: `cargo bench -p xdt-agent --bench agent_load` (docs/benchmarks.md).
//!
//! A client namespace sends TCP frames over a veth pair at a paced rate to a node namespace
//! whose probe samples every packet (`action sample 1`), so packets/s = events/s. The real
//! `xdt-agent` and `xdt-central` (release builds) run; the agent's resident memory (VmRSS, peak
//! over the run) and CPU time (utime + stime from /proc) are measured over each run, and
//! central's event count is checked against the probe's.
#![expect(clippy::cast_precision_loss, reason = "rates and sizes for a report")]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use xdt_common::counters::Counter;
use xdt_datapath::{
    attach::{self, Mode},
    probe::{Capacity, ProbeMaps},
    rules::parse_rules,
};
use xdt_testkit::{
    frames::{ETH_P_IP, TCP, ethernet, ipv4, tcp},
    net::{FrameSender, Netns, quiet_veth},
    process::{Process, free_port, sibling},
};

const RATES: [u64; 3] = [1_000, 10_000, 50_000];
const SECONDS: u64 = 10;

struct Detach(String);
impl Drop for Detach {
    fn drop(&mut self) {
        let _ = attach::detach(&self.0);
    }
}

fn total_events(http: u16) -> u64 {
    xdt_testkit::http::get_ok(http, "/metrics.json")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["total_events"].as_u64())
        .unwrap_or(0)
}

/// (VmRSS KiB, utime + stime in clock ticks) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, ticks)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("agent_load: needs root (namespaces, XDP); run it with sudo");
        return;
    }
    let ticks_per_second = 100.0; // USER_HZ on Linux
    println!(
        "| events/s offered | events/s delivered | agent CPU (% of one core) | agent peak RSS (MiB) | central events = probe events |"
    );
    println!("|---:|---:|---:|---:|:---:|");
    for rate in RATES {
        let client = Netns::new("xbc");
        let node = Netns::new("xbn");
        let client_if = xdt_testkit::unique_name("bc");
        let node_if = xdt_testkit::unique_name("bn");
        quiet_veth(&client, &client_if, &node, &node_if, 1);
        let rules = parse_rules("all dst 10.99.0.0/24 proto tcp action sample 1\n", "bench")
            .expect("rules");
        let iface = node_if.clone();
        node.enter(move || {
            attach::attach(&iface, Mode::Native, &rules, Capacity::default()).expect("attach")
        });
        let _detach = Detach(node_if.clone());

        let dir = std::env::temp_dir().join(xdt_testkit::unique_name("xdt-agent-bench-"));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "bench-token").expect("token");
        let (http, telemetry) = (free_port(), free_port());
        let _central = Process::start(
            Command::new(sibling("xdt-central"))
                .args([
                    "--http-listen",
                    &format!("127.0.0.1:{http}"),
                    "--telemetry-listen",
                    &format!("127.0.0.1:{telemetry}"),
                ])
                .arg("--token-file")
                .arg(&token)
                .args(["--log-level", "warn"]),
        );
        std::thread::sleep(Duration::from_millis(500));
        let agent = Process::start(
            Command::new(sibling("xdt-agent"))
                .args([
                    "--interface",
                    &node_if,
                    // Outside the node namespace: sampled events only, no AF_XDP.
                    "--no-steer",
                    "--central",
                    &format!("127.0.0.1:{telemetry}"),
                    "--log-level",
                    "warn",
                ])
                .arg("--token-file")
                .arg(&token),
        );
        std::thread::sleep(Duration::from_secs(1));
        let pid = agent.id();
        let (_, ticks_before) = usage(pid);
        let started = Instant::now();

        let frame = ethernet(
            ETH_P_IP,
            &ipv4(
                [10, 99, 0, 9],
                [10, 99, 0, 5],
                TCP,
                &tcp(40000, 80, 0x10, &[0; 64]),
            ),
        );
        let sender_if = client_if.clone();
        let sender = std::thread::spawn(move || {
            client.enter(move || {
                FrameSender::pin_to_cpu(0);
                let s = FrameSender::open(&sender_if);
                let start = Instant::now();
                let total = rate * SECONDS;
                for i in 0..total {
                    // Pace: frame i goes out at i / rate seconds.
                    let due = Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed())
                        && wait > Duration::from_micros(200)
                    {
                        std::thread::sleep(wait);
                    }
                    s.send(&frame);
                }
            });
            client
        });
        let mut peak_rss = 0;
        while !sender.is_finished() {
            peak_rss = peak_rss.max(usage(pid).0);
            std::thread::sleep(Duration::from_millis(100));
        }
        let _client = sender.join().expect("sender");
        let sent_for = started.elapsed();
        let (rss, ticks_after) = usage(pid);
        peak_rss = peak_rss.max(rss);
        let cpu =
            (ticks_after - ticks_before) as f64 / ticks_per_second / sent_for.as_secs_f64() * 100.0;

        // Let the last batches arrive, then compare central with the probe.
        let sampled = ProbeMaps::open(&node_if)
            .expect("maps")
            .counters()
            .expect("counters");
        let probe_events = sampled.get(Counter::SampledEvents);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut delivered = total_events(http);
        while delivered < probe_events && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            delivered = total_events(http);
        }
        println!(
            "| {rate} | {:.0} | {cpu:.1} | {:.1} | {} |",
            delivered as f64 / sent_for.as_secs_f64(),
            peak_rss as f64 / 1024.0,
            if delivered == probe_events {
                "yes".to_owned()
            } else {
                format!(
                    "no ({delivered} of {probe_events}, lost in ring {})",
                    sampled.get(Counter::LostEvents)
                )
            }
        );
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
        drop(node);
    }
}
