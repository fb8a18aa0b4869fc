//! Compiles rules into what the probe reads: the rule table in match order, candidate lists and
//! multibit tries (see `xdt_common::trie` and `xdt_common::rules` for the layouts).
//!
//! Rules are ranked by (priority, position in the file); a rule's rank is its slot, so the probe
//! finds the winner by taking the lowest matching slot. Each rule is indexed by one address: its
//! destination prefix if it has one, else its source prefix; rules without an address go to the
//! wildcard list. Every trie entry holds the list of the rules whose prefix covers it.

use std::collections::HashMap;

use xdt_common::{
    rules::{
        ACTION_COUNT, ACTION_DROP, ACTION_SAMPLE, ACTION_STEER, CandidateList, MATCH_DST,
        MATCH_PORT, MATCH_PROTOCOL, MATCH_SRC, MAX_CANDIDATES, Rule as RawRule,
    },
    trie::{CHILD, NODE_ENTRIES, ROOT_NODES, Root, TrieNode},
};

use super::{Action, Cidr, Rule};

/// A rule set the probe's maps cannot hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// More rules than the rule table has slots.
    #[error(
        "rule table full: {count} rules, the probe has room for {capacity} \
         (attach with a larger --max-rules)"
    )]
    TooManyRules { count: usize, capacity: u32 },
    /// More than `MAX_CANDIDATES` rules cover one address in one dimension.
    #[error(
        "more than {MAX_CANDIDATES} rules cover {prefix} (rules {rule_ids:?}); \
         the probe checks at most {MAX_CANDIDATES} candidates per address"
    )]
    TooManyCandidates { prefix: String, rule_ids: Vec<u32> },
    /// The tries need more child nodes than were reserved.
    #[error(
        "trie full: the rules need {needed} trie nodes, the probe has room for {capacity} \
         (attach with a larger --trie-nodes)"
    )]
    TrieFull { needed: u32, capacity: u32 },
    /// A label without an id (internal: the caller assigns ids first).
    #[error("label {label:?} has no id")]
    UnknownLabel { label: String },
}

/// A rule set in the probe's layout, for one generation.
#[derive(Debug)]
pub struct Compiled {
    /// Slot `i` holds the rule of rank `i`.
    pub rules: Vec<RawRule>,
    /// Indexed by list id; entry 0 is unused.
    pub lists: Vec<CandidateList>,
    /// The root nodes (`ROOT_NODES`), then the child nodes.
    pub nodes: Vec<TrieNode>,
    pub wildcard_list: u32,
    /// Bit `1 << root` for every trie root that holds a prefix.
    pub roots_in_use: u32,
}

impl Compiled {
    #[must_use]
    pub fn child_nodes(&self) -> u32 {
        self.nodes.len() as u32 - ROOT_NODES
    }
}

