//! Per-agent statistics: who is connected, the newest counter snapshot and the rates derived
//! from the last two, recent events, histories for the dashboard, and the highest sequence held
//! per agent instance (the dedup key that makes replayed batches count once).
//!
//! Every collection has a fixed cap (the `MAX_*` and `*_HISTORY` constants, `--recent-events`,
//! `--max-agents`) and agent-supplied strings are clipped, so memory is bounded whatever agents
//! send; docs/central.md gives the figures.

use std::{
    collections::{BTreeMap, VecDeque, btree_map::Entry},
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use xdt_wire::{Batch, Event, Hello};

use xdt_common::counters::Counter;

use crate::{catalogue::STEERING, counters::Counters};

/// Upper bound accepted for `--recent-events`.
pub const MAX_RECENT_EVENTS: usize = 65_536;
/// Rate points kept per agent (two minutes at a 1 s batch interval).
pub const RATE_HISTORY: usize = 120;
/// (time, payload length) points kept per agent.
pub const PAYLOAD_HISTORY: usize = 512;
/// Counter names kept per agent (the probe has `xdt_common::counters::COUNT`, 21).
pub const MAX_COUNTERS: usize = 64;
/// Label entries kept per agent (the probe's label table holds 1024).
pub const MAX_LABELS: usize = 1024;
/// Agent instances whose last sequence is remembered per agent.
pub const MAX_INSTANCES: usize = 8;
/// Longest agent id, hostname, interface or version, in bytes (the protocol refuses longer).
pub const MAX_NAME: usize = xdt_wire::MAX_NAME;
/// Longest label, action or counter name kept, in bytes (probe labels are at most 60); also an
/// HTTP method and the steering mode and re-injection target.
pub const MAX_SHORT: usize = 64;
/// Longest HTTP path, HTTP Host or DNS name kept from a steered packet, in bytes (a DNS name
/// has at most 253).
pub const MAX_INSPECTED: usize = 255;

/// The state shared by the ingest tasks, the HTTP threads, the Prometheus collector and the
/// OTLP callbacks. A poisoned lock is recovered: every update leaves the state consistent.
/// Central's own counters travel with it (they are atomics, outside the lock).
#[derive(Debug, Clone)]
pub struct Shared(Arc<RwLock<State>>, Arc<Counters>);

impl Shared {
    #[must_use]
    pub fn new(state: State) -> Self {
        let counters = Arc::clone(&state.counters);
        Self(Arc::new(RwLock::new(state)), counters)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// What central dropped, refused or failed to do.
    #[must_use]
    pub fn counters(&self) -> &Arc<Counters> {
        &self.1
    }

    /// Every agent's figures without its recent events and histories, and `--max-agents`,
    /// copied [`FIGURES_SLICE`] agents per hold of the read lock: exporters encode from the
    /// copies, so a scrape of thousands of series never holds ingest up.
    #[must_use]
    pub fn figures(&self) -> (Vec<AgentState>, usize) {
        let (count, max_agents) = {
            let state = self.read();
            (state.agent_count(), state.max_agents)
        };
        let mut copies = Vec::with_capacity(count);
        loop {
            let state = self.read();
            let after = copies.last().map(|a: &AgentState| a.agent_id.as_str());
            let before = copies.len();
            copies.extend(
                state
                    .agents_after(after)
                    .take(FIGURES_SLICE)
                    .map(AgentState::figures),
            );
            if copies.len() - before < FIGURES_SLICE {
                return (copies, max_agents);
            }
            drop(state);
            let_writers_in();
        }
    }
}

impl Shared {
    /// The content of `state.json`, copied [`FIGURES_SLICE`] agents per hold of the read lock
    /// after `before` ran under it: what was applied before `before` is in the copy (the
    /// journal rotates its segment there, so the older segments may go once the copy is
    /// durable); what comes after may be too, which a replay's dedup absorbs.
    pub fn persisted_after<T>(&self, before: impl FnOnce() -> T) -> (Persisted, T) {
        let marker = {
            let _state = self.read();
            before()
        };
        let mut agents: Vec<PersistedAgent> = Vec::new();
        loop {
            let state = self.read();
            let after = agents.last().map(|a| a.agent_id.as_str());
            let count = agents.len();
            agents.extend(
                state
                    .agents_after(after)
                    .take(FIGURES_SLICE)
                    .map(AgentState::to_persisted),
            );
            if agents.len() - count < FIGURES_SLICE {
                break;
            }
            drop(state);
            let_writers_in();
        }
        let persisted = Persisted {
            version: Persisted::VERSION,
            agents,
        };
        (persisted, marker)
    }
}

/// Agents copied per hold of the read lock by [`Shared::figures`].
const FIGURES_SLICE: usize = 64;

/// Called between two holds of the read lock by a loop that takes it slice after slice: a
/// writer woken when the lock is released must get it before the loop takes it again (it
/// otherwise does, right away, while the writer is still being scheduled: a render of
/// `/metrics.json` kept ingest waiting 40 ms).
pub fn let_writers_in() {
    std::thread::sleep(std::time::Duration::from_micros(50));
}

#[derive(Debug)]
pub struct State {
    agents: BTreeMap<String, AgentState>,
    max_agents: usize,
    recent_events: usize,
    /// Bumped by every change, so unchanged state is not saved again.
    generation: u64,
    /// New agents admitted at once, refilled at [`NEW_AGENTS_PER_SECOND`].
    new_agent_tokens: f64,
    new_agent_refill_at: f64,
    counters: Arc<Counters>,
    /// Agents removed since [`State::take_removed`] last ran (for the journal).
    removed: Vec<String>,
}

/// New agents admitted in a burst, then this many per second: an authenticated peer cycling
/// through ids churns the table slowly instead of replacing it at once.
pub const NEW_AGENT_BURST: u32 = 1024;
pub const NEW_AGENTS_PER_SECOND: u32 = 64;

/// Why a new agent was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table holds `max` agents and every one is connected.
    TableFull { max: usize },
    /// More new agents than [`NEW_AGENT_BURST`] and [`NEW_AGENTS_PER_SECOND`] allow.
    TooManyNew,
}

/// What happened to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored.
    New,
    /// Its sequence is not above the last one held for the instance: ignored.
    Duplicate,
}

