//! Agent RSS and CPU at fixed sampled-event rates. As root, after `cargo build --release
//! --workspace`: `cargo bench -p xdt-agent --bench agent_load` (docs/benchmarks.md).
//!
//! A client namespace sends TCP frames over a veth pair at a paced rate to a node namespace
//! whose probe samples every packet (`action sample 1`), so packets/s = events/s. The real
//! `xdt-agent` and `xdt-central` (release builds) run; the agent's resident memory (VmRSS, peak
//! over the run) and CPU time (utime + stime from /proc) are measured over each run, and
//! central's event count is checked against the probe's.
#![expect(clippy::cast_precision_loss, reason = "rates and sizes for a report")]

use std::time::{Duration, Instant};

use xdt_testkit::{
    frames::{ETH_P_IP, TCP, ethernet, ipv4, tcp},
    lab::{self, Side},
    net::FrameSender,
    process::sibling,
};

const RATES: [u64; 3] = [1_000, 10_000, 50_000];
const SECONDS: u64 = 10;

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
        let mut lab = lab::lab(
            Side::unique("xbc", "bc"),
            Side::unique("xbn", "bn"),
            1,
            "xdt-agent-bench-",
        );
        lab::attach(
            &mut lab,
            "native",
            "all dst 10.99.0.0/24 proto tcp action sample 1\n",
        );
        let central = lab::start_central(&mut lab, &["--log-level", "warn"]);
        let mut agent = lab.node.command(sibling("xdt-agent"));
        agent
            .args(["--interface", &lab.node_if, "--log-level", "warn"])
            // Sampled events only, no AF_XDP.
            .arg("--no-steer")
            .args(central.agent_args());
        let pid = lab
            .processes
            .spawn("xdt-agent", &mut agent)
            .expect("start xdt-agent");
        std::thread::sleep(Duration::from_secs(1));
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
        let mut peak_rss = 0;
        std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                lab.client.enter(|| {
                    FrameSender::pin_to_cpu(0);
                    let s = FrameSender::open(&lab.client_if);
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
                })
            });
            while !sender.is_finished() {
                peak_rss = peak_rss.max(usage(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            sender.join().expect("sender").expect("client namespace");
        });
        let sent_for = started.elapsed();
        let (rss, ticks_after) = usage(pid);
        peak_rss = peak_rss.max(rss);
        let cpu =
            (ticks_after - ticks_before) as f64 / ticks_per_second / sent_for.as_secs_f64() * 100.0;

        // Let the last batches arrive, then compare central with the probe.
        let probe = lab::stats(&lab);
        let probe_events = probe["sampled_events"].as_u64().expect("sampled_events");
        let total_events = || {
            lab::get(&lab, central.http, "/metrics.json")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["total_events"].as_u64())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut delivered = total_events();
        while delivered < probe_events && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            delivered = total_events();
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
                    probe["lost_events"]
                )
            }
        );
    }
}
