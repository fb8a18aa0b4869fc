//! `xdt`: the operator's command for the XDP probe. Every command prints a clear error and exits
//! with status 1 on failure; none panics.

mod cli;
mod demo;
mod flows;

use std::{
    fs::File,
    io::Write as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use nix::fcntl::{Flock, FlockArg};
use xdt_common::counters::Counter;
use xdt_datapath::{
    attach::{self, Mode},
    attached::AttachedProbe,
    events::Event,
    labels::LabelCache,
    maps::ProbeMaps,
    probe::Capacity,
    rules::{self, Rule},
    stats::{self, Snapshot},
};

use crate::cli::{Cli, Command, RulesCommand};

fn main() {
    xdt_clidoc::generate_if_asked(<Cli as clap::CommandFactory>::command, "1");
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("xdt: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Attach {
            interface,
            mode,
            rules,
            max_rules,
            trie_nodes,
            flows,
            json,
        } => {
            let rules = match rules {
                Some(path) => read_rules(&path)?,
                None => Vec::new(),
            };
            let mode = match mode {
                cli::Mode::Auto => Mode::Auto,
                cli::Mode::Native => Mode::Native,
                cli::Mode::Generic => Mode::Generic,
            };
            let attached = attach::attach(
                &interface.name,
                mode,
                &rules,
                Capacity {
                    max_rules,
                    trie_nodes,
                    flows,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&attached)?);
            } else {
                if let Some(reason) = &attached.native_error {
                    println!(
                        "native mode unavailable on {} ({reason}); using generic",
                        attached.interface
                    );
                }
                println!(
                    "attached to {} in {} mode: program {}, link {}, {} rules, pinned in {}",
                    attached.interface,
                    attached.mode,
                    attached.program_id,
                    attached.link_id,
                    attached.rules,
                    attached.pin_dir.display()
                );
            }
        }
        Command::Detach { interface } => {
            attach::detach(&interface.name)?;
            println!("detached from {}", interface.name);
        }
        Command::Status { interface, json } => status(interface.name, json)?,
        Command::Rules(command) => rules_command(command)?,
        Command::Stats {
            interface,
            json,
            watch,
            interval,
            count,
        } => {
            let probe = AttachedProbe::open(&interface.name)?;
            let maps = probe.maps();
            if watch {
                watch_stats(maps, &interface.name, json, interval, count)?;
            } else {
                let snapshot = snapshot(maps)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&snapshot.to_json(&interface.name))?
                    );
                } else {
                    print_stats(&interface.name, &snapshot);
                }
            }
        }
        Command::Demo {
            duration,
            http_listen,
            telemetry_port,
        } => {
            demo::run(&demo::Options {
                duration,
                http_listen,
                telemetry_port,
            })?;
        }
        Command::Flows {
            interface,
            json,
            top,
            sort,
        } => flows::run(&interface.name, json, top, sort)?,
        Command::Events {
            interface,
            json,
            count,
            timeout,
        } => {
            events(&interface.name, json, count, timeout)?;
        }
    }
    Ok(())
}

fn read_rules(path: &Path) -> Result<Vec<Rule>> {
    Ok(rules::read_rules(path)?)
}

/// Serialises rule changes of one interface between xdt processes.
fn lock(probe: &AttachedProbe) -> Result<Flock<File>> {
    let dir = probe.pins().path();
    let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", dir.display()))
}