impl State {
    #[must_use]
    pub fn new(max_agents: usize, recent_events: usize) -> Self {
        Self {
            agents: BTreeMap::new(),
            max_agents,
            recent_events: recent_events.min(MAX_RECENT_EVENTS),
            generation: 0,
            new_agent_tokens: f64::from(NEW_AGENT_BURST),
            new_agent_refill_at: 0.0,
            counters: Arc::default(),
            removed: Vec::new(),
        }
    }

    /// The ids of the agents evicted or expired since the last call.
    pub fn take_removed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removed)
    }

    /// Removes an agent (a journal replay of its removal).
    pub(crate) fn forget(&mut self, agent_id: &str) {
        if self.agents.remove(agent_id).is_some() {
            self.generation += 1;
        }
    }

    /// Central's counters (shared with [`Shared`]).
    #[must_use]
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Changes so far (see [`State::to_persisted`]).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Agents by id.
    pub fn agents(&self) -> impl Iterator<Item = &AgentState> {
        self.agents.values()
    }

    /// How many agents the table holds.
    #[must_use]
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// How many agents the table can hold (`--max-agents`).
    #[must_use]
    pub fn max_agents(&self) -> usize {
        self.max_agents
    }

    /// Agents by id, from the first after `after` (from the first of all with `None`).
    pub fn agents_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a AgentState> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let range = match after {
            Some(after) => self.agents.range::<str, _>((Excluded(after), Unbounded)),
            None => self.agents.range::<str, _>((Unbounded, Unbounded)),
        };
        range.map(|(_, agent)| agent)
    }

    #[must_use]
    pub fn agent(&self, agent_id: &str) -> Option<&AgentState> {
        self.agents.get(agent_id)
    }

    /// Events received from every agent.
    #[must_use]
    pub fn total_events(&self) -> u64 {
        self.agents.values().map(|a| a.total_events).sum()
    }

    /// Registers a connection of the agent and returns the last sequence held for its instance
    /// (0 if none). A new agent is admitted within the new-agent rate; in a full table it takes
    /// the place of the agent disconnected longest, and is refused only when every agent in
    /// the table is connected.
    pub fn connect(&mut self, hello: &Hello, now: f64) -> Result<u64, Refused> {
        let agent_id = clipped(&hello.agent_id, MAX_NAME);
        if !self.agents.contains_key(agent_id) && !self.take_over(agent_id, &hello.interface) {
            self.admit_new(now)?;
        }
        let agent = match self.agents.entry(agent_id.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(AgentState::new(agent_id.to_owned())),
        };
        self.generation += 1;
        clipped(&hello.hostname, MAX_NAME).clone_into(&mut agent.hostname);
        clipped(&hello.interface, MAX_NAME).clone_into(&mut agent.interface);
        clipped(&hello.probe_version, MAX_NAME).clone_into(&mut agent.probe_version);
        agent.instance = hello.instance;
        if agent.connections == 0 {
            agent.connected_since_unix = Some(now);
        }
        agent.connections += 1;
        agent.last_seen_unix = now;
        Ok(agent.last_sequence(hello.instance))
    }

    /// Agents were named by host only before one interface became one agent (`host/IF`): a
    /// new `host/IF` takes over the disconnected entry named `host` whose interface is `IF`,
    /// with its history. Returns whether it did.
    fn take_over(&mut self, agent_id: &str, interface: &str) -> bool {
        let Some((host, suffix)) = agent_id.rsplit_once('/') else {
            return false;
        };
        let matches = self.agents.get(host).is_some_and(|old| {
            !old.connected() && old.interface == interface && suffix == interface
        });
        if !matches {
            return false;
        }
        let Some(mut agent) = self.agents.remove(host) else {
            return false;
        };
        agent_id.clone_into(&mut agent.agent_id);
        self.agents.insert(agent_id.to_owned(), agent);
        self.removed.push(host.to_owned());
        self.generation += 1;
        log::info!(
            agent_id:? = agent_id, old_agent_id:? = host;
            "agent id migrated: the entry named by host only is taken over by host/interface"
        );
        true
    }

    /// Makes room for one new agent, or says why not.
    fn admit_new(&mut self, now: f64) -> Result<(), Refused> {
        let elapsed = (now - self.new_agent_refill_at).max(0.0);
        self.new_agent_tokens = (self.new_agent_tokens
            + elapsed * f64::from(NEW_AGENTS_PER_SECOND))
        .min(f64::from(NEW_AGENT_BURST));
        self.new_agent_refill_at = now;
        if self.new_agent_tokens < 1.0 {
            Counters::add(&self.counters.agents_refused);
            return Err(Refused::TooManyNew);
        }
        if self.agents.len() >= self.max_agents {
            let oldest = self
                .agents
                .values()
                .filter(|a| !a.connected())
                .min_by(|a, b| a.last_seen_unix.total_cmp(&b.last_seen_unix))
                .map(|a| a.agent_id.clone());
            let Some(oldest) = oldest else {
                Counters::add(&self.counters.agents_refused);
                return Err(Refused::TableFull {
                    max: self.max_agents,
                });
            };
            let evicted = self.agents.remove(&oldest);
            Counters::add(&self.counters.agents_evicted);
            log::info!(
                agent_id:? = oldest, last_seen_unix = evicted.map_or(0.0, |a| a.last_seen_unix);
                "agent evicted: the table is full and a new agent came"
            );
            self.removed.push(oldest);
        }
        self.new_agent_tokens -= 1.0;
        Ok(())
    }

    /// Removes the agents without a connection for longer than `expiry` seconds; returns how
    /// many.
    pub fn expire(&mut self, now: f64, expiry: f64) -> usize {
        let stale: Vec<String> = self
            .agents
            .values()
            .filter(|a| !a.connected() && now - a.last_seen_unix > expiry)
            .map(|a| a.agent_id.clone())
            .collect();
        for agent_id in &stale {
            if let Some(agent) = self.agents.remove(agent_id) {
                Counters::add(&self.counters.agents_expired);
                log::info!(
                    agent_id:? = agent_id, last_seen_unix = agent.last_seen_unix;
                    "agent expired: no connection for longer than --agent-expiry"
                );
            }
        }
        let count = stale.len();
        if count > 0 {
            self.generation += 1;
        }
        self.removed.extend(stale);
        count
    }

    /// A connection of the agent closed.
    pub fn disconnect(&mut self, agent_id: &str, now: f64) {
        self.generation += 1;
        if let Some(agent) = self.agents.get_mut(clipped(agent_id, MAX_NAME)) {
            agent.connections = agent.connections.saturating_sub(1);
            if agent.connections == 0 {
                agent.connected_since_unix = None;
            }
            agent.last_seen_unix = now;
        }
    }

    /// Applies the batch if its sequence is above the last one held for (agent, instance).
    pub fn apply(&mut self, agent_id: &str, instance: u64, batch: Batch, now: f64) -> Applied {
        let cap = self.recent_events;
        let Some(agent) = self.agents.get_mut(clipped(agent_id, MAX_NAME)) else {
            // Only a connected agent sends batches, and agents are never removed.
            return Applied::Duplicate;
        };
        agent.last_seen_unix = now;
        if batch.sequence <= agent.last_sequence(instance) {
            return Applied::Duplicate;
        }
        agent.set_last_sequence(instance, batch.sequence);
        self.generation += 1;
        agent.apply(instance, batch, cap, now);
        Applied::New
    }

    /// Applies a batch from the journal at start: the agent is registered as its `Hello` said
    /// (not connected, whatever the table's limits: it was admitted before), then the batch
    /// goes through [`State::apply`], whose dedup drops what the snapshot already holds.
    pub(crate) fn replay(&mut self, record: &crate::journal::Record<'_>, batch: Batch) {
        let agent_id = clipped(record.agent_id, MAX_NAME);
        let agent = self
            .agents
            .entry(agent_id.to_owned())
            .or_insert_with(|| AgentState::new(agent_id.to_owned()));
        clipped(record.hostname, MAX_NAME).clone_into(&mut agent.hostname);
        clipped(record.interface, MAX_NAME).clone_into(&mut agent.interface);
        clipped(record.probe_version, MAX_NAME).clone_into(&mut agent.probe_version);
        agent.instance = record.instance;
        self.generation += 1;
        self.apply(agent_id, record.instance, batch, record.received_unix);
    }

    /// What survives a restart.
    #[must_use]
    pub fn to_persisted(&self) -> Persisted {
        Persisted {
            version: Persisted::VERSION,
            agents: self.agents.values().map(AgentState::to_persisted).collect(),
        }
    }

    /// Restores persisted agents (all disconnected, no recent events or history).
    pub fn restore(&mut self, persisted: Persisted) {
        self.generation += 1;
        for p in persisted.agents {
            let agent = AgentState::from_persisted(p);
            self.agents.insert(agent.agent_id.clone(), agent);
        }
    }
}

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
    sequences: VecDeque<(u64, u64)>,
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
    steering_instance: u64,
    /// Rates of the steering counters over the last two snapshots that both had them.
    pub steering_rates: Option<SteeringRates>,
    /// (unix seconds, packets/s, bits/s), oldest first.
    pub rate_history: VecDeque<[f64; 3]>,
    /// (unix seconds, payload length) of sampled events, oldest first.
    pub payload_history: VecDeque<(f64, u16)>,
    /// Counter names and labels beyond the caps, dropped and counted.
    pub ignored_entries: u64,
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

