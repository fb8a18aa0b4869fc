//! Compiles rules into what the probe reads: the rule table in match order, candidate lists and
//! multibit tries (see `xdt_common::trie` and `xdt_common::rules` for the layouts).
//!
//! Rules are ranked by (priority, position in the file); a rule's rank is its slot, so the probe
//! finds the winner by taking the lowest matching slot. Each rule is indexed by one address: its
//! destination prefix if it has one, else its source prefix; rules without an address go to the
//! wildcard list. Every trie entry holds the list of the rules whose prefix covers it; the
//! tries themselves are built in `trie.rs`.

use std::collections::HashMap;

use xdt_common::{
    rules::{
        ACTION_COUNT, ACTION_DROP, ACTION_SAMPLE, ACTION_STEER, CandidateList, MATCH_DST,
        MATCH_PORT, MATCH_PROTOCOL, MATCH_SRC, MAX_CANDIDATES, Rule as RawRule,
    },
    trie::{ROOT_NODES, Root, TrieNode},
};

use super::{
    Action, Cidr, Rule,
    trie::{TrieBuilder, Tries, raw_words},
};

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
    let Tries {
        lists,
        nodes,
        wildcard_list,
    } = builder.finish(&wildcard);
    let compiled = Compiled {
        rules: raw,
        lists,
        nodes,
        wildcard_list,
        roots_in_use,
    };
    let needed = compiled.child_nodes();
    if needed > trie_nodes {
        return Err(CompileError::TrieFull {
            needed,
            capacity: trie_nodes,
        });
    }
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
    let mask = u128::MAX
        .checked_shl(128 - u32::from(cidr.len))
        .unwrap_or(0);
    (raw_words(cidr.bits()), raw_words(mask))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_rules;
    use xdt_common::trie::{CHILD, PATH, path};

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
        let words = raw_words(bits);
        let mut shift: i64 = 104;
        while entry & CHILD != 0 {
            let node = &c.nodes[(entry & !(CHILD | PATH)) as usize].entries;
            if entry & PATH != 0 {
                let differ = (0..4).any(|i| words[i] & node[path::MASK + i] != node[path::NET + i]);
                if differ {
                    entry = node[path::MISS];
                    break;
                }
                entry = node[path::MATCH];
                shift -= 8 * i64::from(node[path::LEVELS]);
                continue;
            }
            let byte = ((bits >> shift) & 0xff) as usize;
            entry = node[byte];
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
        // The /32's two child levels and the /128's fourteen are one path record each.
        assert_eq!(c.child_nodes(), 2);
        let records = c.nodes[ROOT_NODES as usize..]
            .iter()
            .map(|n| n.entries[path::LEVELS])
            .collect::<Vec<_>>();
        assert_eq!(records, [2, 14]);
    }

    #[test]
    fn sparse_chains_become_path_records() {
        let c = compiled(
            "a dst 2001:db8:1:2::/64\nb dst 2001:db8:1:3::/64\nc dst 2001:db8::/32\n\
             d dst 2001:db8:1:3:ffff::/80\n",
        );
        let at = |addr: &str| candidates(&c, Root::Ipv6Dst, addr.parse().expect("ip"));
        assert_eq!(at("2001:db8:1:2::5"), [0, 2]);
        assert_eq!(at("2001:db8:1:3::"), [1, 2]);
        // Through the record of bytes 8-9 (ff ff) below 2001:db8:1:3, off it at its first and
        // at its last level.
        assert_eq!(at("2001:db8:1:3:ffff:1::"), [1, 2, 3]);
        assert_eq!(at("2001:db8:1:3:fffe::"), [1, 2]);
        assert_eq!(at("2001:db8:1:3:7fff::"), [1, 2]);
        assert_eq!(at("2001:db8:2::1"), [2]);
        assert_eq!(at("2001:db8:1:4::"), [2]);
        assert_eq!(at("2001:db9::1"), Vec::<u32>::new());
        assert_eq!(at("2001:cb8::1"), Vec::<u32>::new());
        // Root 2001, then nodes for bytes 2-7 (the chain above byte 7 leads to a fork, not to
        // a prefix's end: it stays nodes), and one record for bytes 8-9 below 03.
        assert_eq!(c.child_nodes(), 6 + 1);
        let mut entry = c.nodes[Root::Ipv6Dst as usize * 256 + 0x20].entries[0x01];
        for byte in [0x0d, 0xb8, 0x00, 0x01, 0x00, 0x03] {
            assert_eq!(entry & (CHILD | PATH), CHILD, "a node above byte 8");
            entry = c.nodes[(entry & !CHILD) as usize].entries[byte];
        }
        assert_eq!(entry & (CHILD | PATH), CHILD | PATH);
        let record = &c.nodes[(entry & !(CHILD | PATH)) as usize].entries;
        assert_eq!(record[path::LEVELS], 2);
        assert_eq!(
            record[path::NET..path::NET + 4],
            raw_words(0x2001_0db8_0001_0003_ffff_u128 << 48)
        );
        assert_eq!(
            record[path::MASK..path::MASK + 4],
            raw_words(!(u128::MAX >> 80))
        );
        let list = |id: u32| {
            let l = &c.lists[id as usize];
            l.rules[..l.len as usize].to_vec()
        };
        assert_eq!(list(record[path::MATCH]), [1, 2, 3]);
        assert_eq!(list(record[path::MISS]), [1, 2]);
    }

    #[test]
    fn dense_or_single_levels_stay_nodes() {
        // One sparse level alone gains nothing: it stays a node.
        let c = compiled("a dst 10.1.2.0/24\n");
        assert_eq!(c.child_nodes(), 1);
        let root = c.nodes[Root::Ipv4Dst as usize * 256 + 10].entries[1];
        assert_eq!(root & (CHILD | PATH), CHILD);
        // Levels whose other entries differ (here by a /34 beside the /40) end the chain.
        let c = compiled(
            "a dst 2001:db8:4000::/34\nb dst 2001:db8:4200::/40\nc dst 2001:db8:4201::/48\n",
        );
        let at = |addr: &str| candidates(&c, Root::Ipv6Dst, addr.parse().expect("ip"));
        assert_eq!(at("2001:db8:4201::1"), [0, 1, 2]);
        assert_eq!(at("2001:db8:4202::1"), [0, 1]);
        assert_eq!(at("2001:db8:4300::1"), [0]);
        assert_eq!(at("2001:db8:8000::1"), Vec::<u32>::new());
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
