//! One agent's figures: the newest counters and labels, the rates over the last two
//! snapshots (the steering counters' rates by `catalogue::STEERING`), the agent's own report,
//! recent events and the dashboard's histories, each bounded.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use xdt_common::counters::Counter;
use xdt_wire::{Batch, Event, Flow, FlowStats};

use super::{
    MAX_COUNTERS, MAX_INSTANCES, MAX_LABELS, MAX_SHORT, PAYLOAD_HISTORY, RATE_HISTORY,
    clip::{clip, clip_event, clip_steering, clipped},
    flows::{FlowSummary, FlowWindow},
    time::{FUTURE_TOLERANCE_NS, seconds, to_f64, unix_ns},
};
use crate::catalogue::STEERING;

/// Everything central knows about one agent.
#[derive(Debug)]
pub struct AgentState {
    pub agent_id: String,
    pub hostname: String,
    pub interface: String,
    pub probe_version: String,
    /// The instance of the newest `Hello`.
    pub instance: u64,
    /// (instance, last sequence), newest first, at most `MAX_INSTANCES`.
    pub(crate) sequences: VecDeque<(u64, u64)>,
    /// Open connections (usually 0 or 1; briefly 2 while a dead one times out).
    pub connections: u32,
    pub connected_since_unix: Option<f64>,
    pub last_seen_unix: f64,
    /// The newest cumulative counters, by name, in the agent's order.
    pub counters: Vec<(String, u64)>,
    /// The newest cumulative label counts.
    pub labels: Vec<LabelCount>,
    /// When the newest counters were read (0: never).
    pub taken_at_unix_ns: u64,
    pub rates: Rates,
    pub recent_events: VecDeque<Event>,
    pub total_events: u64,
    pub agent_stats: AgentStats,
    /// The instance whose figures `agent_stats.steering` holds: they count from zero per
    /// instance.
    pub(crate) steering_instance: u64,
    /// Rates of the steering counters over the last two snapshots that both had them.
    pub steering_rates: Option<SteeringRates>,
    /// (unix seconds, packets/s, bits/s), oldest first.
    pub rate_history: VecDeque<[f64; 3]>,
    /// (unix seconds, payload length) of sampled events, oldest first.
    pub payload_history: VecDeque<(f64, u16)>,
    /// Counter names and labels beyond the caps, dropped and counted.
    pub ignored_entries: u64,
    /// The flow records of the last minute, once the agent has sent any (live state only).
    pub flows: Option<Box<FlowWindow>>,
    /// The top talkers as of the copy (only in the copies of [`AgentState::figures`] with a
    /// time: Prometheus reads these, not the window).
    pub flow_summary: Option<Box<FlowSummary>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub packets_per_second: f64,
    pub bits_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The agent's own report, as of its newest batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub dropped_events: u64,
    pub reconnects: u64,
    pub unacked_batches: u32,
    pub probe_ns_per_packet: Option<f64>,
    /// The agent's AF_XDP sockets, if it owns any (absent from `state.json` files of older
    /// versions, and from the JSON when the agent does not steer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<SteeringStats>,
    /// The agent's flow figures, if it sends flows (protocol version 3; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowStats>,
}

/// The agent's AF_XDP steering figures, cumulative for the agent instance; `mode` and
/// `reinject` clipped to [`MAX_SHORT`].
pub use xdt_wire::SteeringStats;

/// Per-second rates of the steering counters over the last two snapshots, in
/// [`STEERING`] order; serialised as `{rate key: value}`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SteeringRates(pub [f64; STEERING.len()]);

impl SteeringRates {
    /// From the previous figures to `now` over `elapsed` seconds; `same_instance` false means
    /// `now` counted from zero (a restarted agent), as does any counter that went backwards.
    fn between(
        before: &SteeringStats,
        now: &SteeringStats,
        same_instance: bool,
        elapsed: f64,
    ) -> Self {
        Self(STEERING.map(|counter| {
            let (now, before) = ((counter.value)(now), (counter.value)(before));
            let delta = if same_instance && now >= before {
                now - before
            } else {
                now
            };
            to_f64(delta) / elapsed * counter.rate.1
        }))
    }

