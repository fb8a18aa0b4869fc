//! `xdt flows`: the flows the probe recorded, read straight from its kernel tables (both
//! generations, summed per flow), largest first.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use xdt_common::{
    counters::Counter,
    flows::{FlowKey, FlowRecord},
};
use xdt_datapath::{attached::AttachedProbe, labels::LabelTable};

use crate::cli::FlowSort;

/// One flow as `xdt flows` prints it.
#[derive(Debug)]
struct Flow {
    ip_version: u8,
    protocol: u8,
    src: String,
    dst: String,
    src_port: u16,
    /// ICMP: `type << 8 | code`.
    dst_port: u16,
    /// Outer and inner VLAN id, 0 for none.
    vlans: [u16; 2],
    packets: u64,
    /// IP octets (header and payload), as IPFIX counts them.
    bytes: u64,
    first_seen_ns: u64,
    last_seen_ns: u64,
    tcp_flags: u8,
    /// Inbound TCP: SYN to the client's first ACK as seen at the hook; `None` when not
    /// measured.
    handshake_ns: Option<u64>,
    /// The label of the rule the flow's first packet matched.
    label: Option<String>,
}

impl Flow {
    fn to_json(&self) -> Value {
        json!({
            "ip_version": self.ip_version,
            "protocol": self.protocol,
            "src": self.src,
            "dst": self.dst,
            "src_port": self.src_port,
            "dst_port": self.dst_port,
            "vlans": self.vlans,
            "packets": self.packets,
            "bytes": self.bytes,
            "first_seen_ns": self.first_seen_ns,
            "last_seen_ns": self.last_seen_ns,
            "tcp_flags": self.tcp_flags,
            "handshake_ns": self.handshake_ns,
            "label": self.label,
        })
    }
}

pub fn run(iface: &str, json: bool, top: Option<usize>, sort: FlowSort) -> Result<()> {
    let probe = AttachedProbe::open(iface)?;
    let tables = probe.flows()?;
    let mut records = tables.read()?;
    let full = probe.maps().counters()?.get(Counter::FlowTableFull);
    let labels = probe.maps().label_names()?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(Duration::from(t).as_nanos()).unwrap_or(u64::MAX)
    });
    let size = |r: &FlowRecord| match sort {
        FlowSort::Bytes => (r.bytes, r.packets),
        FlowSort::Packets => (r.packets, r.bytes),
    };
    records.sort_by(|(ka, a), (kb, b)| size(b).cmp(&size(a)).then(ka.cmp(kb)));
    let flow_count = records.len();
    records.truncate(top.unwrap_or(usize::MAX));
    let flows: Vec<Flow> = records
        .iter()
        .map(|(key, record)| flow(key, record, &labels))
        .collect();
    if json {
        // table_entries: flows each of the two tables holds; flow_table_full: packets whose
        // flow found no room; monotonic_now_ns: now on the clock of the flows' times;
        // flow_count: flows in the tables before --top.
        let report = json!({
            "interface": iface,
            "table_entries": tables.entries(),
            "flow_table_full": full,
            "monotonic_now_ns": now,
            "flow_count": flow_count,
            "flows": flows.iter().map(Flow::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{iface}: {flow_count} flows (tables of {} entries), {full} packets found the table full",
        tables.entries()
    );
    println!(
        "{:<7} {:<47} {:>10} {:>12} {:>9} {:>8} {:>11}  label",
        "proto", "source -> destination", "packets", "bytes", "flags", "idle", "handshake"
    );
    for f in &flows {
        let endpoints = format!(
            "{} -> {}",
            endpoint(&f.src, f.src_port, f.ip_version),
            endpoint(&f.dst, f.dst_port, f.ip_version)
        );
        let handshake = f.handshake_ns.map_or_else(
            || "-".to_owned(),
            |ns| format!("{:.3} ms", Duration::from_nanos(ns).as_secs_f64() * 1e3),
        );
        let idle = Duration::from_nanos(now.saturating_sub(f.last_seen_ns)).as_secs_f64();
        println!(
            "{:<7} {endpoints:<47} {:>10} {:>12} {:>9} {:>7.1}s {handshake:>11}  {}",
            protocol_name(f.protocol),
            f.packets,
            f.bytes,
            flag_letters(f.tcp_flags),
            idle,
            f.label.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn flow(key: &FlowKey, record: &FlowRecord, labels: &LabelTable) -> Flow {
    Flow {
        ip_version: key.ip_version,
        protocol: key.protocol,
        src: key.src_addr().to_string(),
        dst: key.dst_addr().to_string(),
        src_port: key.src_port,
        dst_port: key.dst_port,
        vlans: key.vlans,
        packets: record.packets,
        bytes: record.bytes,
        first_seen_ns: record.first_seen_ns,
        last_seen_ns: record.last_seen_ns,
        tcp_flags: record.tcp_flags(),
        handshake_ns: (record.handshake_ns != 0).then_some(record.handshake_ns),
        label: (record.label != 0).then(|| labels.name(record.label)),
    }
}

fn endpoint(addr: &str, port: u16, version: u8) -> String {
    if version == 6 {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        p => p.to_string(),
    }
}

/// TCP flags as tcpdump's letters (ACK is `.`), in bit order from FIN; `-` for none.
fn flag_letters(flags: u8) -> String {
    const LETTERS: [char; 8] = ['F', 'S', 'R', 'P', '.', 'U', 'E', 'W'];
    let mut out: String = LETTERS
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, c)| *c)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}
