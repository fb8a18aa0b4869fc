//! What central exports besides the probe's counters (whose catalogue is
//! `xdt_common::counters::CATALOGUE`): the agents' AF_XDP steering counters and the per-agent
//! figures central keeps. Each entry is the one place its name, help, unit, exporter names,
//! rate and dashboard panel are written; Prometheus, OTLP, `/metrics.json`'s rates and the
//! dashboard (through [`json`], served as `/catalogue.json`) read them.

use serde_json::{Value, json};
use xdt_common::counters::{CATALOGUE as PROBE, Export, Panel, Severity};
use xdt_wire::SteeringStats;

use crate::state::{AgentState, MAX_FLOWS_KEPT, TOP_FLOWS};

/// One cumulative steering counter. Prometheus names it `xdt_steering_<name>_total`, OTLP
/// `xdt.steering.<name>`; its rate is `steering_rates.<rate>` in `/metrics.json`.
#[derive(Debug, Clone, Copy)]
pub struct SteeringCounter {
    /// The field of `SteeringStats`: the JSON key under `agent.steering`.
    pub name: &'static str,
    pub help: &'static str,
    /// UCUM unit for OTLP.
    pub unit: &'static str,
    pub value: fn(&SteeringStats) -> u64,
    /// The key of its per-second rate and the factor applied (8: bytes to bits).
    pub rate: (&'static str, f64),
    pub panel: Option<Panel>,
}

/// Every cumulative steering counter, throughput first, then each place a frame is lost.
pub const STEERING: [SteeringCounter; 8] = [
    SteeringCounter {
        name: "received_packets",
        help: "Frames the agent read off its AF_XDP RX rings.",
        unit: "{packet}",
        value: |s| s.received_packets,
        rate: ("received_packets_per_second", 1.0),
        panel: Some(Panel::Flow { label: "Received" }),
    },
    SteeringCounter {
        name: "received_bytes",
        help: "Bytes of the frames the agent read off its AF_XDP RX rings.",
        unit: "By",
        value: |s| s.received_bytes,
        rate: ("received_bits_per_second", 8.0),
        panel: Some(Panel::Flow {
            label: "Received bits",
        }),
    },
    SteeringCounter {
        name: "reinjected_packets",
        help: "Steered frames the agent handed back to the kernel and saw completed.",
        unit: "{packet}",
        value: |s| s.reinjected_packets,
        rate: ("reinjected_packets_per_second", 1.0),
        panel: Some(Panel::Flow {
            label: "Re-injected",
        }),
    },
    SteeringCounter {
        name: "reinject_dropped",
        help: "Steered frames the agent could not re-inject (TX ring full, frame rejected).",
        unit: "{packet}",
        value: |s| s.reinject_dropped,
        rate: ("reinject_dropped_per_second", 1.0),
        panel: Some(Panel::Losses {
            label: "Re-inject dropped",
            hint: "the agent could not re-inject (TX ring full, frame rejected)",
            severity: Severity::Loss,
        }),
    },
    SteeringCounter {
        name: "rx_dropped",
        help: "Frames the kernel dropped before the agent's AF_XDP sockets (XDP_STATISTICS rx_dropped).",
        unit: "{packet}",
        value: |s| s.rx_dropped,
        rate: ("rx_dropped_per_second", 1.0),
        panel: Some(Panel::Losses {
            label: "RX dropped",
            hint: "dropped by the kernel before the socket",
            severity: Severity::Loss,
        }),
    },
    SteeringCounter {
        name: "rx_ring_full",
        help: "Frames dropped because an AF_XDP RX ring was full (XDP_STATISTICS rx_ring_full).",
        unit: "{packet}",
        value: |s| s.rx_ring_full,
        rate: ("rx_ring_full_per_second", 1.0),
        panel: Some(Panel::Losses {
            label: "RX ring full",
            hint: "the agent read its RX ring too slowly",
            severity: Severity::Loss,
        }),
    },
    SteeringCounter {
        name: "rx_fill_ring_empty",
        help: "Times a frame found no free buffer on an AF_XDP fill ring (XDP_STATISTICS rx_fill_ring_empty_descs).",
        unit: "{event}",
        value: |s| s.rx_fill_ring_empty,
        rate: ("rx_fill_ring_empty_per_second", 1.0),
        panel: Some(Panel::Losses {
            label: "Fill ring empty",
            hint: "times no free buffer was there for a frame",
            severity: Severity::Loss,
        }),
    },
    SteeringCounter {
        name: "tx_invalid_descs",
        help: "Re-injection descriptors the kernel rejected (XDP_STATISTICS tx_invalid_descs).",
        unit: "{descriptor}",
        value: |s| s.tx_invalid_descs,
        rate: ("tx_invalid_descs_per_second", 1.0),
        panel: Some(Panel::Losses {
            label: "TX invalid descriptors",
            hint: "re-injections the kernel rejected",
            severity: Severity::Loss,
        }),
    },
];

/// How a figure is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cumulative (Prometheus adds `_total`).
    Counter,
    Gauge,
}

