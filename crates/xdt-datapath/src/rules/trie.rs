//! The multibit tries under construction: each prefix's rule slots added to the entries it
//! covers (as interned sets of slots), then laid out as the probe reads them, with the sets
//! numbered as candidate lists and chains of sparse nodes as path records (see
//! `xdt_common::trie` for the layout).

use std::collections::HashMap;

use xdt_common::{
    rules::{CandidateList, MAX_CANDIDATES},
    trie::{CHILD, NODE_ENTRIES, PATH, ROOT_NODES, Root, TrieNode, path},
};

use super::Cidr;

/// The tries as the probe reads them, with their candidate lists.
pub(super) struct Tries {
    /// Indexed by list id; entry 0 is unused.
    pub lists: Vec<CandidateList>,
    /// The root nodes (`ROOT_NODES`), then the child nodes.
    pub nodes: Vec<TrieNode>,
    pub wildcard_list: u32,
}

/// Address bits (first bit highest, an IPv4 address in the top 32) as the probe's raw words.
pub(super) fn raw_words(bits: u128) -> [u32; 4] {
    let b = bits.to_be_bytes();
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Interned, sorted sets of rule slots; set 0 is the empty set.
struct Sets {
    members: Vec<Vec<u32>>,
    index: HashMap<Vec<u32>, u32>,
    /// (set, slot) -> set with slot added.
    added: HashMap<(u32, u32), u32>,
}

impl Sets {
    fn new() -> Self {
        Self {
            members: vec![Vec::new()],
            index: HashMap::from([(Vec::new(), 0)]),
            added: HashMap::new(),
        }
    }

    /// The set with `slot` added, or the oversized set.
    fn add(&mut self, set: u32, slot: u32) -> Result<u32, Vec<u32>> {
        if let Some(&done) = self.added.get(&(set, slot)) {
            return Ok(done);
        }
        let mut members = self.members[set as usize].clone();
        if let Err(at) = members.binary_search(&slot) {
            members.insert(at, slot);
        }
        if members.len() > MAX_CANDIDATES {
            return Err(members);
        }
        let id = if let Some(&id) = self.index.get(&members) {
            id
        } else {
            let id = self.members.len() as u32;
            self.members.push(members.clone());
            self.index.insert(members, id);
            id
        };
        self.added.insert((set, slot), id);
        Ok(id)
    }
}

/// Tries under construction: entries are a set id or `CHILD | node`.
pub(super) struct TrieBuilder {
    nodes: Vec<[u32; NODE_ENTRIES]>,
    sets: Sets,
}

impl TrieBuilder {
    pub(super) fn new() -> Self {
        Self {
            nodes: vec![[0; NODE_ENTRIES]; ROOT_NODES as usize],
            sets: Sets::new(),
        }
    }

    pub(super) fn insert(&mut self, root: Root, cidr: Cidr, slot: u32) -> Result<(), Vec<u32>> {
        let bits = cidr.bits();
        let len = u32::from(cidr.len);
        // The root: 2^16 entries spread over 256 nodes.
        let top = (bits >> 112) as u32;
        if len <= 16 {
            let span = 1u32 << (16 - len);
            let first = top & !(span - 1);
            for index in first..first + span {
                let node = root as u32 * 256 + (index >> 8);
                self.add_to_entry(node, (index & 0xff) as usize, slot)?;
            }
            return Ok(());
        }
        let mut node = root as u32 * 256 + (top >> 8);
        let mut entry = (top & 0xff) as usize;
        let mut consumed = 16;
        loop {
            // Descend: the prefix is longer than what this level covers.
            let child = self.child_of(node, entry);
            let byte = ((bits >> (120 - consumed)) & 0xff) as u32;
            consumed += 8;
            if len <= consumed {
                let span = 1u32 << (consumed - len);
                let first = byte & !(span - 1);
                for index in first..first + span {
                    self.add_to_entry(child, index as usize, slot)?;
                }
                return Ok(());
            }
            node = child;
            entry = byte as usize;
        }
    }

    /// The child node below an entry, created (inheriting the entry's set) if absent.
    fn child_of(&mut self, node: u32, entry: usize) -> u32 {
        let value = self.nodes[node as usize][entry];
        if value & CHILD != 0 {
            return value & !CHILD;
        }
        let child = self.nodes.len() as u32 - ROOT_NODES;
        self.nodes.push([value; NODE_ENTRIES]);
        self.nodes[node as usize][entry] = CHILD | (child + ROOT_NODES);
        child + ROOT_NODES
    }

    /// Adds `slot` to an entry, and to its whole subtree if it has a child.
    fn add_to_entry(&mut self, node: u32, entry: usize, slot: u32) -> Result<(), Vec<u32>> {
        let value = self.nodes[node as usize][entry];
        if value & CHILD != 0 {
            for e in 0..NODE_ENTRIES {
                self.add_to_entry(value & !CHILD, e, slot)?;
            }
        } else {
            self.nodes[node as usize][entry] = self.sets.add(value, slot)?;
        }
        Ok(())
    }

    /// Numbers the sets in use as candidate lists and lays out the nodes: the roots in place,
    /// the child nodes depth first, chains of sparse nodes as path records.
    pub(super) fn finish(self, wildcard: &[u32]) -> Tries {
        let mut layout = Layout {
            nodes: &self.nodes,
            sets: &self.sets.members,
            list_of_set: HashMap::from([(0, 0)]),
            lists: vec![CandidateList::EMPTY],
            out: vec![TrieNode::EMPTY; ROOT_NODES as usize],
        };
        for node in 0..ROOT_NODES as usize {
            // A root node's index within its root is the address's first byte.
            let first = (node % 256) as u128;
            for index in 0..NODE_ENTRIES {
                let bits = (first << 8 | index as u128) << 112;
                layout.out[node].entries[index] = layout.entry(self.nodes[node][index], bits, 16);
            }
        }
        let wildcard_list = if wildcard.is_empty() {
            0
        } else {
            layout.list(wildcard, None)
        };
        Tries {
            lists: layout.lists,
            nodes: layout.out,
            wildcard_list,
        }
    }
}

/// The builder's tries as the probe reads them.
struct Layout<'a> {
    nodes: &'a [[u32; NODE_ENTRIES]],
    sets: &'a [Vec<u32>],
    list_of_set: HashMap<u32, u32>,
    lists: Vec<CandidateList>,
    out: Vec<TrieNode>,
}

