//! The agent's ledger in `XDT_AGENT` (see `xdt_common::agent`): the events it holds
//! undelivered, kept in the probe's pins so that the next agent of the interface can count what
//! a killed one lost.

use aya::maps::{Array, Map, MapData};
use xdt_common::agent::{AgentLedger, MAP};

use crate::{Result, error::map_error};

pub struct Ledger(Array<MapData, AgentLedger>);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// See [`crate::attached::AttachedProbe::ledger`].
    pub(crate) fn new(data: MapData) -> Result<Self> {
        let map = Map::Array(data);
        Ok(Self(map.try_into().map_err(map_error(MAP, "open"))?))
    }

    /// Events the last agent recorded as held and undelivered.
    pub fn undelivered(&self) -> Result<u64> {
        Ok(self
            .0
            .get(&0, 0)
            .map_err(map_error(MAP, "read"))?
            .undelivered_events)
    }

    pub fn set_undelivered(&mut self, events: u64) -> Result<()> {
        self.0
            .set(
                0,
                AgentLedger {
                    undelivered_events: events,
                },
                0,
            )
            .map_err(map_error(MAP, "update"))
    }
}