    /// The rate named `key` (`received_packets_per_second`, ...).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<f64> {
        STEERING
            .iter()
            .position(|c| c.rate.0 == key)
            .map(|i| self.0[i])
    }
}

impl Serialize for SteeringRates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(STEERING.len()))?;
        for (counter, value) in STEERING.iter().zip(self.0) {
            map.serialize_entry(counter.rate.0, &value)?;
        }
        map.end()
    }
}

impl AgentState {
    pub(crate) fn new(agent_id: String) -> Self {
        Self {
            agent_id,
            hostname: String::new(),
            interface: String::new(),
            probe_version: String::new(),
            instance: 0,
            sequences: VecDeque::new(),
            connections: 0,
            connected_since_unix: None,
            last_seen_unix: 0.0,
            counters: Vec::new(),
            labels: Vec::new(),
            taken_at_unix_ns: 0,
            rates: Rates::default(),
            recent_events: VecDeque::new(),
            total_events: 0,
            agent_stats: AgentStats::default(),
            steering_instance: 0,
            steering_rates: None,
            rate_history: VecDeque::new(),
            payload_history: VecDeque::new(),
            ignored_entries: 0,
            flows: None,
            flow_summary: None,
        }
    }

    /// A copy of the figures, without the recent events and histories; with the top talkers
    /// as of `flows_at` (Unix seconds) if given.
    pub(super) fn figures(&self, flows_at: Option<f64>) -> Self {
        Self {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            interface: self.interface.clone(),
            probe_version: self.probe_version.clone(),
            instance: self.instance,
            sequences: self.sequences.clone(),
            connections: self.connections,
            connected_since_unix: self.connected_since_unix,
            last_seen_unix: self.last_seen_unix,
            counters: self.counters.clone(),
            labels: self.labels.clone(),
            taken_at_unix_ns: self.taken_at_unix_ns,
            rates: self.rates,
            recent_events: VecDeque::new(),
            total_events: self.total_events,
            agent_stats: self.agent_stats.clone(),
            steering_instance: self.steering_instance,
            steering_rates: self.steering_rates,
            rate_history: VecDeque::new(),
            payload_history: VecDeque::new(),
            ignored_entries: self.ignored_entries,
            flows: None,
            flow_summary: flows_at.and_then(|now| {
                self.flows
                    .as_ref()
                    .map(|window| Box::new(window.summary(now)))
            }),
        }
    }

    #[must_use]
    pub fn connected(&self) -> bool {
        self.connections > 0
    }

    /// The highest sequence held for the instance, 0 if none.
    #[must_use]
    pub fn last_sequence(&self, instance: u64) -> u64 {
        self.sequences
            .iter()
            .find(|(i, _)| *i == instance)
            .map_or(0, |(_, s)| *s)
    }

    /// The newest value of a counter.
    #[must_use]
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub(super) fn set_last_sequence(&mut self, instance: u64, sequence: u64) {
        if let Some(pos) = self.sequences.iter().position(|(i, _)| *i == instance) {
            self.sequences.remove(pos);
        }
        self.sequences.push_front((instance, sequence));
        self.sequences.truncate(MAX_INSTANCES);
    }

