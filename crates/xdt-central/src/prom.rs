//! `/metrics`: Prometheus (OpenMetrics text) from the official `prometheus-client`, through a
//! `Collector` that reads the state at scrape time, so nothing is copied between scrapes.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::state::{AgentState, STEERING_COUNTERS, Shared};

/// Content type of the exposition `prometheus_client::encoding::text` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Per-agent counters taken from the probe's counters: (metric family, help, counter name).
/// `prometheus-client` adds the `_total` suffix of counters.
const PROBE_COUNTERS: &[(&str, &str, &str)] = &[
    (
        "xdp_packets",
        "Packets seen by the XDP probe.",
        "total_packets",
    ),
    ("xdp_bytes", "Bytes seen by the XDP probe.", "total_bytes"),
    ("xdp_packets_tcp", "TCP packets.", "tcp_packets"),
    ("xdp_packets_udp", "UDP packets.", "udp_packets"),
    (
        "xdp_packets_icmp",
        "ICMP and ICMPv6 packets.",
        "icmp_packets",
    ),
    (
        "xdp_packets_other",
        "Packets neither TCP, UDP nor ICMP.",
        "other_packets",
    ),
    ("xdp_packets_ipv4", "IPv4 packets.", "ipv4_packets"),
    ("xdp_packets_ipv6", "IPv6 packets.", "ipv6_packets"),
    (
        "xdp_packets_dropped",
        "Packets dropped by a drop rule.",
        "dropped_packets",
    ),
    (
        "xdp_lost_events",
        "Sampled events lost in the kernel because the probe's ring buffer was full.",
        "lost_events",
    ),
    (
        "xdp_errors",
        "Internal errors of the probe (a failed map lookup); the packet was passed.",
        "errors",
    ),
    (
        "xdp_steered_packets",
        "Packets of steer rules the probe redirected to the agent's AF_XDP socket.",
        "steered_packets",
    ),
    (
        "xdp_steer_fallback_packets",
        "Packets of steer rules passed to the stack instead: no live agent socket or lease.",
        "steer_fallback_packets",
    ),
];

#[derive(Debug)]
struct StateCollector {
    state: Shared,
    max_connections: usize,
}

/// A registry whose only collector reads `state`; `max_connections` is the telemetry
/// listener's limit, reported next to the connections in use.
#[must_use]
pub fn registry(state: Shared, max_connections: usize) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector {
        state,
        max_connections,
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
        let (copies, max_agents) = self.state.figures();
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

        for &(name, help, counter) in PROBE_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for agent in agents.iter().filter(|a| a.counter(counter).is_some()) {
                let value = agent.counter(counter).unwrap_or(0);
                ConstCounter::new(value).encode(family.encode_family(&agent_labels(agent))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "xdp_packets_rate",
            "Packets per second over the last two snapshots.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(agent.rates.packets_per_second)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdp_bytes_rate",
            "Bytes per second over the last two snapshots.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(agent.rates.bits_per_second / 8.0)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }

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

        let mut family = encoder.encode_descriptor(
            "xdt_agent_dropped_events",
            "Sampled events the agent dropped because its unacknowledged-batch buffer was full.",
            None,
            MetricType::Counter,
        )?;
        for agent in &agents {
            ConstCounter::new(agent.agent_stats.dropped_events)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdt_agent_reconnects",
            "Reconnections of the agent to central since the agent started.",
            None,
            MetricType::Counter,
        )?;
        for agent in &agents {
            ConstCounter::new(agent.agent_stats.reconnects)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdt_agent_unacked_batches",
            "Batches waiting for an acknowledgement in the agent.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(i64::from(agent.agent_stats.unacked_batches))
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdt_agent_connected",
            "1 while the agent has a telemetry connection to central, else 0.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(i64::from(agent.connected()))
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdt_agent_last_seen_timestamp_seconds",
            "When central last heard from the agent (a Hello, a batch, its disconnect), in Unix seconds.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(agent.last_seen_unix)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }
        // Only agents whose node has kernel.bpf_stats_enabled=1 report the probe's run time.
        // In seconds, Prometheus' base unit (promtool refuses abbreviated units in names).
        let mut family = encoder.encode_descriptor(
            "xdt_probe_packet_cost_seconds",
            "Average run time of the probe per packet between the agent's last two batches.",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            if let Some(ns) = agent.agent_stats.probe_ns_per_packet {
                ConstGauge::new(ns / 1e9).encode(family.encode_family(&agent_labels(agent))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "xdt_events_received",
            "Sampled events central received from the agent.",
            None,
            MetricType::Counter,
        )?;
        for agent in &agents {
            ConstCounter::new(agent.total_events)
                .encode(family.encode_family(&agent_labels(agent))?)?;
        }

        // AF_XDP steering: series only for the agents that report it, families only if any does.
        let steering: Vec<_> = agents
            .iter()
            .filter_map(|a| Some((*a, a.agent_stats.steering.as_ref()?)))
            .collect();
        if steering.is_empty() {
            return Ok(());
        }
        for counter in &STEERING_COUNTERS {
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