/// A figure's value for one agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Count(u64),
    Int(i64),
    Real(f64),
}

/// One per-agent figure central keeps or derives.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// The Prometheus family.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// `None` leaves the agent out (it does not report the figure).
    pub value: fn(&AgentState) -> Option<Number>,
    /// The key in the node's `agent` object of `/metrics.json`, when it is there.
    pub field: Option<&'static str>,
    /// The OTLP instrument, its unit and description, if exported; observed for the agents
    /// that have sent counters.
    pub otlp: Option<(Export, &'static str)>,
    pub panel: Option<Panel>,
}

/// The packet and byte rates over an agent's last two snapshots (in the Prometheus text
/// before the label counts, [`AGENT`] after them).
pub const RATES: [Figure; 2] = [
    Figure {
        name: "xdp_packets_rate",
        help: "Packets per second over the last two snapshots.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Real(a.rates.packets_per_second)),
        field: None,
        otlp: Some((
            Export {
                name: "xdp.packets.rate",
                help: "Packet processing rate",
            },
            "{packet}/s",
        )),
        panel: None,
    },
    Figure {
        name: "xdp_bytes_rate",
        help: "Bytes per second over the last two snapshots.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Real(a.rates.bits_per_second / 8.0)),
        field: None,
        otlp: None,
        panel: None,
    },
];

/// The agent's own report and what central knows of its connection.
pub const AGENT: [Figure; 7] = [
    Figure {
        name: "xdt_agent_dropped_events",
        help: "Sampled events the agent dropped because its unacknowledged-batch buffer was full.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.dropped_events)),
        field: Some("dropped_events"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "Agent dropped events",
            hint: "agent send buffer full",
            severity: Severity::Loss,
        }),
    },
    Figure {
        name: "xdt_agent_reconnects",
        help: "Reconnections of the agent to central since the agent started.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.reconnects)),
        field: Some("reconnects"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "Reconnects",
            hint: "agent to central",
            severity: Severity::Info,
        }),
    },
    Figure {
        name: "xdt_agent_unacked_batches",
        help: "Batches waiting for an acknowledgement in the agent.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Int(i64::from(a.agent_stats.unacked_batches))),
        field: Some("unacked_batches"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "Unacked batches",
            hint: "sent, not yet confirmed",
            severity: Severity::Info,
        }),
    },
    Figure {
        name: "xdt_agent_connected",
        help: "1 while the agent has a telemetry connection to central, else 0.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Int(i64::from(a.connected()))),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_agent_last_seen_timestamp_seconds",
        help: "When central last heard from the agent (a Hello, a batch, its disconnect), in Unix seconds.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Real(a.last_seen_unix)),
        field: None,
        otlp: None,
        panel: None,
    },
    // Only agents whose node has kernel.bpf_stats_enabled=1 report the probe's run time. In
    // seconds, Prometheus' base unit (promtool refuses abbreviated units in names).
    Figure {
        name: "xdt_probe_packet_cost_seconds",
        help: "Average run time of the probe per packet between the agent's last two batches.",
        kind: Kind::Gauge,
        value: |a| {
            a.agent_stats
                .probe_ns_per_packet
                .map(|ns| Number::Real(ns / 1e9))
        },
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_events_received",
        help: "Sampled events central received from the agent.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.total_events)),
        field: None,
        otlp: None,
        panel: None,
    },
];

/// Series of the top talkers per agent that sends flows: `xdt_flow_top_bytes` and
/// `xdt_flow_top_packets` with ranks 1 to [`TOP_FLOWS`] and `other`, and one
/// `xdt_flow_top_info` per named rank of each ranking. The hard cap of docs/observability.md.
pub const FLOW_SERIES_PER_AGENT: usize = 2 * (TOP_FLOWS + 1) + 2 * TOP_FLOWS;
// `xdt_flow_kept`'s help states the bound.
const _: () = assert!(MAX_FLOWS_KEPT == 1024);