fn clip_steering(mut s: SteeringStats) -> SteeringStats {
    clip(&mut s.mode, MAX_SHORT);
    clip(&mut s.reinject, MAX_SHORT);
    s
}

/// Clips the strings an agent sent in `e`, so a kept event's size is bounded.
fn clip_event(e: &mut Event) {
    clip(&mut e.label, MAX_SHORT);
    clip(&mut e.action, MAX_SHORT);
    if let Some(i) = &mut e.inspection {
        if let Some(http) = &mut i.http {
            clip(&mut http.method, MAX_SHORT);
            clip(&mut http.path, MAX_INSPECTED);
            if let Some(host) = &mut http.host {
                clip(host, MAX_INSPECTED);
            }
        }
        if let Some(dns) = &mut i.dns {
            clip(&mut dns.name, MAX_INSPECTED);
        }
    }
}

impl AgentState {
    fn new(agent_id: String) -> Self {
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
        }
    }

    /// A copy of the figures, without the recent events and histories.
    fn figures(&self) -> Self {
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

    fn set_last_sequence(&mut self, instance: u64, sequence: u64) {
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
    fn apply(&mut self, instance: u64, batch: Batch, recent_cap: usize, now: f64) {
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
                    .push_back((seconds(event.timestamp_unix_ns), event.payload_len));
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

    fn to_persisted(&self) -> PersistedAgent {
        PersistedAgent {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            interface: self.interface.clone(),
            probe_version: self.probe_version.clone(),
            instance: self.instance,
            sequences: self.sequences.iter().copied().collect(),
            last_seen_unix: self.last_seen_unix,
            total_events: self.total_events,
            taken_at_unix_ns: self.taken_at_unix_ns,
            counters: self.counters.clone(),
            labels: self.labels.clone(),
            agent: self.agent_stats.clone(),
        }
    }

    fn from_persisted(p: PersistedAgent) -> Self {
        let mut agent = Self::new(clipped(&p.agent_id, MAX_NAME).to_owned());
        clipped(&p.hostname, MAX_NAME).clone_into(&mut agent.hostname);
        clipped(&p.interface, MAX_NAME).clone_into(&mut agent.interface);
        clipped(&p.probe_version, MAX_NAME).clone_into(&mut agent.probe_version);
        agent.instance = p.instance;
        agent.sequences = p.sequences.into_iter().take(MAX_INSTANCES).collect();
        agent.last_seen_unix = p.last_seen_unix;
        agent.total_events = p.total_events;
        agent.taken_at_unix_ns = p.taken_at_unix_ns;
        agent.counters = p.counters.into_iter().take(MAX_COUNTERS).collect();
        agent.labels = p.labels.into_iter().take(MAX_LABELS).collect();
        agent.agent_stats = p.agent;
        // Which instance the steering figures came from is not saved: most likely the newest.
        agent.steering_instance = p.instance;
        agent
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "rates and times for display: 53 bits of precision are plenty"
)]
fn to_f64(value: u64) -> f64 {
    value as f64
}

/// How far past central's clock an agent's `taken_at` may be (clock skew between hosts).
const FUTURE_TOLERANCE_NS: u64 = 5_000_000_000;

/// Unix seconds as nanoseconds (0 before the epoch).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a time of day in nanoseconds fits u64 until 2554; negative ones become 0"
)]
fn unix_ns(seconds: f64) -> u64 {
    (seconds * 1e9).max(0.0) as u64
}

