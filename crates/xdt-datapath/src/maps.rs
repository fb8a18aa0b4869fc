//! The maps xdt reads and writes through a probe, loaded or attached: the configuration,
//! counters, labels, and the rule set, installed atomically (the ring buffer is read by
//! [`crate::events`], the steering maps are [`crate::steer`]'s).

use std::{collections::HashMap, fmt, net::IpAddr};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use xdt_common::{
    config::{self, Config, Generation},
    counters::{self, COUNT, Counters},
    labels::{self, LabelStats, MAX_LABELS},
    rules::{
        self as raw, ACTION_DROP, ACTION_SAMPLE, ACTION_STEER, CandidateList, MATCH_DST, MATCH_SRC,
    },
    trie::{self, TrieNode},
};

use crate::{
    error::{Error, Result, map_error},
    labels::{LabelNames, LabelTable},
    rules::{Action, Cidr, Rule, compile},
};

/// The maps xdt reads and writes (the ring buffer is read by [`crate::events`]).
pub struct ProbeMaps {
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counters>,
    label_stats: PerCpuArray<MapData, LabelStats>,
    label_names: LabelNames,
    rules: Array<MapData, raw::Rule>,
    candidates: Array<MapData, CandidateList>,
    trie: Array<MapData, TrieNode>,
}

impl fmt::Debug for ProbeMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeMaps").finish_non_exhaustive()
    }
}

/// A label and what was counted under it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelCount {
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What installing a rule set did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    pub rules: usize,
    pub generation: u32,
    pub trie_nodes: u32,
    pub candidate_lists: usize,
}

impl ProbeMaps {
    pub(crate) fn from_lookup(
        mut open: impl FnMut(&'static str) -> Result<MapData>,
    ) -> Result<Self> {
        macro_rules! typed {
            ($name:expr, $variant:ident) => {
                Map::$variant(open($name)?)
                    .try_into()
                    .map_err(map_error($name, "open"))?
            };
        }
        Ok(Self {
            config: typed!(config::MAP, Array),
            counters: typed!(counters::MAP, PerCpuArray),
            label_stats: typed!(labels::STATS_MAP, PerCpuArray),
            label_names: LabelNames::new(open(labels::NAMES_MAP)?)?,
            rules: typed!(raw::RULES_MAP, Array),
            candidates: typed!(raw::CANDIDATES_MAP, Array),
            trie: typed!(trie::MAP, Array),
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&0, 0)
            .map_err(map_error(config::MAP, "read"))
    }

    pub(crate) fn write_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(map_error(config::MAP, "write"))
    }

    /// Records how the probe was attached.
    pub fn record_attachment(
        &mut self,
        mode: u32,
        ifindex: u32,
        attached_at_ns: u64,
    ) -> Result<()> {
        let mut config = self.config()?;
        config.attachment.mode = mode;
        config.attachment.ifindex = ifindex;
        config.attachment.attached_at_ns = attached_at_ns;
        self.write_config(&config)
    }

    /// The interface counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_error(counters::MAP, "read"))?;
        let mut sum = Counters::ZERO;
        for cpu in per_cpu.iter() {
            for i in 0..COUNT {
                sum.values[i] = sum.values[i].wrapping_add(cpu.values[i]);
            }
        }
        Ok(sum)
    }

    /// Label names by id.
    pub fn label_names(&self) -> Result<LabelTable> {
        self.label_names.read()
    }

    /// A handle on the label names of its own (for a reader of events).
    pub fn label_names_handle(&self) -> Result<LabelNames> {
        self.label_names.try_clone()
    }