/// The flow figures of an agent that sends flows (protocol version 3; the others have no series
/// here): the agent's own (`agent.flows` in `/metrics.json`, their `field` a path under the
/// node's `agent` object) and what central's window of its records holds (`flows`). The top
/// talkers themselves are `xdt_flow_top_*` (export/prom.rs), with a fixed number of series.
pub const FLOWS: [Figure; 12] = [
    Figure {
        name: "xdt_flow_records_received",
        help: "Flow records central received from the agent (since central started).",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.flow_summary.as_ref()?.received_records)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_records_rate",
        help: "Flow records per second central received from the agent over the last minute.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Real(a.flow_summary.as_ref()?.records_per_second)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_active",
        help: "Flows in the agent's flow state.",
        kind: Kind::Gauge,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.active)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_exported_records",
        help: "Flow records the agent exported (one per flow delta).",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.records)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_state_full",
        help: "New flows that found the agent's flow state full (--flow-max): their records went out on their own, so the flows come in pieces.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.state_full)),
        field: Some("flows.state_full"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "Flow state full",
            hint: "flows cut into pieces: raise --flow-max",
            severity: Severity::Warn,
        }),
    },
    Figure {
        name: "xdt_flow_dropped_records",
        help: "Flow records the agent dropped because its unacknowledged-batch buffer was full.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.dropped_records)),
        field: Some("flows.dropped_records"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "Agent dropped flows",
            hint: "agent send buffer full",
            severity: Severity::Loss,
        }),
    },
    Figure {
        name: "xdt_flow_ipfix_messages",
        help: "IPFIX messages the agent sent to its collectors.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.ipfix_messages)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_ipfix_records",
        help: "Flow records in the IPFIX messages the agent sent.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.agent_stats.flows.as_ref()?.ipfix_records)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_ipfix_send_failures",
        help: "IPFIX messages whose send failed: their records did not reach that collector.",
        kind: Kind::Counter,
        value: |a| {
            Some(Number::Count(
                a.agent_stats.flows.as_ref()?.ipfix_send_failures,
            ))
        },
        field: Some("flows.ipfix_send_failures"),
        otlp: None,
        panel: Some(Panel::Losses {
            label: "IPFIX send failures",
            hint: "messages that did not reach a collector",
            severity: Severity::Loss,
        }),
    },
    Figure {
        name: "xdt_flow_kept",
        help: "Flows central keeps for the agent's top talkers (at most 1024).",
        kind: Kind::Gauge,
        value: |a| Some(Number::Count(a.flow_summary.as_ref()?.flows_kept as u64)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_untracked_records",
        help: "Flow records of flows central did not keep for the top talkers (every kept flow had more bytes); counted in the other remainder.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.flow_summary.as_ref()?.untracked_records)),
        field: None,
        otlp: None,
        panel: None,
    },
    Figure {
        name: "xdt_flow_evicted",
        help: "Kept flows central pushed out for a flow with more bytes; their counts stay in the other remainder.",
        kind: Kind::Counter,
        value: |a| Some(Number::Count(a.flow_summary.as_ref()?.evicted_flows)),
        field: None,
        otlp: None,
        panel: None,
    },
];

fn panel(panel: Option<Panel>) -> Value {
    match panel {
        None => Value::Null,
        Some(Panel::Protocols { label } | Panel::Flow { label }) => {
            json!({ "panel": panel.map(Panel::as_str), "label": label })
        }
        Some(Panel::Losses {
            label,
            hint,
            severity,
        }) => json!({
            "panel": "losses", "label": label, "hint": hint, "severity": severity.as_str(),
        }),
    }
}

/// `/catalogue.json`: what the dashboard shows, so that it keeps no list of its own. Probe
/// counters are keys of a node's `counters`, steering counters of `agent.steering` (their
/// rates of `steering_rates`), agent figures of `agent` (a name with a dot is a path:
/// `flows.state_full` is `agent.flows.state_full`).
#[must_use]
pub fn json() -> Value {
    json!({
        "probe_counters": PROBE.iter().map(|c| json!({
            "name": c.name, "unit": c.unit, "help": c.help, "panel": panel(c.panel),
        })).collect::<Vec<_>>(),
        "steering": STEERING.iter().map(|c| json!({
            "name": c.name, "unit": c.unit, "help": c.help, "rate": c.rate.0,
            "panel": panel(c.panel),
        })).collect::<Vec<_>>(),
        "agent": AGENT.iter().chain(&FLOWS).filter_map(|f| Some(json!({
            "name": f.field?, "help": f.help, "panel": panel(f.panel),
        }))).collect::<Vec<_>>(),
    })
}

/// [`json`] rendered once.
#[must_use]
pub fn document() -> &'static [u8] {
    static DOCUMENT: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| json().to_string().into_bytes());
    &DOCUMENT
}
