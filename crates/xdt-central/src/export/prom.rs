//! `/metrics`: Prometheus (OpenMetrics text) from the official `prometheus-client`, through a
//! `Collector` that reads the state at scrape time, so nothing is copied between scrapes.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use xdt_common::counters::CATALOGUE as PROBE;

use crate::{
    catalogue::{AGENT, FLOWS, Figure, Kind, Number, RATES, STEERING},
    state::{AgentState, Count, FlowSummary, Shared, TOP_FLOWS, TopFlow},
};

/// Content type of the exposition `prometheus_client::encoding::text` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct StateCollector {
    state: Shared,
    max_connections: usize,
    /// The time the top talkers' minute ends at: the clock's, or a fixed one (golden tests).
    now: Option<f64>,
}

/// A registry whose only collector reads `state`; `max_connections` is the telemetry
/// listener's limit, reported next to the connections in use.
#[must_use]
pub fn registry(state: Shared, max_connections: usize) -> Registry {
    registry_at(state, max_connections, None)
}

/// [`registry`] whose top talkers are those of the minute ending at `now`, if given.
pub(crate) fn registry_at(state: Shared, max_connections: usize, now: Option<f64>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector {
        state,
        max_connections,
        now,
    }));
    registry
}

/// The body of `/metrics`.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

