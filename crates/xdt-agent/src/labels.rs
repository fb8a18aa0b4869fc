//! Label names by id for the agent's event readers (sampled and steered): the datapath's
//! [`LabelCache`], which reads the table again when an event carries an id it lacks, plus a
//! reload (SIGHUP, for instance after `systemctl reload xdt-attach@IF` renamed labels) that makes
//! every reader read the table afresh.

use std::sync::atomic::{AtomicU64, Ordering};

use xdt_datapath::labels::{LabelCache, LabelTable};

/// Bumped by [`reread_all`]; each reader remembers the value its names were read at.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes every [`LabelNames`] read the table again before its next lookup.
pub(crate) fn reread_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct LabelNames {
    cache: LabelCache,
    generation: u64,
}

impl LabelNames {
    pub(crate) fn new(names: xdt_datapath::labels::LabelNames) -> Self {
        Self {
            generation: GENERATION.load(Ordering::Relaxed),
            cache: LabelCache::new(names),
        }
    }

    /// The names, read again first if they lack `id` or a reload asked for it.
    pub(crate) fn covering(&mut self, id: u32) -> &LabelTable {
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            self.cache.reread();
        }
        self.cache.covering(id)
    }
}
