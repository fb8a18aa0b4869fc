//! `/metrics.json`: the seed's shape `{ total_events, nodes: [ { agent_id, total_events,
//! label_counts, recent_events } ] }`, with more fields per node (never fewer). Agent-supplied
//! strings are data: serde_json escapes them.
//!
//! The document is rendered a few agents at a time, each slice under its own short read lock,
//! so ingest waits at most for one slice, never for the whole fleet. Its size is bounded for any
//! fleet: the recent events, payload and rate points of each node are the newest of a share of
//! a fleet-wide budget ([`EVENT_BUDGET`], [`PAYLOAD_BUDGET`], [`RATE_BUDGET`]). [`Cache`] renders it at most once
//! at a time and serves the rendered document to every reader that comes while it is fresh.

use serde::{Serialize, Serializer, ser::SerializeMap as _};

use xdt_common::counters::Counter;
use xdt_wire::{Event, Headers, Inspection};

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::state::{
    AgentState, AgentStats, FlowSummary, LabelCount, Rates, Shared, SteeringRates, now_unix,
    seconds,
};

/// Recent events in one document, shared among the nodes (each gets at least
/// [`MIN_EVENTS_PER_NODE`], at most `--recent-events`).
pub const EVENT_BUDGET: usize = 16_384;
pub const MIN_EVENTS_PER_NODE: usize = 4;
/// Payload-history and rate-history points in one document, each shared the same way.
pub const PAYLOAD_BUDGET: usize = 65_536;
pub const MIN_PAYLOAD_PER_NODE: usize = 16;
pub const RATE_BUDGET: usize = 32_768;
pub const MIN_RATES_PER_NODE: usize = 8;
/// Agents rendered per hold of the read lock.
const SLICE: usize = 8;
/// A document is served again for up to this multiple of the time it took to render (and
/// at most [`MAX_AGE`]), so rendering takes at most about a fifth of a core however many
/// dashboards poll; a document whose state has not changed is served until it does.
const AGE_PER_RENDER_TIME: u32 = 4;
const MAX_AGE: Duration = Duration::from_secs(1);

/// How many of a node's recent events and payload points go into the document.
#[derive(Debug, Clone, Copy)]
struct Shares {
    events: usize,
    payload: usize,
    rates: usize,
}

impl Shares {
    fn for_fleet(agents: usize) -> Self {
        let agents = agents.max(1);
        Self {
            events: (EVENT_BUDGET / agents).max(MIN_EVENTS_PER_NODE),
            payload: (PAYLOAD_BUDGET / agents).max(MIN_PAYLOAD_PER_NODE),
            rates: (RATE_BUDGET / agents).max(MIN_RATES_PER_NODE),
        }
    }
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
    /// The top talkers of the last minute (absent when the agent sends no flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    flows: Option<FlowSummary>,
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

/// A recent event with the seed's field names, and the inspection of a steered packet. Not the
/// wire `Event` itself: its field order is postcard's encoding, this one the seed's JSON, and
/// `inspection` is left out here when absent (postcard cannot skip a field).
#[derive(Serialize)]
struct EventJson<'a> {
    timestamp_unix_ns: u64,
    label: &'a str,
    rule: u32,
    action: &'a str,
    /// The packet's headers, their fields in place (the PoC's shape keeps them before
    /// `rx_queue`).
    #[serde(flatten)]
    headers: &'a Headers,
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

impl<'a> From<&'a Event> for EventJson<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            timestamp_unix_ns: e.timestamp_unix_ns,
            label: &e.label,
            rule: e.rule,
            action: &e.action,
            headers: &e.headers,
            rx_queue: e.rx_queue,
            inspection: e.inspection.as_deref().map(InspectionJson::from),
        }
    }
}