fn agent_labels(agent: &AgentState) -> [(&'static str, &str); 2] {
    [
        ("agent_id", agent.agent_id.as_str()),
        ("interface", agent.interface.as_str()),
    ]
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.state.counters().all() {
            let name = format!("xdt_central_{name}");
            let family = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }

        // Copies of the agents' figures, taken a slice at a time: encoding thousands of series
        // under the lock held ingest up for the whole scrape.
        let (copies, max_agents) = self
            .state
            .figures_with_flows(self.now.unwrap_or_else(crate::state::now_unix));
        let agents: Vec<&AgentState> = copies.iter().collect();

        // Central's limits next to their use, for alerts before agents are refused.
        let connections: u32 = agents.iter().map(|a| a.connections).sum();
        for (name, help, value) in [
            (
                "xdt_central_connections",
                "Authenticated telemetry connections (agents' sessions) open now.",
                i64::from(connections),
            ),
            (
                "xdt_central_max_connections",
                "Telemetry connections central accepts at once (--max-connections).",
                i64::try_from(self.max_connections).unwrap_or(i64::MAX),
            ),
            (
                "xdt_central_agents",
                "Agents in central's table, connected or not.",
                i64::try_from(agents.len()).unwrap_or(i64::MAX),
            ),
            (
                "xdt_central_max_agents",
                "Agents central's table holds at most (--max-agents).",
                i64::try_from(max_agents).unwrap_or(i64::MAX),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }

        for counter in &PROBE {
            let Some(export) = counter.prometheus else {
                continue;
            };
            let mut family =
                encoder.encode_descriptor(export.name, export.help, None, MetricType::Counter)?;
            for agent in &agents {
                if let Some(value) = agent.counter(counter.name) {
                    ConstCounter::new(value).encode(family.encode_family(&agent_labels(agent))?)?;
                }
            }
        }
        encode_figures(&mut encoder, &RATES, &agents)?;
        for (name, help, bytes) in [
            ("xdp_label_packets", "Packets per rule label.", false),
            ("xdp_label_bytes", "Bytes per rule label.", true),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for agent in &agents {
                for label in &agent.labels {
                    let labels = [
                        ("agent_id", agent.agent_id.as_str()),
                        ("interface", agent.interface.as_str()),
                        ("label", label.label.as_str()),
                    ];
                    let value = if bytes { label.bytes } else { label.packets };
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        encode_figures(&mut encoder, &AGENT, &agents)?;
        encode_figures(&mut encoder, &FLOWS, &agents)?;
        encode_top_flows(&mut encoder, &agents)?;

        // AF_XDP steering: series only for the agents that report it, families only if any does.
        let steering: Vec<_> = agents
            .iter()
            .filter_map(|a| Some((*a, a.agent_stats.steering.as_ref()?)))
            .collect();
        if steering.is_empty() {
            return Ok(());
        }
        for counter in &STEERING {
            let name = format!("xdt_steering_{}", counter.name);
            let mut family =
                encoder.encode_descriptor(&name, counter.help, None, MetricType::Counter)?;
            for (agent, stats) in &steering {
                ConstCounter::new((counter.value)(stats))
                    .encode(family.encode_family(&agent_labels(agent))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "xdt_steering_sockets",
            "AF_XDP sockets of the agent (one per receive queue).",
            None,
            MetricType::Gauge,
        )?;
        for (agent, stats) in &steering {
            ConstGauge::new(i64::from(stats.sockets))
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        // Info-style: one series per agent, whose labels say how it steers (values of a few
        // kinds per agent, so the cardinality stays that of the agents).
        let mut family = encoder.encode_descriptor(
            "xdt_steering_info",
            "1 for each steering agent; mode is zerocopy or copy, reinject where frames go back.",
            None,
            MetricType::Gauge,
        )?;
        for (agent, stats) in &steering {
            let labels = [
                ("agent_id", agent.agent_id.as_str()),
                ("interface", agent.interface.as_str()),
                ("mode", stats.mode.as_str()),
                ("reinject", stats.reinject.as_str()),
            ];
            ConstGauge::new(1_i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One ranking of the top talkers.
struct Ranking {
    name: &'static str,
    help: &'static str,
    /// The `by` label of its info series.
    by: &'static str,
    top: fn(&FlowSummary) -> &[TopFlow],
    other: fn(&FlowSummary) -> Count,
    value: fn(&Count) -> u64,
}

const RANKINGS: [Ranking; 2] = [
    Ranking {
        name: "xdt_flow_top_bytes",
        help: "IP bytes of the agent's largest flows by bytes over the last minute, by rank (1 the largest); rank other is every other flow's.",
        by: "bytes",
        top: |s| &s.top_bytes,
        other: |s| s.other_by_bytes,
        value: |c| c.bytes,
    },
    Ranking {
        name: "xdt_flow_top_packets",
        help: "Packets of the agent's largest flows by packets over the last minute, by rank (1 the largest); rank other is every other flow's.",
        by: "packets",
        top: |s| &s.top_packets,
        other: |s| s.other_by_packets,
        value: |c| c.packets,
    },
];

const RANKS: [&str; TOP_FLOWS] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// The top talkers: the values by rank (series that stay as flows come and go: `rank` is
/// `1`..`10` or `other`, never the flow), and which flow holds each named rank as an info
/// series (labels of the flow, value 1), so a flow's key is never part of a value series and
/// the number of series is at most [`crate::catalogue::FLOW_SERIES_PER_AGENT`] per agent
/// whatever the traffic.
fn encode_top_flows(
    encoder: &mut DescriptorEncoder,
    agents: &[&AgentState],
) -> Result<(), std::fmt::Error> {
    let flows: Vec<_> = agents
        .iter()
        .filter_map(|a| Some((*a, a.flow_summary.as_deref()?)))
        .collect();
    if flows.is_empty() {
        return Ok(());
    }
    for ranking in &RANKINGS {
        let mut family =
            encoder.encode_descriptor(ranking.name, ranking.help, None, MetricType::Gauge)?;
        for (agent, summary) in &flows {
            let named = (ranking.top)(summary).iter().map(|flow| Count {
                packets: flow.packets,
                bytes: flow.bytes,
            });
            for (count, rank) in named
                .zip(RANKS)
                .chain([((ranking.other)(summary), "other")])
            {
                let labels = [
                    ("agent_id", agent.agent_id.as_str()),
                    ("interface", agent.interface.as_str()),
                    ("rank", rank),
                ];
                gauge((ranking.value)(&count)).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "xdt_flow_top_info",
        "1 for the flow at each rank of xdt_flow_top_bytes (by=bytes) and xdt_flow_top_packets (by=packets); its labels are the flow's key and rule label.",
        None,
        MetricType::Gauge,
    )?;
    for (agent, summary) in &flows {
        for ranking in &RANKINGS {
            for (flow, rank) in (ranking.top)(summary).iter().zip(RANKS) {
                let key = &flow.key;
                let (src, dst) = (key.src.to_string(), key.dst.to_string());
                let (protocol, src_port, dst_port, vlan) = (
                    key.protocol.to_string(),
                    key.src_port.to_string(),
                    key.dst_port.to_string(),
                    // The outer VLAN id, and the inner one after a dot for 802.1ad.
                    match key.vlans {
                        [outer, 0] => outer.to_string(),
                        [outer, inner] => format!("{outer}.{inner}"),
                    },
                );
                let labels = [
                    ("agent_id", agent.agent_id.as_str()),
                    ("interface", agent.interface.as_str()),
                    ("by", ranking.by),
                    ("rank", rank),
                    ("src", src.as_str()),
                    ("dst", dst.as_str()),
                    ("protocol", protocol.as_str()),
                    ("src_port", src_port.as_str()),
                    ("dst_port", dst_port.as_str()),
                    ("vlan", vlan.as_str()),
                    ("label", flow.label.as_deref().unwrap_or("")),
                ];
                gauge(1).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// One family per figure, one series per agent that has it.
fn encode_figures(
    encoder: &mut DescriptorEncoder,
    figures: &[Figure],
    agents: &[&AgentState],
) -> Result<(), std::fmt::Error> {
    for figure in figures {
        let kind = match figure.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let mut family = encoder.encode_descriptor(figure.name, figure.help, None, kind)?;
        for agent in agents {
            let Some(value) = (figure.value)(agent) else {
                continue;
            };
            let labels = agent_labels(agent);
            let series = family.encode_family(&labels)?;
            match (figure.kind, value) {
                (Kind::Counter, Number::Count(v)) => ConstCounter::new(v).encode(series)?,
                (Kind::Counter, Number::Real(v)) => ConstCounter::new(v).encode(series)?,
                (Kind::Counter, Number::Int(v)) => {
                    ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(series)?;
                }
                (Kind::Gauge, Number::Int(v)) => ConstGauge::new(v).encode(series)?,
                (Kind::Gauge, Number::Real(v)) => ConstGauge::new(v).encode(series)?,
                (Kind::Gauge, Number::Count(v)) => {
                    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(series)?;
                }
            }
        }
    }
    Ok(())
}
