//! Label names by id for the agent's event readers (sampled and steered), from the probe's
//! `XDT_LABEL_NAMES`. The table is read again when an event carries an id it lacks (a rule set
//! added a label); an id still unnamed after that is not looked up again for a second, so a
//! stream of such events does not read the whole table per event. A reload (SIGHUP, for
//! instance after `systemctl reload xdt-attach@IF` renamed labels) makes every reader read the
//! table afresh.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use xdt_datapath::probe::ProbeMaps;

/// Bumped by [`reread_all`]; each reader remembers the value its names were read at.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes every [`LabelNames`] read the table again before its next lookup.
pub(crate) fn reread_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct LabelNames {
    maps: Option<ProbeMaps>,
    generation: u64,
    names: Vec<Option<String>>,
    /// The last id the table lacked after a fresh read, and when.
    missing: Option<(u32, Instant)>,
}

impl LabelNames {
    pub(crate) fn open(iface: &str) -> Self {
        let maps = ProbeMaps::open(iface).ok();
        let names = maps
            .as_ref()
            .and_then(|m| m.label_names().ok())
            .unwrap_or_default();
        Self {
            maps,
            generation: GENERATION.load(Ordering::Relaxed),
            names,
            missing: None,
        }
    }

    /// The names, read again first if they lack `id`.
    pub(crate) fn covering(&mut self, id: u32) -> &[Option<String>] {
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            self.missing = None;
            self.reread();
        }
        let known = self.names.get(id as usize).is_some_and(Option::is_some);
        let recently_missing = self
            .missing
            .is_some_and(|(m, at)| m == id && at.elapsed() < Duration::from_secs(1));
        if !known && !recently_missing {
            self.reread();
            if self.names.get(id as usize).is_none_or(Option::is_none) {
                self.missing = Some((id, Instant::now()));
            }
        }
        &self.names
    }

    /// Reads the table afresh; keeps the names it had if the read fails.
    fn reread(&mut self) {
        if let Some(fresher) = self.maps.as_ref().and_then(|m| m.label_names().ok()) {
            self.names = fresher;
        }
    }
}
