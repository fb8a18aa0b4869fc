//! Per-agent statistics: who is connected, the newest counter snapshot and the rates derived
//! from the last two, recent events, histories for the dashboard, and the highest sequence held
//! per agent instance (the dedup key that makes replayed batches count once).
//!
//! Every collection has a fixed cap (the `MAX_*` and `*_HISTORY` constants, `--recent-events`,
//! `--max-agents`) and agent-supplied strings are clipped, so memory is bounded whatever agents
//! send; docs/central.md gives the figures.

mod agent;
mod clip;
mod flows;
#[cfg(test)]
mod tests;
mod time;

use std::{
    collections::{BTreeMap, btree_map::Entry},
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use xdt_wire::{Batch, Flow, FlowStats, Hello};

use crate::counters::Counters;

pub(crate) use self::clip::clipped;
pub use self::{
    agent::{AgentState, AgentStats, LabelCount, Rates, SteeringRates, SteeringStats},
    flows::{
        Count, FLOW_WINDOW_SECONDS, FlowKey, FlowSummary, FlowWindow, MAX_FLOWS_KEPT, TOP_FLOWS,
        TopFlow,
    },
    time::{now_unix, seconds},
};

/// Upper bound accepted for `--recent-events`.
pub const MAX_RECENT_EVENTS: usize = 65_536;
/// Rate points kept per agent (two minutes at a 1 s batch interval).
pub const RATE_HISTORY: usize = 120;
/// (time, payload length) points kept per agent.
pub const PAYLOAD_HISTORY: usize = 512;
/// Counter names kept per agent (the probe has `xdt_common::counters::COUNT`, 22).
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

    /// Every agent's figures without its recent events and histories, and `--max-agents`:
    /// exporters encode from the copies, so a scrape of thousands of series never holds
    /// ingest up.
    #[must_use]
    pub fn figures(&self) -> (Vec<AgentState>, usize) {
        let max_agents = self.read().max_agents;
        (self.copy_agents(|a| a.figures(None)), max_agents)
    }

    /// [`Shared::figures`] with each agent's top talkers of the minute ending at `now` (Unix
    /// seconds) in `flow_summary`.
    #[must_use]
    pub fn figures_with_flows(&self, now: f64) -> (Vec<AgentState>, usize) {
        let max_agents = self.read().max_agents;
        (self.copy_agents(|a| a.figures(Some(now))), max_agents)
    }

    /// `copy` of every agent, by id, taken [`COPY_SLICE`] agents per hold of the read lock
    /// (what is applied meanwhile may be in the copy of a later agent, not of an earlier one).
    pub fn copy_agents<T>(&self, copy: impl Fn(&AgentState) -> T) -> Vec<T> {
        let mut copies = Vec::with_capacity(self.read().agent_count());
        let mut after: Option<String> = None;
        loop {
            let state = self.read();
            let before = copies.len();
            for agent in state.agents_after(after.as_deref()).take(COPY_SLICE) {
                copies.push(copy(agent));
                after = Some(agent.agent_id.clone());
            }
            if copies.len() - before < COPY_SLICE {
                return copies;
            }
            drop(state);
            let_writers_in();
        }
    }
}

/// Agents copied per hold of the read lock by [`Shared::copy_agents`].
const COPY_SLICE: usize = 64;

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
        self.apply_with_flows(agent_id, instance, batch, None, now)
    }

    /// [`State::apply`] for a batch that came with flow records and the agent's flow figures
    /// (a `FlowBatch`): they count once, with the batch.
    pub fn apply_with_flows(
        &mut self,
        agent_id: &str,
        instance: u64,
        batch: Batch,
        flows: Option<(Vec<Flow>, FlowStats)>,
        now: f64,
    ) -> Applied {
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
        agent.apply(instance, batch, flows, cap, now);
        Applied::New
    }

    /// Registers an agent as its `Hello` said, for a batch replayed from the journal at start
    /// (not connected, whatever the table's limits: it was admitted before); the batch then
    /// goes through [`State::apply`], whose dedup drops what the snapshot already holds.
    pub(crate) fn register(
        &mut self,
        agent_id: &str,
        hostname: &str,
        interface: &str,
        probe_version: &str,
        instance: u64,
    ) {
        let agent_id = clipped(agent_id, MAX_NAME);
        let agent = self
            .agents
            .entry(agent_id.to_owned())
            .or_insert_with(|| AgentState::new(agent_id.to_owned()));
        clipped(hostname, MAX_NAME).clone_into(&mut agent.hostname);
        clipped(interface, MAX_NAME).clone_into(&mut agent.interface);
        clipped(probe_version, MAX_NAME).clone_into(&mut agent.probe_version);
        agent.instance = instance;
        self.generation += 1;
    }

    /// Puts an agent restored from `state.json` in the table.
    pub(crate) fn insert(&mut self, agent: AgentState) {
        self.generation += 1;
        self.agents.insert(agent.agent_id.clone(), agent);
    }
}