impl Layout<'_> {
    fn list(&mut self, members: &[u32], set: Option<u32>) -> u32 {
        if let Some(set) = set
            && let Some(&id) = self.list_of_set.get(&set)
        {
            return id;
        }
        let mut list = CandidateList::EMPTY;
        list.len = members.len() as u32;
        list.rules[..members.len()].copy_from_slice(members);
        self.lists.push(list);
        let id = self.lists.len() as u32 - 1;
        if let Some(set) = set {
            self.list_of_set.insert(set, id);
        }
        id
    }

    fn set_list(&mut self, set: u32) -> u32 {
        let sets = self.sets;
        self.list(&sets[set as usize], Some(set))
    }

    /// The probe's entry for the builder's entry `value`, which addresses starting with the
    /// first `depth` bits of `bits` reach.
    fn entry(&mut self, value: u32, bits: u128, depth: u32) -> u32 {
        if value & CHILD == 0 {
            return self.set_list(value);
        }
        let node = (value & !CHILD) as usize;
        // Follow the chain of nodes that hold one value everywhere but on the way on.
        if let Some((miss, _, _)) = sparse(&self.nodes[node]) {
            let (mut levels, mut end, mut spelled, mut next) = (0, depth, bits, value);
            while next & CHILD != 0 {
                let Some((other, byte, on)) = sparse(&self.nodes[(next & !CHILD) as usize]) else {
                    break;
                };
                if other != miss {
                    break;
                }
                spelled |= u128::from(byte) << (120 - end);
                end += 8;
                levels += 1;
                next = on;
            }
            // Only a chain down to the prefixes' last level: the probe ends its walk at a record.
            if levels >= 2 && next & CHILD == 0 {
                let record = self.out.len();
                self.out.push(TrieNode::EMPTY);
                let mask = !u128::MAX.checked_shr(end).unwrap_or(0);
                let (net, mask) = (raw_words(spelled), raw_words(mask));
                let matched = self.entry(next, spelled, end);
                let miss = self.set_list(miss);
                let entries = &mut self.out[record].entries;
                entries[path::NET..path::NET + 4].copy_from_slice(&net);
                entries[path::MASK..path::MASK + 4].copy_from_slice(&mask);
                entries[path::MATCH] = matched;
                entries[path::MISS] = miss;
                entries[path::LEVELS] = levels;
                return CHILD | PATH | record as u32;
            }
        }
        let out = self.out.len();
        self.out.push(TrieNode::EMPTY);
        for index in 0..NODE_ENTRIES {
            let below = bits | (index as u128) << (120 - depth);
            self.out[out].entries[index] = self.entry(self.nodes[node][index], below, depth + 8);
        }
        CHILD | out as u32
    }
}

/// A node whose entries all hold one value but one: that value, the other's index and value.
fn sparse(node: &[u32; NODE_ENTRIES]) -> Option<(u32, u32, u32)> {
    let common = if node[0] == node[1] || node[0] == node[2] {
        node[0]
    } else {
        node[1]
    };
    let mut others = node.iter().enumerate().filter(|&(_, &v)| v != common);
    let (index, &value) = others.next()?;
    if others.next().is_some() {
        return None;
    }
    Some((common, index as u32, value))
}
