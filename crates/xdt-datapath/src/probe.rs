//! The probe's object and maps: loading it (not attached), opening the maps of an attached probe
//! from its pins, reading counters and labels, and installing rule sets atomically.

use std::{collections::HashMap, fmt, net::IpAddr, os::fd::AsFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use xdt_common::{
    ABI_VERSION,
    config::{self, Attachment, Config, Generation},
    counters::{self, COUNT, Counters},
    labels::{self, LabelName, LabelStats, MAX_LABELS},
    rules::{
        self as raw, ACTION_DROP, ACTION_SAMPLE, ACTION_STEER, CandidateList, MATCH_DST, MATCH_SRC,
    },
    trie::{self, TrieNode},
};

use crate::{
    error::{Error, Result, is_permission, map_error},
    paths,
    rules::{Action, Cidr, Rule, compile},
};

/// The probe object, built from bpf/ by build.rs.
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdt.bpf.o"));
/// Baselines for the benchmark: an empty XDP_PASS program and a single-LPM-trie labeller.
pub static BENCH_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-pass.bpf.o"));
pub static BENCH_LPM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-lpm.bpf.o"));
/// For tests of foreign maps: the otel demo's packet counter (`stats_map`, 8 x u64).
pub static DEMO_COUNTER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/demo-counter.bpf.o"));

/// The program's name in the object.
pub const PROGRAM: &str = "xdt";

/// How many rules and trie nodes the maps hold per generation; fixed when the probe is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_rules: u32,
    pub trie_nodes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_rules: raw::DEFAULT_MAX_RULES,
            trie_nodes: trie::DEFAULT_TRIE_NODES,
        }
    }
}

impl Capacity {
    #[must_use]
    pub const fn max_lists(&self) -> u32 {
        raw::max_lists(self.max_rules)
    }
}

/// A loaded (verified) probe that is not attached yet.
#[derive(Debug)]
pub struct LoadedProbe {
    pub ebpf: Ebpf,
}

impl LoadedProbe {
    /// Creates the maps with `capacity` and loads the program through the verifier.
    pub fn load(capacity: Capacity) -> Result<Self> {
        if capacity.max_rules == 0 || capacity.max_rules > 1 << 24 {
            return Err(Error::Compile(crate::rules::CompileError::TooManyRules {
                count: capacity.max_rules as usize,
                capacity: 1 << 24,
            }));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(raw::RULES_MAP, 2 * capacity.max_rules)
            .map_max_entries(raw::SAMPLE_HITS_MAP, 2 * capacity.max_rules)
            .map_max_entries(raw::CANDIDATES_MAP, 2 * capacity.max_lists())
            .map_max_entries(
                trie::MAP,
                2 * trie::nodes_per_generation(capacity.trie_nodes),
            )
            .load(PROBE_OBJECT)
            .map_err(load_error)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| Error::Load("the object has no xdt program".into()))?
            .try_into()
            .map_err(|e| Error::Load(Box::new(e)))?;
        program.load().map_err(|e| match e {
            aya::programs::ProgramError::LoadError { io_error, .. } if is_permission(&io_error) => {
                Error::NotPermitted {
                    call: "BPF_PROG_LOAD",
                    source: io_error,
                }
            }
            e => Error::Load(Box::new(e)),
        })?;
        let mut probe = Self { ebpf };
        let mut maps = probe.maps()?;
        let max_lists = capacity.max_lists();
        let nodes = trie::nodes_per_generation(capacity.trie_nodes);
        let config = Config {
            active: 0,
            padding: 0,
            generations: [0, 1].map(|g| Generation {
                rule_base: g * capacity.max_rules,
                list_base: g * max_lists,
                node_base: g * nodes,
                ..Generation::default()
            }),
            attachment: Attachment {
                abi_version: ABI_VERSION,
                max_rules: capacity.max_rules,
                max_lists,
                trie_nodes: capacity.trie_nodes,
                ..Attachment::default()
            },
        };
        maps.write_config(&config)?;
        Ok(probe)
    }

    pub fn program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::Load("the object has no xdt program".into()))
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::Load("the object has no xdt program".into()))
    }

    /// Runs the program on `frame` with BPF_PROG_TEST_RUN; see [`test_run`].
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        test_run(self.program()?, frame, repeat)
    }

    /// Handles on the maps (they share the kernel objects with this probe).
    pub fn maps(&mut self) -> Result<ProbeMaps> {
        ProbeMaps::from_lookup(|name| self.map_handle(name))
    }

    /// An owned handle (a duplicated descriptor) on the probe's map `name`.
    pub(crate) fn map_handle(&self, name: &'static str) -> Result<MapData> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Load(format!("the object has no map {name}").into()))?;
        let data = map_data(map)
            .ok_or_else(|| Error::Load(format!("map {name} has an unexpected type").into()))?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Sys {
                call: "dup",
                source,
            })?;
        MapData::from_fd(fd).map_err(map_error(name, "open"))
    }
}

/// Runs `program` `repeat` times on `frame` (BPF_PROG_TEST_RUN, Linux 4.12; XDP frames from
/// 14 bytes). Returns the verdict and the kernel's mean time per run.
pub fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let options = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    let result = program.test_run(options).map_err(|e| match e {
        aya::programs::ProgramError::SyscallError(s) if is_permission(&s.io_error) => {
            Error::NotPermitted {
                call: s.call,
                source: s.io_error,
            }
        }
        e => Error::Load(Box::new(e)),
    })?;
    Ok((result.return_value, result.duration))
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m) | Map::PerCpuArray(m) | Map::RingBuf(m) | Map::XskMap(m) => Some(m),
        _ => None,
    }
}

