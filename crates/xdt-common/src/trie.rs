//! `XDT_TRIE`: multibit tries over IPv4 and IPv6 addresses, compiled in user space from the rule
//! prefixes (controlled prefix expansion), one node per array entry so that every level costs one
//! inlined array lookup.
//!
//! Each generation starts with four roots of 2^16 entries (256 nodes each) indexed by the first
//! 16 address bits, followed by child nodes of 2^8 entries for each further byte. An entry is
//! 0 (no rule), a candidate list id, or [`CHILD`] | node index (relative to the generation).
//! Child nodes inherit their parent's covering list in every slot no longer prefix fills.
//!
//! Path compression: a chain of two or more child levels down to where its prefixes end, whose
//! nodes each hold one value in every entry but one (the entry that leads on), is laid out as one
//! path record instead, an entry of [`CHILD`] | [`PATH`] | node index. The record holds the
//! address bits the chain spells (and all above it) with their mask: an address that has them
//! gets the record's [`path::MATCH`] list, any other [`path::MISS`], the one value the chain's
//! other entries held. The walk ends at a record. A sparse IPv6 /64 thus costs the root and one
//! record instead of the root and six nodes.

use crate::user_pod;

pub const MAP: &str = "XDT_TRIE";
pub const NODE_ENTRIES: usize = 256;
/// Default child nodes per generation (`xdt attach --trie-nodes` changes it).
pub const DEFAULT_TRIE_NODES: u32 = 2048;
pub const CHILD: u32 = 1 << 31;
/// With [`CHILD`]: the node is a path record (see [`path`]), not 256 entries.
pub const PATH: u32 = 1 << 30;

/// Where a path record keeps its fields among its node's entries.
pub mod path {
    /// Four words: the address bits from the first bit to the end of the skipped levels, as raw
    /// packet words (what a native-endian load of the address gives), zero below.
    pub const NET: usize = 0;
    /// Four words: the mask of those bits, as raw packet words.
    pub const MASK: usize = 4;
    /// The candidate list for an address that has the bits.
    pub const MATCH: usize = 8;
    /// The candidate list for an address that does not.
    pub const MISS: usize = 9;
    /// How many child levels the record stands for (at least 2).
    pub const LEVELS: usize = 10;
}

/// The four roots, in the order they sit at the start of a generation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Ipv4Dst = 0,
    Ipv4Src = 1,
    Ipv6Dst = 2,
    Ipv6Src = 3,
}

pub const ROOTS: u32 = 4;
pub const NODES_PER_ROOT: u32 = 256;
pub const ROOT_NODES: u32 = ROOTS * NODES_PER_ROOT;
/// Child levels below the 16-bit root: 2 for IPv4, 14 for IPv6.
pub const IPV4_CHILD_LEVELS: u32 = 2;
pub const IPV6_CHILD_LEVELS: u32 = 14;

#[must_use]
pub const fn nodes_per_generation(trie_nodes: u32) -> u32 {
    ROOT_NODES + trie_nodes
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrieNode {
    pub entries: [u32; NODE_ENTRIES],
}

impl TrieNode {
    pub const EMPTY: Self = Self {
        entries: [0; NODE_ENTRIES],
    };
}

user_pod!(TrieNode);

const _: () = assert!(core::mem::size_of::<TrieNode>() == 1024);