    /// Packets and bytes of every label that has an id, in id order.
    pub fn label_counts(&self) -> Result<Vec<LabelCount>> {
        let names = self.label_names()?;
        let mut counts = Vec::new();
        for (id, label) in names.named() {
            let per_cpu = self
                .label_stats
                .get(&id, 0)
                .map_err(map_error(labels::STATS_MAP, "read"))?;
            let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), s| {
                (p.wrapping_add(s.packets), b.wrapping_add(s.bytes))
            });
            counts.push(LabelCount {
                label: label.to_owned(),
                packets,
                bytes,
            });
        }
        Ok(counts)
    }

    /// Validates and compiles `rules`, writes them into the inactive generation and makes it
    /// active. Nothing the probe reads changes unless every step before the switch succeeded.
    pub fn install(&mut self, rules: &[Rule]) -> Result<Installed> {
        let config = self.config()?;
        let names = self.label_names()?;
        let (label_ids, new_labels) = assign_label_ids(&names, rules)?;
        let attachment = config.attachment;
        let compiled = compile(
            rules,
            &label_ids,
            attachment.max_rules,
            attachment.trie_nodes,
        )?;

        let target = 1 - config.active.min(1);
        let base = config.generations[target as usize];
        for (id, name) in &new_labels {
            self.label_names.write(*id, name)?;
        }
        for (slot, rule) in compiled.rules.iter().enumerate() {
            self.rules
                .set(base.rule_base + slot as u32, rule, 0)
                .map_err(map_error(raw::RULES_MAP, "write"))?;
        }
        for (id, list) in compiled.lists.iter().enumerate().skip(1) {
            self.candidates
                .set(base.list_base + id as u32, list, 0)
                .map_err(map_error(raw::CANDIDATES_MAP, "write"))?;
        }
        for (index, node) in compiled.nodes.iter().enumerate() {
            self.trie
                .set(base.node_base + index as u32, node, 0)
                .map_err(map_error(trie::MAP, "write"))?;
        }
        // Publish the generation first, then switch to it: the probe reads `active`, then the
        // generation it names, so it never sees the new number with the old description.
        let mut next = config;
        next.generations[target as usize] = Generation {
            rule_count: compiled.rules.len() as u32,
            wildcard_list: compiled.wildcard_list,
            node_count: compiled.child_nodes(),
            roots_in_use: compiled.roots_in_use,
            ..base
        };
        self.write_config(&next)?;
        next.active = target;
        self.write_config(&next)?;
        Ok(Installed {
            rules: rules.len(),
            generation: target,
            trie_nodes: compiled.child_nodes(),
            candidate_lists: compiled.lists.len() - 1,
        })
    }

    /// The active rule set, in file order.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        let config = self.config()?;
        let generation = config.generations[config.active.min(1) as usize];
        let names = self.label_names()?;
        let mut rules = Vec::with_capacity(generation.rule_count as usize);
        for slot in 0..generation.rule_count {
            let raw = self
                .rules
                .get(&(generation.rule_base + slot), 0)
                .map_err(map_error(raw::RULES_MAP, "read"))?;
            rules.push((raw.id, decode_rule(&raw, names.name(raw.label))));
        }
        rules.sort_by_key(|(id, _)| *id);
        Ok(rules.into_iter().map(|(_, r)| r).collect())
    }
}

/// Label ids by name, and the (id, name) pairs that are new.
type LabelIds = (HashMap<String, u32>, Vec<(u32, String)>);

/// Ids for every label of `rules`: existing labels keep theirs, new ones take free ids.
/// Returns all ids and the new (id, name) pairs to write.
fn assign_label_ids(names: &LabelTable, rules: &[Rule]) -> Result<LabelIds> {
    let mut ids: HashMap<String, u32> = names.named().map(|(id, n)| (n.to_owned(), id)).collect();
    let mut free = names.free_ids();
    let mut new = Vec::new();
    for rule in rules {
        if ids.contains_key(&rule.label) {
            continue;
        }
        let Some(id) = free.next() else {
            return Err(Error::LabelTableFull {
                count: ids.len() + 1,
                capacity: MAX_LABELS - 1,
            });
        };
        ids.insert(rule.label.clone(), id);
        new.push((id, rule.label.clone()));
    }
    Ok((ids, new))
}

fn decode_cidr(family: u8, net: &[u32; 4], mask: &[u32; 4]) -> Cidr {
    let bytes = |w: &[u32; 4]| {
        let mut b = [0u8; 16];
        for (i, word) in w.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        b
    };
    let (net, mask) = (bytes(net), bytes(mask));
    if family == 4 {
        let len = mask[..4].iter().map(|b| b.count_ones()).sum::<u32>() as u8;
        Cidr {
            addr: IpAddr::from([net[0], net[1], net[2], net[3]]),
            len,
        }
    } else {
        let len = mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
        Cidr {
            addr: IpAddr::from(net),
            len,
        }
    }
}

fn decode_rule(raw: &raw::Rule, label: String) -> Rule {
    let family = raw.family;
    Rule {
        label,
        src: (raw.match_flags & MATCH_SRC != 0)
            .then(|| decode_cidr(family, &raw.src_net, &raw.src_mask)),
        dst: (raw.match_flags & MATCH_DST != 0)
            .then(|| decode_cidr(family, &raw.dst_net, &raw.dst_mask)),
        protocol: (raw.match_flags & raw::MATCH_PROTOCOL != 0).then_some(raw.protocol),
        dst_ports: (raw.match_flags & raw::MATCH_PORT != 0).then_some((raw.port_lo, raw.port_hi)),
        priority: raw.priority,
        action: match raw.action {
            ACTION_SAMPLE => Action::Sample(raw.sample_every),
            ACTION_DROP => Action::Drop,
            ACTION_STEER => Action::Steer,
            _ => Action::Count,
        },
    }
}