/// Compiles `rules`; `label_ids` must hold every label; `max_rules` and `trie_nodes` are the
/// capacity of one generation.
pub fn compile<S: std::hash::BuildHasher>(
    rules: &[Rule],
    label_ids: &HashMap<String, u32, S>,
    max_rules: u32,
    trie_nodes: u32,
) -> Result<Compiled, CompileError> {
    if rules.len() > max_rules as usize {
        return Err(CompileError::TooManyRules {
            count: rules.len(),
            capacity: max_rules,
        });
    }
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| (rules[i].priority, i));

    let mut raw = Vec::with_capacity(rules.len());
    let mut builder = TrieBuilder::new();
    let mut wildcard = Vec::new();
    // Shorter prefixes first keeps child nodes from being created before their covering prefix.
    let mut keyed: Vec<(Root, Cidr, u32)> = Vec::new();
    for (slot, &index) in order.iter().enumerate() {
        let rule = &rules[index];
        let label = *label_ids
            .get(&rule.label)
            .ok_or_else(|| CompileError::UnknownLabel {
                label: rule.label.clone(),
            })?;
        raw.push(to_raw(rule, label, index as u32 + 1));
        let slot = slot as u32;
        match (rule.dst, rule.src) {
            (Some(dst), _) => keyed.push((root(dst, true), dst, slot)),
            (None, Some(src)) => keyed.push((root(src, false), src, slot)),
            (None, None) => wildcard.push(slot),
        }
    }
    keyed.sort_by_key(|(_, cidr, slot)| (cidr.len, *slot));
    let roots_in_use = keyed
        .iter()
        .fold(0, |bits, (root, _, _)| bits | 1 << *root as u32);
    for (root, cidr, slot) in keyed {
        builder
            .insert(root, cidr, slot)
            .map_err(|set| CompileError::TooManyCandidates {
                prefix: cidr.to_string(),
                rule_ids: set.iter().map(|&s| raw[s as usize].id).collect(),
            })?;
    }
    if wildcard.len() > MAX_CANDIDATES {
        return Err(CompileError::TooManyCandidates {
            prefix: "any address".into(),
            rule_ids: wildcard.iter().map(|&s| raw[s as usize].id).collect(),
        });
    }
    let needed = builder.nodes.len() as u32 - ROOT_NODES;
    if needed > trie_nodes {
        return Err(CompileError::TrieFull {
            needed,
            capacity: trie_nodes,
        });
    }
    let compiled = builder.finish(raw, &wildcard, roots_in_use);
    // Guaranteed by the bound in `max_lists`; checked so a wrong bound fails here, not in a map.
    debug_assert!(compiled.lists.len() <= xdt_common::rules::max_lists(max_rules) as usize);
    Ok(compiled)
}

fn root(cidr: Cidr, dst: bool) -> Root {
    match (cidr.family(), dst) {
        (4, true) => Root::Ipv4Dst,
        (4, false) => Root::Ipv4Src,
        (_, true) => Root::Ipv6Dst,
        (_, false) => Root::Ipv6Src,
    }
}

/// The prefix as the probe compares it: network and mask as native-endian words of the
/// address bytes (what a raw load of the packet gives).
fn words(cidr: Option<Cidr>) -> ([u32; 4], [u32; 4]) {
    let Some(cidr) = cidr else {
        return ([0; 4], [0; 4]);
    };
    let (bytes, mask): ([u8; 16], [u8; 16]) = match cidr.addr {
        std::net::IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(cidr.len)).unwrap_or(0);
            let mut b = [0; 16];
            let mut m = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            m[..4].copy_from_slice(&mask.to_be_bytes());
            (b, m)
        }
        std::net::IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.len))
                .unwrap_or(0);
            (a.octets(), mask.to_be_bytes())
        }
    };
    let word = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (
        [
            word(&bytes, 0),
            word(&bytes, 4),
            word(&bytes, 8),
            word(&bytes, 12),
        ],
        [
            word(&mask, 0),
            word(&mask, 4),
            word(&mask, 8),
            word(&mask, 12),
        ],
    )
}