/// Every map of the probe, in the order they are pinned.
pub const ALL_MAPS: [&str; 12] = [
    config::MAP,
    counters::MAP,
    labels::STATS_MAP,
    labels::NAMES_MAP,
    raw::RULES_MAP,
    raw::CANDIDATES_MAP,
    trie::MAP,
    raw::SAMPLE_HITS_MAP,
    xdt_common::events::MAP,
    xdt_common::steer::XSKS_MAP,
    xdt_common::steer::LEASE_MAP,
    xdt_common::agent::MAP,
];

fn load_error(e: aya::EbpfError) -> Error {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error, .. }) = &e {
        if is_permission(io_error) {
            return Error::NotPermitted {
                call: "BPF_MAP_CREATE",
                source: std::io::Error::from_raw_os_error(
                    io_error.raw_os_error().unwrap_or(libc::EPERM),
                ),
            };
        }
        if name == xdt_common::events::MAP && io_error.raw_os_error() == Some(libc::EINVAL) {
            return Error::KernelFeature {
                feature: "BPF ring buffers (Linux 5.8)",
                source: Box::new(e),
            };
        }
    }
    Error::Load(Box::new(e))
}

/// Opens one pinned map of the probe attached to `iface`.
pub(crate) fn open_pinned_map(iface: &str, name: &str) -> Result<MapData> {
    let path = paths::map_pin(iface, name);
    MapData::from_pin(&path).map_err(|e| match e {
        aya::maps::MapError::SyscallError(s) if is_permission(&s.io_error) => Error::NotPermitted {
            call: "BPF_OBJ_GET",
            source: s.io_error,
        },
        e => Error::Pin {
            path,
            source: Box::new(e),
        },
    })
}

/// The maps xdt reads and writes (the ring buffer is read by [`crate::events`]).
pub struct ProbeMaps {
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counters>,
    label_stats: PerCpuArray<MapData, LabelStats>,
    label_names: Array<MapData, LabelName>,
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
    /// Opens the pinned maps of the probe attached to `iface`.
    pub fn open(iface: &str) -> Result<Self> {
        match std::fs::symlink_metadata(paths::link_pin(iface)) {
            Ok(_) => {}
            Err(e) if is_permission(&e) => {
                return Err(Error::NotPermitted {
                    call: "stat /sys/fs/bpf/xdt",
                    source: e,
                });
            }
            Err(_) => {
                crate::sys::require_bpffs()?;
                return Err(Error::NotAttached {
                    iface: iface.to_owned(),
                    dir: paths::pin_dir(iface),
                });
            }
        }
        let maps = Self::from_lookup(|name| open_pinned_map(iface, name))?;
        let found = maps.config()?.attachment.abi_version;
        if found != ABI_VERSION {
            return Err(Error::AbiMismatch {
                iface: iface.to_owned(),
                found,
                expected: ABI_VERSION,
            });
        }
        Ok(maps)
    }

    fn from_lookup(mut open: impl FnMut(&'static str) -> Result<MapData>) -> Result<Self> {
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
            label_names: typed!(labels::NAMES_MAP, Array),
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

    fn write_config(&mut self, config: &Config) -> Result<()> {
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

    /// Label names by id (index 0 is never used).
    pub fn label_names(&self) -> Result<Vec<Option<String>>> {
        let mut names = vec![None; MAX_LABELS as usize];
        for (id, slot) in names.iter_mut().enumerate().skip(1) {
            let name = self
                .label_names
                .get(&(id as u32), 0)
                .map_err(map_error(labels::NAMES_MAP, "read"))?;
            if name.len > 0 {
                let len = (name.len as usize).min(labels::MAX_NAME_LEN);
                *slot = Some(String::from_utf8_lossy(&name.bytes[..len]).into_owned());
            }
        }
        Ok(names)
    }

    /// Packets and bytes of every label that has an id, in id order.
    pub fn label_counts(&self) -> Result<Vec<LabelCount>> {
        let names = self.label_names()?;
        let mut counts = Vec::new();
        for (id, name) in names.into_iter().enumerate() {
            let Some(label) = name else { continue };
            let per_cpu = self
                .label_stats
                .get(&(id as u32), 0)
                .map_err(map_error(labels::STATS_MAP, "read"))?;
            let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), s| {
                (p.wrapping_add(s.packets), b.wrapping_add(s.bytes))
            });
            counts.push(LabelCount {
                label,
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
            let mut entry = LabelName::EMPTY;
            entry.len = name.len() as u32;
            entry.bytes[..name.len()].copy_from_slice(name.as_bytes());
            self.label_names
                .set(*id, entry, 0)
                .map_err(map_error(labels::NAMES_MAP, "write"))?;
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
            let label = names
                .get(raw.label as usize)
                .cloned()
                .flatten()
                .unwrap_or_else(|| format!("label-{}", raw.label));
            rules.push((raw.id, decode_rule(&raw, label)));
        }
        rules.sort_by_key(|(id, _)| *id);
        Ok(rules.into_iter().map(|(_, r)| r).collect())
    }
}

/// Label ids by name, and the (id, name) pairs that are new.
type LabelIds = (HashMap<String, u32>, Vec<(u32, String)>);

/// Ids for every label of `rules`: existing labels keep theirs, new ones take free ids.
/// Returns all ids and the new (id, name) pairs to write.
fn assign_label_ids(names: &[Option<String>], rules: &[Rule]) -> Result<LabelIds> {
    let mut ids: HashMap<String, u32> = names
        .iter()
        .enumerate()
        .filter_map(|(id, n)| n.clone().map(|n| (n, id as u32)))
        .collect();
    let mut free = names
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, n)| n.is_none())
        .map(|(id, _)| id as u32);
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