/// Nanoseconds as seconds.
#[must_use]
pub fn seconds(ns: u64) -> f64 {
    to_f64(ns) / 1e9
}

fn find(counters: &[(String, u64)], name: &str) -> Option<u64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn clipped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Clips `s` to `max` bytes into an allocation of the clipped size: `truncate` would keep the
/// agent's whole allocation alive (a 1 MB label kept 1 MB per recent event).
fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        *s = clipped(s, max).to_owned();
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The content of `state.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    pub version: u32,
    pub agents: Vec<PersistedAgent>,
}

impl Persisted {
    pub const VERSION: u32 = 1;
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedAgent {
    pub agent_id: String,
    pub hostname: String,
    pub interface: String,
    pub probe_version: String,
    /// The newest instance.
    pub instance: u64,
    /// (instance, last sequence held), newest first.
    pub sequences: Vec<(u64, u64)>,
    pub last_seen_unix: f64,
    pub total_events: u64,
    pub taken_at_unix_ns: u64,
    pub counters: Vec<(String, u64)>,
    pub labels: Vec<LabelCount>,
    pub agent: AgentStats,
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "the rates of these tests are exact")]
mod tests {
    use super::*;
    use xdt_wire::{AgentStats as WireStats, LabelCount as WireLabel};

    /// Central's clock in these tests: the batches' times (a few hundred seconds) are past.
    const NOW: f64 = 2e9;

    fn hello(agent_id: &str, instance: u64) -> Hello {
        Hello {
            agent_id: agent_id.into(),
            hostname: "host".into(),
            interface: "eth0".into(),
            probe_version: "0.1.0".into(),
            instance,
            token: "t".into(),
        }
    }

    fn event(ts: u64, payload_len: u16) -> Event {
        Event {
            timestamp_unix_ns: ts,
            label: "web".into(),
            rule: 1,
            action: "sample".into(),
            rx_queue: 0,
            protocol: 6,
            src: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.2".parse().expect("ip"),
            src_port: 1234,
            dst_port: 80,
            ip_len: 60,
            payload_len,
            tcp_flags: 0x18,
            inspection: None,
        }
    }

    fn batch(sequence: u64, taken_s: u64, packets: u64, bytes: u64, events: usize) -> Batch {
        Batch {
            sequence,
            taken_at_unix_ns: taken_s * 1_000_000_000,
            counters: vec![
                ("total_packets".into(), packets),
                ("total_bytes".into(), bytes),
            ],
            labels: vec![WireLabel {
                label: "web".into(),
                packets,
                bytes,
            }],
            events: (0..events)
                .map(|i| event(taken_s * 1_000_000_000 + i as u64, i as u16))
                .collect(),
            agent: WireStats::default(),
        }
    }

    #[test]
    fn applies_each_sequence_once_per_instance() {
        let mut state = State::new(10, 4);
        assert_eq!(state.connect(&hello("a", 7), 1.0), Ok(0));
        assert_eq!(
            state.apply("a", 7, batch(1, 10, 5, 500, 3), 1.0),
            Applied::New
        );
        assert_eq!(
            state.apply("a", 7, batch(1, 10, 5, 500, 3), 1.0),
            Applied::Duplicate
        );
        assert_eq!(
            state.apply("a", 7, batch(2, 11, 9, 900, 2), 1.0),
            Applied::New
        );
        assert_eq!(state.total_events(), 5);
        // Reconnect: Welcome carries the last sequence of the instance.
        state.disconnect("a", 2.0);
        assert!(!state.agent("a").expect("a").connected());
        assert_eq!(state.connect(&hello("a", 7), 3.0), Ok(2));
        assert!(state.agent("a").expect("a").connected());
        // A new instance starts its own sequence.
        assert_eq!(state.connect(&hello("a", 8), 3.0), Ok(0));
        assert_eq!(
            state.apply("a", 8, batch(1, 12, 10, 1000, 1), 3.0),
            Applied::New
        );
        assert_eq!(
            state.apply("a", 7, batch(2, 12, 10, 1000, 1), 3.0),
            Applied::Duplicate
        );
        assert_eq!(state.total_events(), 6);
    }

    #[test]
    fn rates_from_the_last_two_snapshots_and_resets() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 1), 0.0).expect("connect");
        state.apply("a", 1, batch(1, 100, 1000, 100_000, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(a.rates, Rates::default());
        assert!(a.rate_history.is_empty());
        state.apply("a", 1, batch(2, 102, 3000, 300_000, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(a.rates.packets_per_second, 1000.0);
        assert_eq!(a.rates.bits_per_second, 800_000.0);
        assert_eq!(a.rate_history.back(), Some(&[102.0, 1000.0, 800_000.0]));
        // Re-attach: counters start from zero again.
        state.apply("a", 1, batch(3, 104, 400, 40_000, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(a.rates.packets_per_second, 200.0);
        assert_eq!(a.counter("total_packets"), Some(400));
        for s in 4..300 {
            state.apply("a", 1, batch(s, 100 + s, 400 + s, 40_000, 0), NOW);
        }
        assert_eq!(
            state.agent("a").expect("a").rate_history.len(),
            RATE_HISTORY
        );
    }

    #[test]
    fn bounded_events_and_histories() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 1), 0.0).expect("connect");
        state.apply("a", 1, batch(1, 1, 0, 0, 1000), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(a.total_events, 1000);
        assert_eq!(a.recent_events.len(), 4);
        assert_eq!(a.recent_events.back().map(|e| e.payload_len), Some(999));
        assert_eq!(a.recent_events.front().map(|e| e.payload_len), Some(996));
        assert_eq!(a.payload_history.len(), PAYLOAD_HISTORY);
        assert_eq!(a.payload_history.back().map(|p| p.1), Some(999));
        assert_eq!(
            a.payload_history.front().map(|p| p.1),
            Some((1000 - PAYLOAD_HISTORY) as u16)
        );
    }

    #[test]
    fn agent_table_is_bounded_and_strings_clipped() {
        let mut state = State::new(2, 4);
        let long = "é".repeat(200);
        state.connect(&hello(&long, 1), 0.0).expect("a");
        state.connect(&hello("b", 1), 0.0).expect("b");
        assert_eq!(
            state.connect(&hello("c", 1), 0.0),
            Err(Refused::TableFull { max: 2 })
        );
        // A known agent is still let in.
        assert_eq!(state.connect(&hello("b", 1), 0.0), Ok(0));
        let id = state
            .agents()
            .find(|a| a.agent_id != "b")
            .expect("agent")
            .agent_id
            .clone();
        assert!(
            id.len() <= MAX_NAME && long.starts_with(&id),
            "{}",
            id.len()
        );
        // Batches of the clipped agent id land on it.
        assert_eq!(
            state.apply(&long, 1, batch(1, 1, 1, 1, 1), 0.0),
            Applied::New
        );
    }

    #[test]
    fn new_agents_are_rate_limited_and_evict_the_longest_disconnected() {
        let burst = usize::try_from(NEW_AGENT_BURST).expect("small");
        let mut state = State::new(burst + 10, 4);
        for i in 0..burst {
            state
                .connect(&hello(&format!("a{i}"), 1), 0.0)
                .expect("burst");
        }
        assert_eq!(
            state.connect(&hello("late", 1), 0.0),
            Err(Refused::TooManyNew)
        );
        // A known agent is never rate limited.
        assert_eq!(state.connect(&hello("a0", 1), 0.0), Ok(0));
        // One second refills NEW_AGENTS_PER_SECOND.
        for i in 0..NEW_AGENTS_PER_SECOND {
            let id = format!("b{i}");
            let result = state.connect(&hello(&id, 1), 1.0);
            if i < 10 {
                assert_eq!(result, Ok(0), "{id}");
            } else {
                // The table is full of connected agents from here on.
                assert_eq!(result, Err(Refused::TableFull { max: burst + 10 }), "{id}");
            }
        }
        // Disconnected agents make room, the one seen longest ago first.
        state.disconnect("a7", 5.0);
        state.disconnect("a3", 4.0);
        assert_eq!(state.connect(&hello("c", 1), 10.0), Ok(0));
        assert!(state.agent("a3").is_none() && state.agent("a7").is_some());
        assert_eq!(state.take_removed(), ["a3"]);
        assert_eq!(
            state
                .counters()
                .agents_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Expiry takes the disconnected ones older than the limit.
        assert_eq!(state.expire(100.0, 50.0), 1);
        assert!(state.agent("a7").is_none());
        assert_eq!(state.take_removed(), ["a7"]);
    }

    fn steering(received: u64, lost: u64) -> xdt_wire::SteeringStats {
        xdt_wire::SteeringStats {
            mode: "zerocopy".into(),
            reinject: "host via xdt5r".into(),
            sockets: 4,
            received_packets: received,
            received_bytes: received * 100,
            reinjected_packets: received - lost,
            reinject_dropped: lost,
            rx_dropped: 2 * lost,
            rx_ring_full: 3 * lost,
            rx_fill_ring_empty: 4 * lost,
            tx_invalid_descs: 5 * lost,
        }
    }

    fn steered(sequence: u64, taken_s: u64, received: u64, lost: u64) -> Batch {
        let mut b = batch(sequence, taken_s, received, received * 100, 0);
        b.agent.steering = Some(steering(received, lost));
        b
    }

    #[test]
    fn steering_figures_are_the_newest_snapshot_with_rates() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 1), 0.0).expect("connect");
        state.apply("a", 1, steered(1, 100, 1000, 10), NOW);
        let a = state.agent("a").expect("a");
        let s = a.agent_stats.steering.as_ref().expect("steering");
        assert_eq!(
            (s.mode.as_str(), s.reinject.as_str()),
            ("zerocopy", "host via xdt5r")
        );
        assert_eq!(
            (s.sockets, s.received_packets, s.tx_invalid_descs),
            (4, 1000, 50)
        );
        assert_eq!(a.steering_rates, None, "one snapshot has no rate");

        state.apply("a", 1, steered(2, 102, 3000, 30), NOW);
        let rates = state.agent("a").expect("a").steering_rates.expect("rates");
        assert_eq!(rates.get("received_packets_per_second"), Some(1000.0));
        assert_eq!(rates.get("received_bits_per_second"), Some(800_000.0));
        assert_eq!(rates.get("reinjected_packets_per_second"), Some(990.0));
        assert_eq!(rates.get("reinject_dropped_per_second"), Some(10.0));
        assert_eq!(rates.get("rx_dropped_per_second"), Some(20.0));
        assert_eq!(rates.get("rx_ring_full_per_second"), Some(30.0));
        assert_eq!(rates.get("rx_fill_ring_empty_per_second"), Some(40.0));
        assert_eq!(rates.get("tx_invalid_descs_per_second"), Some(50.0));

        // Within an instance the sequence orders the snapshots, not the agent's clock: a clock
        // stepped back does not keep the newer figures out.
        state.apply("a", 1, steered(3, 101, 2000, 20), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(
            a.agent_stats.steering.as_ref().map(|s| s.received_packets),
            Some(2000)
        );
        // A batch of an older instance, replayed after a newer one said Hello, does not
        // replace the newer figures.
        state.connect(&hello("a", 9), 0.0).expect("connect");
        state.connect(&hello("a", 1), 0.0).expect("connect");
        state.apply("a", 9, steered(1, 200, 1, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(
            a.agent_stats.steering.as_ref().map(|s| s.received_packets),
            Some(2000)
        );

        // A restarted agent (new instance) counts from zero, even above the old figures.
        state.connect(&hello("a", 2), 0.0).expect("connect");
        state.apply("a", 2, steered(1, 104, 4000, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(
            a.agent_stats.steering.as_ref().map(|s| s.received_packets),
            Some(4000)
        );
        let rates = a.steering_rates.expect("rates");
        // Over the 3 s since the snapshot taken at 101.
        assert_eq!(rates.get("received_packets_per_second"), Some(4000.0 / 3.0));
        assert_eq!(rates.get("reinject_dropped_per_second"), Some(0.0));
        // The same instance going backwards (impossible, but an agent is untrusted) too.
        state.apply("a", 2, steered(2, 106, 1000, 0), NOW);
        let rates = state.agent("a").expect("a").steering_rates.expect("rates");
        assert_eq!(rates.get("received_packets_per_second"), Some(500.0));

        // An agent that stops steering reports none: the figures and rates go.
        state.apply("a", 2, batch(3, 108, 1, 1, 0), NOW);
        let a = state.agent("a").expect("a");
        assert_eq!(a.agent_stats.steering, None);
        assert_eq!(a.steering_rates, None);
        // The other agent statistics still follow every batch.
        assert_eq!(a.agent_stats.dropped_events, 0);
    }

    #[test]
    fn steering_strings_and_inspections_are_clipped() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 1), 0.0).expect("connect");
        let mut b = steered(1, 1, 10, 0);
        let long = "é".repeat(400);
        if let Some(s) = &mut b.agent.steering {
            s.mode.clone_from(&long);
            s.reinject.clone_from(&long);
        }
        let mut http = event(5, 100);
        http.action = "steer".into();
        http.inspection = Some(Box::new(xdt_wire::Inspection {
            frame_len: 214,
            agent_latency_ns: 12_345,
            reinjected: true,
            http: Some(xdt_wire::HttpRequest {
                method: long.clone(),
                path: format!("/{long}"),
                host: Some(long.clone()),
            }),
            dns: Some(xdt_wire::DnsQuery {
                name: long.clone(),
                qtype: 28,
            }),
        }));
        b.events = vec![event(4, 10), http];
        state.apply("a", 1, b, NOW);
        let a = state.agent("a").expect("a");
        let s = a.agent_stats.steering.as_ref().expect("steering");
        assert!(
            s.mode.len() <= MAX_SHORT && long.starts_with(&s.mode),
            "{}",
            s.mode.len()
        );
        assert!(s.reinject.len() <= MAX_SHORT, "{}", s.reinject.len());
        assert_eq!(
            a.recent_events[0].inspection, None,
            "a sampled event has none"
        );
        let i = a.recent_events[1]
            .inspection
            .as_deref()
            .expect("inspection");
        assert_eq!(
            (i.frame_len, i.agent_latency_ns, i.reinjected),
            (214, 12_345, true)
        );
        let http = i.http.as_ref().expect("http");
        assert!(http.method.len() <= MAX_SHORT, "{}", http.method.len());
        assert!(
            http.path.len() <= MAX_INSPECTED && http.path.starts_with("/é"),
            "{}",
            http.path.len()
        );
        assert!(http.host.as_ref().is_some_and(|h| h.len() <= MAX_INSPECTED));
        let dns = i.dns.as_ref().expect("dns");
        assert!(dns.name.len() <= MAX_INSPECTED && dns.qtype == 28);
    }

    #[test]
    fn persisted_steering_round_trips_and_old_files_load() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 7), 0.0).expect("connect");
        state.apply("a", 7, steered(1, 10, 500, 5), NOW);
        let json = serde_json::to_string(&state.to_persisted()).expect("json");
        let mut restored = State::new(10, 4);
        restored.restore(serde_json::from_str(&json).expect("parse"));
        let a = restored.agent("a").expect("a");
        assert_eq!(
            a.agent_stats.steering,
            state.agent("a").expect("a").agent_stats.steering
        );
        // The same instance goes on: its rate counts from the restored figures.
        restored.connect(&hello("a", 7), 0.0).expect("connect");
        restored.apply("a", 7, steered(2, 12, 700, 5), NOW);
        let rates = restored
            .agent("a")
            .expect("a")
            .steering_rates
            .expect("rates");
        assert_eq!(rates.get("received_packets_per_second"), Some(100.0));

        // A state.json written before steering existed.
        let old = r#"{"version":1,"agents":[{"agent_id":"o","hostname":"h","interface":"eth0",
            "probe_version":"0.1.0","instance":3,"sequences":[[3,9]],"last_seen_unix":1.0,
            "total_events":2,"taken_at_unix_ns":5,"counters":[],"labels":[],
            "agent":{"dropped_events":1,"reconnects":2,"unacked_batches":0,
                     "probe_ns_per_packet":null}}]}"#;
        let mut restored = State::new(10, 4);
        restored.restore(serde_json::from_str(old).expect("parse an old file"));
        let o = restored.agent("o").expect("o");
        assert_eq!(o.agent_stats.steering, None);
        assert_eq!(o.agent_stats.reconnects, 2);
    }

    #[test]
    fn persisted_state_round_trips() {
        let mut state = State::new(10, 4);
        state.connect(&hello("a", 7), 0.0).expect("connect");
        state.apply("a", 7, batch(3, 10, 5, 500, 2), NOW);
        let json = serde_json::to_string(&state.to_persisted()).expect("json");
        let mut restored = State::new(10, 4);
        restored.restore(serde_json::from_str(&json).expect("parse"));
        let a = restored.agent("a").expect("a");
        assert!(!a.connected());
        assert_eq!(a.last_sequence(7), 3);
        assert_eq!(a.total_events, 2);
        assert_eq!(a.counter("total_bytes"), Some(500));
        assert_eq!(a.labels[0].packets, 5);
        assert_eq!(
            restored.apply("a", 7, batch(3, 10, 5, 500, 2), 0.0),
            Applied::Duplicate
        );
    }
}
