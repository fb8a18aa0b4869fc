//! `/metrics.json`: the seed's shape `{ total_events, nodes: [ { agent_id, total_events,
//! label_counts, recent_events } ] }`, with more fields per node (never fewer). Agent-supplied
//! strings are data: serde_json escapes them.

use std::net::IpAddr;

use serde::{Serialize, Serializer, ser::SerializeMap as _};

use xdt_wire::Inspection;

use crate::state::{AgentState, AgentStats, LabelCount, Rates, State, SteeringRates, seconds};

#[derive(Serialize)]
struct Metrics<'a> {
    total_events: u64,
    nodes: Vec<Node<'a>>,
}

#[derive(Serialize)]
struct Node<'a> {
    agent_id: &'a str,
    total_events: u64,
    label_counts: &'a [LabelCount],
    recent_events: Vec<EventJson<'a>>,
    hostname: &'a str,
    interface: &'a str,
    probe_version: &'a str,
    instance: u64,
    last_sequence: u64,
    connected: bool,
    connected_since_unix: Option<f64>,
    last_seen_unix: f64,
    /// Seconds since the Unix epoch of the newest counters (null before the first batch).
    counters_taken_at_unix: Option<f64>,
    counters: Counters<'a>,
    rates: Rates,
    /// Rates of `agent.steering`'s counters (absent when the agent does not steer).
    #[serde(skip_serializing_if = "Option::is_none")]
    steering_rates: Option<SteeringRates>,
    rate_history: Vec<[f64; 3]>,
    payload_history: Vec<(f64, u16)>,
    agent: &'a AgentStats,
    /// The probe's ring-buffer losses (`lost_events` counter).
    lost_events: u64,
    /// Counter names and labels beyond central's caps, dropped.
    ignored_entries: u64,
}

/// Counters as a JSON object, name -> value, in the agent's order.
struct Counters<'a>(&'a [(String, u64)]);

impl Serialize for Counters<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A recent event with the seed's field names, and the inspection of a steered packet.
#[derive(Serialize)]
struct EventJson<'a> {
    timestamp_unix_ns: u64,
    label: &'a str,
    rule: u32,
    action: &'a str,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    ip_len: u16,
    payload_len: u16,
    tcp_flags: u8,
    rx_queue: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    inspection: Option<InspectionJson<'a>>,
}

/// What the agent read of a steered packet; `http` and `dns` are null when it is neither.
#[derive(Serialize)]
struct InspectionJson<'a> {
    frame_len: u32,
    agent_latency_ns: u64,
    reinjected: bool,
    http: Option<HttpJson<'a>>,
    dns: Option<DnsJson<'a>>,
}

#[derive(Serialize)]
struct HttpJson<'a> {
    method: &'a str,
    path: &'a str,
    host: Option<&'a str>,
}

#[derive(Serialize)]
struct DnsJson<'a> {
    name: &'a str,
    qtype: u16,
}

fn inspection(i: &Inspection) -> InspectionJson<'_> {
    InspectionJson {
        frame_len: i.frame_len,
        agent_latency_ns: i.agent_latency_ns,
        reinjected: i.reinjected,
        http: i.http.as_ref().map(|h| HttpJson {
            method: &h.method,
            path: &h.path,
            host: h.host.as_deref(),
        }),
        dns: i.dns.as_ref().map(|d| DnsJson {
            name: &d.name,
            qtype: d.qtype,
        }),
    }
}

fn node(agent: &AgentState) -> Node<'_> {
    Node {
        agent_id: &agent.agent_id,
        total_events: agent.total_events,
        label_counts: &agent.labels,
        recent_events: agent
            .recent_events
            .iter()
            .map(|e| EventJson {
                timestamp_unix_ns: e.timestamp_unix_ns,
                label: &e.label,
                rule: e.rule,
                action: &e.action,
                protocol: e.protocol,
                src: e.src,
                dst: e.dst,
                src_port: e.src_port,
                dst_port: e.dst_port,
                ip_len: e.ip_len,
                payload_len: e.payload_len,
                tcp_flags: e.tcp_flags,
                rx_queue: e.rx_queue,
                inspection: e.inspection.as_deref().map(inspection),
            })
            .collect(),
        hostname: &agent.hostname,
        interface: &agent.interface,
        probe_version: &agent.probe_version,
        instance: agent.instance,
        last_sequence: agent.last_sequence(agent.instance),
        connected: agent.connected(),
        connected_since_unix: agent.connected_since_unix,
        last_seen_unix: agent.last_seen_unix,
        counters_taken_at_unix: (agent.taken_at_unix_ns != 0)
            .then(|| seconds(agent.taken_at_unix_ns)),
        counters: Counters(&agent.counters),
        rates: agent.rates,
        steering_rates: agent.steering_rates,
        rate_history: agent.rate_history.iter().copied().collect(),
        payload_history: agent.payload_history.iter().copied().collect(),
        agent: &agent.agent_stats,
        lost_events: agent.counter("lost_events").unwrap_or(0),
        ignored_entries: agent.ignored_entries,
    }
}

/// The body of `/metrics.json`.
pub fn render(state: &State) -> Vec<u8> {
    let metrics = Metrics {
        total_events: state.total_events(),
        nodes: state.agents().map(node).collect(),
    };
    // Serialising plain structs of strings and numbers cannot fail (non-finite floats become
    // null), but never panic on it either.
    serde_json::to_vec(&metrics).unwrap_or_else(|e| {
        log::error!(cause:% = e; "cannot render /metrics.json");
        b"{\"total_events\":0,\"nodes\":[]}".to_vec()
    })
}
