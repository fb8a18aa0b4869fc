//! What survives a restart, in one room: the format of `state.json` ([`Persisted`]), the file
//! itself ([`file`]), the journal of batches since the last snapshot ([`journal`]) and the loop
//! that saves a snapshot while the state changes ([`save_loop`]). docs/central.md describes
//! the guarantees.

pub mod file;
pub(crate) mod journal;

use std::{path::PathBuf, sync::Arc, time::Duration};

use log::error;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use xdt_systemd::logging::error_chain;

use crate::{
    counters::Counters,
    error::{Error, Result},
    state::{
        AgentState, AgentStats, LabelCount, MAX_COUNTERS, MAX_INSTANCES, MAX_LABELS, MAX_NAME,
        Shared, State, clipped,
    },
};

pub use self::file::{FILE_NAME, load, path};
use self::journal::Journal;

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

/// What survives a restart of `state`.
#[must_use]
pub fn persisted(state: &State) -> Persisted {
    Persisted {
        version: Persisted::VERSION,
        agents: state.agents().map(to_persisted).collect(),
    }
}

/// Restores persisted agents (all disconnected, no recent events or history).
pub fn restore(state: &mut State, persisted: Persisted) {
    for p in persisted.agents {
        state.insert(from_persisted(p));
    }
}

/// The content of `state.json`, copied a slice of agents per hold of the read lock after
/// `before` ran under it: what was applied before `before` is in the copy (the journal rotates
/// its segment there, so the older segments may go once the copy is durable); what comes after
/// may be too, which a replay's dedup absorbs.
pub fn persisted_after<T>(shared: &Shared, before: impl FnOnce() -> T) -> (Persisted, T) {
    let marker = {
        let _state = shared.read();
        before()
    };
    let persisted = Persisted {
        version: Persisted::VERSION,
        agents: shared.copy_agents(to_persisted),
    };
    (persisted, marker)
}

fn to_persisted(agent: &AgentState) -> PersistedAgent {
    PersistedAgent {
        agent_id: agent.agent_id.clone(),
        hostname: agent.hostname.clone(),
        interface: agent.interface.clone(),
        probe_version: agent.probe_version.clone(),
        instance: agent.instance,
        sequences: agent.sequences.iter().copied().collect(),
        last_seen_unix: agent.last_seen_unix,
        total_events: agent.total_events,
        taken_at_unix_ns: agent.taken_at_unix_ns,
        counters: agent.counters.clone(),
        labels: agent.labels.clone(),
        agent: agent.agent_stats.clone(),
    }
}

fn from_persisted(p: PersistedAgent) -> AgentState {
    let mut agent = AgentState::new(clipped(&p.agent_id, MAX_NAME).to_owned());
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

/// Writes `state.json` now (serialised and written off the lock and the async threads); then
/// the journal segments the snapshot holds are pruned. A failed save loses nothing: the
/// journal keeps every record until a snapshot holding it is durable.
pub(crate) async fn save(
    state: &Shared,
    dir: PathBuf,
    journal: Option<&Arc<Journal>>,
) -> Result<()> {
    let (state, journal) = (state.clone(), journal.cloned());
    let written = tokio::task::spawn_blocking(move || {
        // The journal switches segments first, under the lock: every record of the older
        // segments is applied before the copy is taken (a slice at a time, off the runtime).
        let (persisted, segment) = persisted_after(&state, || journal.as_ref().map(|j| j.rotate()));
        let bytes = serde_json::to_vec(&persisted).map_err(|e| Error::SaveState {
            path: path(&dir),
            source: e.into(),
        })?;
        file::write(&dir, &bytes)?;
        if let (Some(journal), Some(segment)) = (journal, segment) {
            journal.prune(segment);
        }
        Ok(())
    })
    .await;
    match written {
        Ok(result) => result,
        Err(e) => Err(Error::SaveState {
            path: PathBuf::from(FILE_NAME),
            source: std::io::Error::other(e),
        }),
    }
}

/// Saves the state every `interval` while it changes, until shutdown (the final save is the
/// server's, after the sessions have ended).
pub(crate) async fn save_loop(
    state: Shared,
    dir: PathBuf,
    journal: Option<Arc<Journal>>,
    interval: Duration,
    mut stop: broadcast::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved_generation = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.recv() => return,
        }
        let generation = state.read().generation();
        if saved_generation == Some(generation) {
            continue;
        }
        match save(&state, dir.clone(), journal.as_ref()).await {
            Ok(()) => saved_generation = Some(generation),
            Err(e) => {
                Counters::add(&state.counters().state_save_failures);
                error!(
                    cause:% = error_chain(&e);
                    "saving the state failed; nothing is lost (the journal keeps the batches), retrying"
                );
            }
        }
    }
}
