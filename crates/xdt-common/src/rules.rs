//! `XDT_RULES` (compiled rules, in match order) and `XDT_CANDIDATES` (lists of rule slots that a
//! trie leaf points to).
//!
//! Matching: the probe looks the destination address up in the destination trie and the source
//! address in the source trie; each yields a candidate list holding, in match order, the rules
//! keyed on that address whose prefix covers it. Rules without any address are in the
//! generation's wildcard list. The probe checks every field of each candidate and keeps the
//! first match of lowest slot; slots are ranks, so the lowest slot is the winning rule.

use crate::user_pod;

pub const RULES_MAP: &str = "XDT_RULES";
pub const CANDIDATES_MAP: &str = "XDT_CANDIDATES";
/// Per rule slot (both generations), per CPU: matches of a `sample N` rule since its last event.
pub const SAMPLE_HITS_MAP: &str = "XDT_SAMPLE_HITS";
/// Default rule slots per generation (`xdt attach --max-rules` changes it).
pub const DEFAULT_MAX_RULES: u32 = 4096;
/// Most rules one address (or the wildcard list) can be a candidate for.
pub const MAX_CANDIDATES: usize = 32;

/// Candidate lists needed per generation for `max_rules` rules: n prefixes in one trie cut the
/// address space into at most 2n + 1 ranges of distinct covering sets; four tries, the wildcard
/// list and the unused slot 0 add at most 6.
#[must_use]
pub const fn max_lists(max_rules: u32) -> u32 {
    max_rules.saturating_mul(2).saturating_add(8)
}

pub const MATCH_SRC: u8 = 1;
pub const MATCH_DST: u8 = 2;
pub const MATCH_PROTOCOL: u8 = 4;
pub const MATCH_PORT: u8 = 8;

pub const ACTION_COUNT: u8 = 0;
pub const ACTION_SAMPLE: u8 = 1;
pub const ACTION_DROP: u8 = 2;
/// Redirect to the agent's AF_XDP socket of the RX queue (fail-open, see [`crate::steer`]).
pub const ACTION_STEER: u8 = 3;

/// A compiled rule. Addresses and masks are the packet's bytes read as native-endian words
/// (IPv4 uses word 0 only), so the probe compares raw loads without byte swapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub src_net: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_net: [u32; 4],
    pub dst_mask: [u32; 4],
    pub label: u32,
    /// For `sample`: one event every `sample_every` matching packets (per CPU).
    pub sample_every: u32,
    /// Destination port range, inclusive, host byte order.
    pub port_lo: u16,
    pub port_hi: u16,
    /// 0 = either, 4, or 6; set whenever the rule has an address or an ICMP protocol.
    pub family: u8,
    pub protocol: u8,
    /// `MATCH_*` bits.
    pub match_flags: u8,
    /// `ACTION_*`.
    pub action: u8,
    /// Priority from the rules file (lower matches first), kept for listing.
    pub priority: u32,
    /// The rule's number as the user sees it (its position in the rules file, from 1).
    pub id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateList {
    pub len: u32,
    /// Rule slots relative to the generation's `rule_base`, ascending.
    pub rules: [u32; MAX_CANDIDATES],
}

impl CandidateList {
    pub const EMPTY: Self = Self {
        len: 0,
        rules: [0; MAX_CANDIDATES],
    };
}

user_pod!(Rule, CandidateList);

const _: () = assert!(core::mem::size_of::<Rule>() == 88);
const _: () = assert!(core::mem::size_of::<CandidateList>() == 4 + 4 * MAX_CANDIDATES);