fn rules_command(command: RulesCommand) -> Result<()> {
    match command {
        RulesCommand::Add { interface, rule } => {
            let words: Vec<&str> = rule.iter().map(String::as_str).collect();
            let new = rules::parse_rule(&words).map_err(|reason| rules::RulesError {
                origin: "command line".into(),
                line: 1,
                reason,
            })?;
            let mut probe = AttachedProbe::open(&interface.name)?;
            let _lock = lock(&probe)?;
            let maps = probe.maps_mut();
            let mut current = maps.rules()?;
            current.push(new);
            maps.install(&current)?;
            println!(
                "added rule {}: {}",
                current.len(),
                current[current.len() - 1]
            );
        }
        RulesCommand::Del { interface, id } => {
            let mut probe = AttachedProbe::open(&interface.name)?;
            let _lock = lock(&probe)?;
            let maps = probe.maps_mut();
            let mut current = maps.rules()?;
            if id == 0 || id > current.len() {
                bail!(
                    "no rule {id} on {} (it has {} rules; see `xdt rules list`)",
                    interface.name,
                    current.len()
                );
            }
            let removed = current.remove(id - 1);
            maps.install(&current)?;
            println!("deleted rule {id}: {removed}");
        }
        RulesCommand::List { interface, json } => {
            let current = AttachedProbe::open(&interface.name)?.maps().rules()?;
            if json {
                let list: Vec<_> = current
                    .iter()
                    .enumerate()
                    .map(|(i, r)| serde_json::json!({"id": i + 1, "label": r.label, "rule": r.to_string()}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (i, rule) in current.iter().enumerate() {
                    println!("{rule} # id {}", i + 1);
                }
            }
        }
        RulesCommand::Load { interface, file } => {
            let new = read_rules(&file)?;
            let mut probe = AttachedProbe::open(&interface.name)?;
            let _lock = lock(&probe)?;
            let installed = probe.maps_mut().install(&new)?;
            println!(
                "loaded {} rules from {} into {} (generation {}, {} trie nodes)",
                installed.rules,
                file.display(),
                interface.name,
                installed.generation,
                installed.trie_nodes
            );
        }
        RulesCommand::Check { file, interface } => {
            let new = read_rules(&file)?;
            let capacity = match interface.name {
                Some(iface) => {
                    let a = AttachedProbe::open(&iface)?.maps().config()?.attachment;
                    Capacity {
                        max_rules: a.max_rules,
                        trie_nodes: a.trie_nodes,
                        ..Capacity::default()
                    }
                }
                None => Capacity::default(),
            };
            let checked = rules::check(&new, capacity.max_rules, capacity.trie_nodes)?;
            println!(
                "{}: {} rules, {} labels, {} trie nodes: OK",
                file.display(),
                new.len(),
                checked.labels,
                checked.trie_nodes
            );
        }
    }
    Ok(())
}

fn snapshot(maps: &ProbeMaps) -> Result<Snapshot> {
    Ok(Snapshot {
        counters: maps.counters()?,
        labels: maps.label_counts()?,
    })
}

fn print_stats(iface: &str, s: &Snapshot) {
    println!("{iface}:");
    for (name, value) in xdt_common::counters::NAMES.iter().zip(s.counters.values) {
        println!("  {name:<26} {value}");
    }
    if !s.labels.is_empty() {
        println!("  labels:");
        for l in &s.labels {
            println!(
                "    {:<24} {} packets, {} bytes",
                l.label, l.packets, l.bytes
            );
        }
    }
}

fn watch_stats(
    maps: &ProbeMaps,
    iface: &str,
    json: bool,
    interval: f64,
    count: Option<u64>,
) -> Result<()> {
    if !(0.05..=3600.0).contains(&interval) {
        bail!("--interval must be between 0.05 and 3600 seconds, not {interval}");
    }
    let interval = Duration::from_secs_f64(interval);
    let mut previous = (Instant::now(), maps.counters()?);
    let mut lines = 0;
    while count.is_none_or(|c| lines < c) {
        std::thread::sleep(interval);
        let now = (Instant::now(), maps.counters()?);
        let r = stats::rates(&previous.1, &now.1, now.0 - previous.0);
        let c = &now.1;
        if json {
            let mut line = serde_json::to_value(r)?;
            line["interface"] = iface.into();
            line["total_packets"] = c.get(Counter::TotalPackets).into();
            line["total_bytes"] = c.get(Counter::TotalBytes).into();
            line["lost_events"] = c.get(Counter::LostEvents).into();
            println!("{line}");
        } else {
            println!(
                "{iface}: {} pps {} bps | total {} tcp {} udp {} icmp {} other {} | dropped {} lost events {}",
                stats::human(r.packets_per_second),
                stats::human(r.bits_per_second),
                c.get(Counter::TotalPackets),
                c.get(Counter::TcpPackets),
                c.get(Counter::UdpPackets),
                c.get(Counter::IcmpPackets),
                c.get(Counter::OtherPackets),
                c.get(Counter::DroppedPackets),
                c.get(Counter::LostEvents),
            );
        }
        std::io::stdout().flush()?;
        previous = now;
        lines += 1;
    }
    Ok(())
}

fn events(iface: &str, json: bool, count: Option<u64>, timeout: Option<f64>) -> Result<()> {
    let probe = AttachedProbe::open(iface)?;
    let mut reader = probe.events()?;
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let mut names = LabelCache::new(probe.label_names()?);
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    loop {
        if count.is_some_and(|c| seen >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let wait = deadline.map_or(Duration::from_millis(500), |d| {
            d.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500))
        });
        reader.poll(wait, |raw| {
            if count.is_some_and(|c| seen >= c) || failed.is_some() {
                return;
            }
            let e = Event::decode(raw, names.covering(raw.label));
            let written = if json {
                serde_json::to_string(&e).map_err(std::io::Error::other).and_then(|l| writeln!(out, "{l}"))
            } else {
                writeln!(
                    out,
                    "{} {} rule {} {} proto {} {} -> {} ip_len {} payload {} flags {:#04x} queue {}",
                    e.timestamp_ns,
                    e.label,
                    e.rule,
                    e.action,
                    e.headers.protocol,
                    endpoint(e.headers.src, e.headers.src_port),
                    endpoint(e.headers.dst, e.headers.dst_port),
                    e.headers.ip_len,
                    e.headers.payload_len,
                    e.headers.tcp_flags,
                    e.rx_queue
                )
            };
            if let Err(err) = written.and_then(|()| out.flush()) {
                failed = Some(err);
            }
            seen += 1;
        })?;
        if let Some(e) = failed {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    Ok(())
}

fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn status(interface: Option<String>, json: bool) -> Result<()> {
    let names = match interface {
        Some(name) => vec![name],
        None => attach::attached_interfaces()?,
    };
    let mut all = Vec::new();
    for name in &names {
        all.push(AttachedProbe::open(name)?.status()?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("xdt is not attached to any interface");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for s in &all {
        println!(
            "{}: {} mode, program {}, link {}, attached {} s ago",
            s.interface,
            s.mode,
            s.program_id,
            s.link_id,
            now.saturating_sub(s.attached_at_unix)
        );
        println!(
            "  rules {}/{}, labels {}, trie nodes {}/{}",
            s.rules, s.max_rules, s.labels, s.trie_nodes_used, s.trie_nodes
        );
        if s.run_count > 0 {
            println!(
                "  {} runs, {} ns per packet",
                s.run_count,
                s.run_time_ns / s.run_count
            );
        }
        for m in &s.maps {
            println!(
                "  map {:<16} id {:<6} entries {:<8} {}",
                m.name,
                m.id,
                m.max_entries,
                m.pin.display()
            );
        }
    }
    Ok(())
}