    /// Which snapshot is newest is decided by the agent's own order, never by its clock: the
    /// batches of the instance of the newest `Hello` replace the figures (the dedup lets only
    /// rising sequences through), a replayed batch of an older instance does not. `taken_at` is
    /// only used for rates and display, clamped to a few seconds past central's clock, so a
    /// batch from a clock a year ahead cannot freeze the figures (nor survive in state.json).
    ///
    /// Flow records are deltas, like events: every applied batch's go into the window. The
    /// agent's flow figures are cumulative, like the steering ones: the current instance's win.
    pub(super) fn apply(
        &mut self,
        instance: u64,
        batch: Batch,
        flows: Option<(Vec<Flow>, FlowStats)>,
        recent_cap: usize,
        now: f64,
    ) {
        let Batch {
            sequence: _,
            taken_at_unix_ns,
            mut counters,
            labels,
            events,
            mut agent,
        } = batch;
        let taken_at_unix_ns = taken_at_unix_ns.min(unix_ns(now) + FUTURE_TOLERANCE_NS);
        let current = instance == self.instance;
        let steering = agent.steering.take().map(clip_steering);

        // Rates from this snapshot and the previous one; a counter that went backwards was
        // reset (the probe was re-attached), so it counted up from zero since.
        let (packets, bytes) = (Counter::TotalPackets.name(), Counter::TotalBytes.name());
        let (packets_before, bytes_before) = (self.counter(packets), self.counter(bytes));
        let (packets, bytes) = (find(&counters, packets), find(&counters, bytes));
        if current && self.taken_at_unix_ns != 0 && taken_at_unix_ns > self.taken_at_unix_ns {
            let elapsed = seconds(taken_at_unix_ns - self.taken_at_unix_ns);
            let delta = |now: Option<u64>, before: Option<u64>| match (now, before) {
                (Some(now), Some(before)) if now >= before => to_f64(now - before),
                (Some(now), _) => to_f64(now),
                (None, _) => 0.0,
            };
            self.rates = Rates {
                packets_per_second: delta(packets, packets_before) / elapsed,
                bits_per_second: delta(bytes, bytes_before) * 8.0 / elapsed,
            };
            self.steering_rates = match (&self.agent_stats.steering, &steering) {
                (Some(before), Some(now)) => Some(SteeringRates::between(
                    before,
                    now,
                    self.steering_instance == instance,
                    elapsed,
                )),
                _ => None,
            };
            if self.rate_history.len() == RATE_HISTORY {
                self.rate_history.pop_front();
            }
            self.rate_history.push_back([
                seconds(taken_at_unix_ns),
                self.rates.packets_per_second,
                self.rates.bits_per_second,
            ]);
        }
        if current {
            if counters.len() > MAX_COUNTERS {
                self.ignored_entries += (counters.len() - MAX_COUNTERS) as u64;
                counters.truncate(MAX_COUNTERS);
                // The agent's allocation for all of them would stay otherwise.
                counters.shrink_to_fit();
            }
            for (name, _) in &mut counters {
                clip(name, MAX_SHORT);
            }
            self.counters = counters;
            if labels.len() > MAX_LABELS {
                self.ignored_entries += (labels.len() - MAX_LABELS) as u64;
            }
            self.labels = labels
                .into_iter()
                .take(MAX_LABELS)
                .map(|l| LabelCount {
                    label: clipped(&l.label, MAX_SHORT).to_owned(),
                    packets: l.packets,
                    bytes: l.bytes,
                })
                .collect();
            self.taken_at_unix_ns = taken_at_unix_ns;
            // The steering figures are cumulative like the counters and read with them: the
            // newest snapshot wins, and a replayed older one (say, of a previous instance)
            // must not turn them back.
            self.agent_stats.steering = steering;
            self.steering_instance = instance;
            if self.agent_stats.steering.is_none() {
                self.steering_rates = None;
            }
        }
        if let Some((records, stats)) = flows {
            if current {
                self.agent_stats.flows = Some(stats);
            }
            self.flows
                .get_or_insert_with(|| Box::new(FlowWindow::new(now)))
                .add(records, now);
        }
        self.agent_stats.dropped_events = agent.dropped_events;
        self.agent_stats.reconnects = agent.reconnects;
        self.agent_stats.unacked_batches = agent.unacked_batches;
        self.agent_stats.probe_ns_per_packet = agent.probe_ns_per_packet.filter(|v| v.is_finite());

        self.total_events += events.len() as u64;
        // Only the newest events can survive the caps: skip the rest without touching them.
        let count = events.len();
        let payload_from = count.saturating_sub(PAYLOAD_HISTORY);
        let recent_from = count.saturating_sub(recent_cap);
        for (i, mut event) in events
            .into_iter()
            .enumerate()
            .skip(payload_from.min(recent_from))
        {
            if i >= payload_from {
                if self.payload_history.len() == PAYLOAD_HISTORY {
                    self.payload_history.pop_front();
                }
                self.payload_history
                    .push_back((seconds(event.timestamp_unix_ns), event.headers.payload_len));
            }
            if i >= recent_from {
                if self.recent_events.len() >= recent_cap {
                    self.recent_events.pop_front();
                }
                clip_event(&mut event);
                self.recent_events.push_back(event);
            }
        }
    }
}

fn find(counters: &[(String, u64)], name: &str) -> Option<u64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}
