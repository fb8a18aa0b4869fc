//! `XDT_AGENT`: what the agent of this probe holds and has not delivered, written by the agent
//! and never read by the probe. It outlives the agent's process (the map is pinned with the
//! probe), so the next agent of the interface learns what a killed predecessor lost: events it
//! had read (from the ring buffer or its AF_XDP sockets) that central never acknowledged.

use crate::user_pod;

pub const MAP: &str = "XDT_AGENT";

/// Entry 0 of `XDT_AGENT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentLedger {
    /// Events the agent holds (read, not yet acknowledged by central and not counted as
    /// dropped), as of its last change.
    pub undelivered_events: u64,
}

user_pod!(AgentLedger);

const _: () = assert!(core::mem::size_of::<AgentLedger>() == 8);