fn to_raw(rule: &Rule, label: u32, id: u32) -> RawRule {
    let (src_net, src_mask) = words(rule.src);
    let (dst_net, dst_mask) = words(rule.dst);
    let mut flags = 0;
    if rule.src.is_some() {
        flags |= MATCH_SRC;
    }
    if rule.dst.is_some() {
        flags |= MATCH_DST;
    }
    if rule.protocol.is_some() {
        flags |= MATCH_PROTOCOL;
    }
    if rule.dst_ports.is_some() {
        flags |= MATCH_PORT;
    }
    let (port_lo, port_hi) = rule.dst_ports.unwrap_or((0, u16::MAX));
    let (action, sample_every) = match rule.action {
        Action::Count => (ACTION_COUNT, 0),
        Action::Sample(n) => (ACTION_SAMPLE, n),
        Action::Drop => (ACTION_DROP, 0),
        Action::Steer => (ACTION_STEER, 0),
    };
    RawRule {
        src_net,
        src_mask,
        dst_net,
        dst_mask,
        label,
        sample_every,
        port_lo,
        port_hi,
        family: rule.family().unwrap_or(0),
        protocol: rule.protocol.unwrap_or(0),
        match_flags: flags,
        action,
        priority: rule.priority,
        id,
    }
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
struct TrieBuilder {
    nodes: Vec<[u32; NODE_ENTRIES]>,
    sets: Sets,
}

impl TrieBuilder {
    fn new() -> Self {
        Self {
            nodes: vec![[0; NODE_ENTRIES]; ROOT_NODES as usize],
            sets: Sets::new(),
        }
    }

    fn insert(&mut self, root: Root, cidr: Cidr, slot: u32) -> Result<(), Vec<u32>> {
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

    /// Numbers the sets in use as candidate lists and lays out the nodes.
    fn finish(mut self, rules: Vec<RawRule>, wildcard: &[u32], roots_in_use: u32) -> Compiled {
        let mut list_of_set: HashMap<u32, u32> = HashMap::from([(0, 0)]);
        let mut lists = vec![CandidateList::EMPTY];
        let mut list_for = |members: &[u32], set: Option<u32>| -> u32 {
            if let Some(set) = set
                && let Some(&id) = list_of_set.get(&set)
            {
                return id;
            }
            let mut list = CandidateList::EMPTY;
            list.len = members.len() as u32;
            list.rules[..members.len()].copy_from_slice(members);
            lists.push(list);
            let id = lists.len() as u32 - 1;
            if let Some(set) = set {
                list_of_set.insert(set, id);
            }
            id
        };
        let sets = std::mem::take(&mut self.sets.members);
        let nodes = self
            .nodes
            .iter()
            .map(|node| {
                let mut out = TrieNode::EMPTY;
                for (o, &value) in out.entries.iter_mut().zip(node) {
                    *o = if value & CHILD != 0 {
                        value
                    } else {
                        list_for(&sets[value as usize], Some(value))
                    };
                }
                out
            })
            .collect();
        let wildcard_list = if wildcard.is_empty() {
            0
        } else {
            list_for(wildcard, None)
        };
        Compiled {
            rules,
            lists,
            nodes,
            wildcard_list,
            roots_in_use,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_rules;

    fn compiled(text: &str) -> Compiled {
        let rules = parse_rules(text, "t").expect("valid");
        let ids: HashMap<String, u32> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.label.clone(), i as u32 + 1))
            .collect();
        compile(&rules, &ids, 1000, 1000).expect("compiles")
    }

    /// Follows the trie like the probe does; returns the candidate slots for an address.
    fn candidates(c: &Compiled, root: Root, addr: std::net::IpAddr) -> Vec<u32> {
        let bits = Cidr { addr, len: 0 }.bits();
        let top = (bits >> 112) as u32;
        let mut entry =
            c.nodes[(root as u32 * 256 + (top >> 8)) as usize].entries[(top & 0xff) as usize];
        let mut shift = 104;
        while entry & CHILD != 0 {
            let byte = ((bits >> shift) & 0xff) as usize;
            entry = c.nodes[(entry & !CHILD) as usize].entries[byte];
            shift -= 8;
        }
        let list = &c.lists[entry as usize];
        list.rules[..list.len as usize].to_vec()
    }

    #[test]
    fn ranks_by_priority_then_file_order() {
        let c = compiled("a dst 10.0.0.0/8\nb dst 10.1.0.0/16 priority 5\nc dst 10.1.2.0/24\n");
        let ids: Vec<u32> = c.rules.iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 1, 3]);
        let slots = candidates(&c, Root::Ipv4Dst, "10.1.2.3".parse().expect("ip"));
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(
            candidates(&c, Root::Ipv4Dst, "10.1.3.1".parse().expect("ip")),
            [0, 1]
        );
        assert_eq!(
            candidates(&c, Root::Ipv4Dst, "10.2.0.1".parse().expect("ip")),
            [1]
        );
        assert!(candidates(&c, Root::Ipv4Dst, "11.0.0.1".parse().expect("ip")).is_empty());
    }

    #[test]
    fn indexes_by_dst_then_src_then_wildcard() {
        let c = compiled(
            "d src 10.0.0.0/8 dst 192.168.0.0/16\ns src 10.0.0.0/8\nw proto udp\n\
             six dst 2001:db8::/33\nsix2 src 2001:db8:8000::/34\n",
        );
        assert_eq!(
            candidates(&c, Root::Ipv4Dst, "192.168.1.1".parse().expect("ip")),
            [0]
        );
        assert_eq!(
            candidates(&c, Root::Ipv4Src, "10.9.9.9".parse().expect("ip")),
            [1]
        );
        assert_eq!(
            candidates(&c, Root::Ipv6Dst, "2001:db8:7fff::1".parse().expect("ip")),
            [3]
        );
        assert!(candidates(&c, Root::Ipv6Dst, "2001:db8:8000::1".parse().expect("ip")).is_empty());
        assert_eq!(
            candidates(&c, Root::Ipv6Src, "2001:db8:8000::1".parse().expect("ip")),
            [4]
        );
        let w = &c.lists[c.wildcard_list as usize];
        assert_eq!(&w.rules[..w.len as usize], [2]);
        assert_eq!(c.rules[0].match_flags, MATCH_SRC | MATCH_DST);
        assert_eq!(c.roots_in_use, 0b1111);
        assert_eq!(
            compiled("a dst 10.0.0.0/8\n").roots_in_use,
            1 << Root::Ipv4Dst as u32
        );
        assert_eq!(c.rules[0].family, 4);
    }

    #[test]
    fn host_routes_and_default_routes() {
        let c = compiled("all dst 0.0.0.0/0\nhost dst 198.51.100.7\nall6 dst ::/0\nh6 dst ::1\n");
        assert_eq!(
            candidates(&c, Root::Ipv4Dst, "198.51.100.7".parse().expect("ip")),
            [0, 1]
        );
        assert_eq!(
            candidates(&c, Root::Ipv4Dst, "198.51.100.8".parse().expect("ip")),
            [0]
        );
        assert_eq!(
            candidates(&c, Root::Ipv6Dst, "::1".parse().expect("ip")),
            [2, 3]
        );
        assert_eq!(
            candidates(&c, Root::Ipv6Dst, "::2".parse().expect("ip")),
            [2]
        );
        // A /32 takes two child levels, a /128 fourteen.
        assert_eq!(c.child_nodes(), 2 + 14);
    }

    #[test]
    fn masks_are_raw_packet_words() {
        let c = compiled("x dst 10.1.0.0/16\n");
        assert_eq!(c.rules[0].dst_net[0], u32::from_ne_bytes([10, 1, 0, 0]));
        assert_eq!(c.rules[0].dst_mask[0], u32::from_ne_bytes([255, 255, 0, 0]));
    }

    #[test]
    fn reports_capacity_errors() {
        let rules = parse_rules("a dst 10.0.0.0/24\nb dst 10.0.1.0/24\n", "t").expect("valid");
        let ids = HashMap::from([("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(
            compile(&rules, &ids, 1, 10).expect_err("full"),
            CompileError::TooManyRules {
                count: 2,
                capacity: 1
            }
        );
        assert_eq!(
            compile(&rules, &ids, 2, 0).expect_err("full"),
            CompileError::TrieFull {
                needed: 1,
                capacity: 0
            }
        );
        let many: Vec<String> = (0..=MAX_CANDIDATES)
            .map(|i| format!("r{i} dst 10.0.0.0/{}", 8 + i % 20))
            .collect();
        let many = many.join("\n");
        let rules = parse_rules(&many, "t").expect("valid");
        let ids: HashMap<String, u32> = rules.iter().map(|r| (r.label.clone(), 1)).collect();
        assert!(matches!(
            compile(&rules, &ids, 100, 100).expect_err("overlap"),
            CompileError::TooManyCandidates { .. }
        ));
    }
}