impl<'a> From<&'a Inspection> for InspectionJson<'a> {
    fn from(i: &'a Inspection) -> Self {
        Self {
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
}

fn node(agent: &AgentState, shares: Shares, now: f64) -> Node<'_> {
    let skip_events = agent.recent_events.len().saturating_sub(shares.events);
    let skip_payload = agent.payload_history.len().saturating_sub(shares.payload);
    let skip_rates = agent.rate_history.len().saturating_sub(shares.rates);
    Node {
        agent_id: &agent.agent_id,
        total_events: agent.total_events,
        label_counts: &agent.labels,
        recent_events: agent
            .recent_events
            .iter()
            .skip(skip_events)
            .map(EventJson::from)
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
        rate_history: agent
            .rate_history
            .iter()
            .skip(skip_rates)
            .copied()
            .collect(),
        payload_history: agent
            .payload_history
            .iter()
            .skip(skip_payload)
            .copied()
            .collect(),
        agent: &agent.agent_stats,
        lost_events: agent.counter(Counter::LostEvents.name()).unwrap_or(0),
        ignored_entries: agent.ignored_entries,
        flows: agent.flows.as_ref().map(|window| window.summary(now)),
    }
}

/// The body of `/metrics.json`, rendered a slice of agents per read lock.
#[must_use]
pub fn render(shared: &Shared) -> Vec<u8> {
    render_at(shared, now_unix())
}

/// [`render`] as of `now` (Unix seconds): the top talkers' minute ends there.
pub(crate) fn render_at(shared: &Shared, now: f64) -> Vec<u8> {
    let shares = Shares::for_fleet(shared.read().agent_count());
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"{\"nodes\":[");
    let mut total_events = 0u64;
    let mut after: Option<String> = None;
    let mut first = true;
    loop {
        let state = shared.read();
        let mut rendered = 0;
        for agent in state.agents_after(after.as_deref()).take(SLICE) {
            if !first {
                out.push(b',');
            }
            first = false;
            // Serialising plain structs of strings and numbers into a Vec cannot fail
            // (non-finite floats become null); never panic on it either.
            if let Err(e) = serde_json::to_writer(&mut out, &node(agent, shares, now)) {
                log::error!(cause:% = e; "cannot render a node of /metrics.json");
                out.extend_from_slice(b"null");
            }
            total_events += agent.total_events;
            rendered += 1;
            after = Some(agent.agent_id.clone());
        }
        if rendered < SLICE {
            break;
        }
        drop(state);
        crate::state::let_writers_in();
    }
    out.extend_from_slice(format!("],\"total_events\":{total_events}}}").as_bytes());
    out
}

/// A rendered document.
#[derive(Debug, Clone)]
pub struct Document(Arc<Vec<u8>>);

impl AsRef<[u8]> for Document {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug)]
struct Cached {
    document: Document,
    generation: u64,
    rendered_at: Instant,
    took: Duration,
}

/// The newest rendered document, shared by all readers while fresh.
#[derive(Debug, Default)]
pub struct Cache {
    newest: Mutex<Option<Cached>>,
    /// Held while rendering: readers that come meanwhile wait, then take its document.
    rendering: Mutex<()>,
}

impl Cache {
    /// The document: the cached one while fresh, else a new one (one render at a time).
    pub fn get(&self, shared: &Shared) -> Document {
        if let Some(document) = self.fresh(shared) {
            return document;
        }
        let _rendering = self
            .rendering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(document) = self.fresh(shared) {
            return document;
        }
        let generation = shared.read().generation();
        let start = Instant::now();
        let document = Document(Arc::new(render(shared)));
        *self.newest.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            document: document.clone(),
            generation,
            rendered_at: Instant::now(),
            took: start.elapsed(),
        });
        document
    }

    fn fresh(&self, shared: &Shared) -> Option<Document> {
        let newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = newest.as_ref()?;
        let max_age = (cached.took * AGE_PER_RENDER_TIME).min(MAX_AGE);
        let unchanged = shared.read().generation() == cached.generation;
        (unchanged || cached.rendered_at.elapsed() < max_age).then(|| cached.document.clone())
    }
}
