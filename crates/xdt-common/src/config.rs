//! `XDT_CONFIG`: the one-entry array that tells the probe which rule generation is active, and
//! tells user space how the probe was attached.
//!
//! Rules are double-buffered: user space writes a complete rule set into the inactive generation
//! (rule table, candidate lists, trie nodes), then flips [`Config::active`] with one word write.
//! The probe reads `active` once per packet, so a packet is classified by exactly one rule set.

use crate::user_pod;

pub const MAP: &str = "XDT_CONFIG";
pub const MAX_ENTRIES: u32 = 1;

/// Where one generation of the rule set lives inside the rule, list and trie maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// First slot of this generation in `XDT_RULES`; slots are in match order (rank).
    pub rule_base: u32,
    pub rule_count: u32,
    /// First slot of this generation in `XDT_CANDIDATES`.
    pub list_base: u32,
    /// List (relative to `list_base`) of the rules that match no address; 0 when there are none.
    pub wildcard_list: u32,
    /// First node of this generation in `XDT_TRIE`.
    pub node_base: u32,
    /// Child nodes used after the root nodes.
    pub node_count: u32,
    /// Bit `1 << root` is set when that trie root holds any prefix; the probe skips the rest.
    pub roots_in_use: u32,
    pub padding: u32,
}

/// How the probe is attached; written once by `xdt attach`, never read by the probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub abi_version: u32,
    /// [`MODE_NATIVE`] or [`MODE_GENERIC`].
    pub mode: u32,
    /// Wall-clock time of the attach, nanoseconds since the Unix epoch.
    pub attached_at_ns: u64,
    pub ifindex: u32,
    /// Rule slots per generation.
    pub max_rules: u32,
    /// Candidate lists per generation.
    pub max_lists: u32,
    /// Child trie nodes per generation (root nodes excluded).
    pub trie_nodes: u32,
}

pub const MODE_NATIVE: u32 = 1;
pub const MODE_GENERIC: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The generation (0 or 1) the probe classifies with.
    pub active: u32,
    /// Entries of the flow table (`xdt attach --flows N`); 0: flows are off and the probe does
    /// no flow work at all. Fixed until detach, like the map's size.
    pub flow_entries: u32,
    pub generations: [Generation; 2],
    pub attachment: Attachment,
}

user_pod!(Config);

const _: () = assert!(core::mem::size_of::<Generation>() == 32);
const _: () = assert!(core::mem::size_of::<Attachment>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 104);
