//! The kernel ABI of the xdt XDP probe.
//!
//! Every map the probe declares has one module here holding its name, its number of entries and
//! the `#[repr(C)]` layout of its keys, values or events. The probe (no_std, `bpfel-unknown-none`)
//! and user space both compile these definitions, and `const` size assertions make a layout drift
//! fail the build on both sides. Fixed-width integers only, explicit padding, no `bool`.
//!
//! Besides the maps, [`packet::Headers`]: what user space decodes of a reported packet's
//! headers, one definition for the datapath, the wire and the agent.
#![no_std]

pub mod agent;
pub mod config;
pub mod counters;
pub mod events;
pub mod flows;
pub mod labels;
pub mod packet;
pub mod pkt_stats;
mod pod;
pub mod rules;
pub mod steer;
pub mod trie;

pub(crate) use pod::user_pod;

/// Version of this ABI; recorded by `xdt attach` so user space refuses maps of another layout.
/// 2: AF_XDP steering (`steer` action, `XDT_XSKS`, `XDT_STEER`, two counters).
/// 3: flows (`XDT_FLOWS`, `Config::flow_entries`, the `flow_table_full` counter).
/// 4: path records in `XDT_TRIE` (`trie::PATH`).
pub const ABI_VERSION: u32 = 4;
