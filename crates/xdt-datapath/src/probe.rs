//! The probe's objects and loading one (verified, not attached yet): its maps are created with
//! the capacity asked for and its configuration written before anything can attach it.

use std::{os::fd::AsFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use xdt_common::{
    ABI_VERSION,
    config::{self, Attachment, Config, Generation},
    counters, flows, labels,
    rules::{self as raw},
    trie,
};

use crate::{
    error::{Error, Result, is_permission, map_error},
    maps::ProbeMaps,
};

/// The probe object, built from bpf/ by build.rs.
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdt.bpf.o"));
/// Baselines for the benchmark: an empty XDP_PASS program and a single-LPM-trie labeller.
#[cfg(feature = "test-objects")]
pub static BENCH_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-pass.bpf.o"));
#[cfg(feature = "test-objects")]
pub static BENCH_LPM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-lpm.bpf.o"));
/// For tests of foreign maps: the otel demo's packet counter (`stats_map`, 8 x u64).
#[cfg(feature = "test-objects")]
pub static DEMO_COUNTER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/demo-counter.bpf.o"));
/// For tests of how a refused load is reported: an `xdt` program the verifier rejects.
#[cfg(feature = "test-objects")]
pub static UNVERIFIABLE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/unverifiable.bpf.o"));

/// The program's name in the object.
pub const PROGRAM: &str = "xdt";
/// The probe's read-only global that makes flows read the coarse clock for their last-seen
/// time (1) or the precise one (0), as named in bpf/src/main.rs.
const COARSE_CLOCK: &str = "XDT_COARSE_CLOCK";

/// Whether the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11). A kernel whose version
/// cannot be read gets the precise clock, which every kernel has.
fn has_coarse_clock() -> bool {
    aya::util::KernelVersion::current()
        .is_ok_and(|version| version >= aya::util::KernelVersion::new(5, 11, 0))
}

/// How many rules and trie nodes the maps hold per generation, and how many flows each flow
/// table holds (0: flows off); fixed when the probe is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_rules: u32,
    pub trie_nodes: u32,
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_rules: raw::DEFAULT_MAX_RULES,
            trie_nodes: trie::DEFAULT_TRIE_NODES,
            flows: 0,
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
        Self::load_build(PROBE_OBJECT, capacity, true)
    }

    /// [`Self::load`] with another build of the probe (its object file's bytes, aligned as
    /// aya's `include_bytes_aligned!` or a `Vec<u8>` leaves them), for benchmarks that compare
    /// builds side by side. Its maps must have the layouts of this build's `xdt-common`.
    /// A build from before the coarse-clock switch (`XDT_COARSE_CLOCK`) loads without it.
    pub fn load_object(object: &[u8], capacity: Capacity) -> Result<Self> {
        Self::load_build(object, capacity, false)
    }

    /// `own`: the object is this build's, which must have the coarse-clock switch (a load that
    /// misses it fails instead of running the probe with the dearer clock unnoticed).
    fn load_build(object: &[u8], capacity: Capacity, own: bool) -> Result<Self> {
        if capacity.max_rules == 0 || capacity.max_rules > 1 << 24 {
            return Err(Error::Compile(crate::rules::CompileError::TooManyRules {
                count: capacity.max_rules as usize,
                capacity: 1 << 24,
            }));
        }
        if capacity.flows > flows::MAX_ENTRIES {
            return Err(Error::FlowTableTooLarge {
                entries: capacity.flows,
                max: flows::MAX_ENTRIES,
            });
        }
        let flow_entries = capacity.flows.max(flows::OFF_ENTRIES);
        let coarse_clock = u8::from(has_coarse_clock());
        let mut ebpf = EbpfLoader::new()
            .override_global(COARSE_CLOCK, &coarse_clock, own)
            .map_max_entries(flows::TABLE_MAPS[0], flow_entries)
            .map_max_entries(flows::TABLE_MAPS[1], flow_entries)
            .map_max_entries(raw::RULES_MAP, 2 * capacity.max_rules)
            .map_max_entries(raw::SAMPLE_HITS_MAP, 2 * capacity.max_rules)
            .map_max_entries(raw::CANDIDATES_MAP, 2 * capacity.max_lists())
            .map_max_entries(
                trie::MAP,
                2 * trie::nodes_per_generation(capacity.trie_nodes),
            )
            .load(object)
            .map_err(load_error)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| Error::Load("the object has no xdt program".into()))?
            .try_into()
            .map_err(|e| Error::Load(Box::new(e)))?;
        program.load().map_err(|e| match e {
            // EPERM only: BPF_PROG_LOAD's EACCES is the verifier refusing the program, which
            // its log (kept in the error) explains; privileges have nothing to do with it.
            aya::programs::ProgramError::LoadError { io_error, .. }
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
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
            flow_entries: capacity.flows,
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

    /// The flow tables; [`Error::FlowsOff`] when the probe was loaded without them.
    pub fn flows(&mut self) -> Result<crate::flows::FlowTables> {
        let entries = self.maps()?.config()?.flow_entries;
        if entries == 0 {
            return Err(Error::FlowsOff {
                iface: "this probe".to_owned(),
            });
        }
        let [first, second] = flows::TABLE_MAPS.map(|name| self.map_handle(name));
        crate::flows::FlowTables::new(
            [first?, second?],
            self.map_handle(flows::GENERATION_MAP)?,
            entries,
        )
    }

    /// The reader of the probe's ring buffer.
    pub fn events(&self) -> Result<crate::events::EventReader> {
        crate::events::EventReader::from_map_data(self.map_handle(xdt_common::events::MAP)?)
    }

    /// An owned handle (a duplicated descriptor) on the probe's map `name`.
    pub(crate) fn map_handle(&self, name: &'static str) -> Result<MapData> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Load(format!("the object has no map {name}").into()))?;
        let data = map_data(map)
            .ok_or_else(|| Error::Load(format!("map {name} has an unexpected type").into()))?;
        duplicate(data, name)
    }
}

/// A second handle on the map of `data` (a duplicated descriptor).
pub(crate) fn duplicate(data: &MapData, name: &'static str) -> Result<MapData> {
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
        Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m)
        | Map::XskMap(m)
        | Map::HashMap(m) => Some(m),
        _ => None,
    }
}

/// Every map of the probe, in the order they are pinned.
pub const ALL_MAPS: [&str; 15] = [
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
    flows::TABLE_MAPS[0],
    flows::TABLE_MAPS[1],
    flows::GENERATION_MAP,
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
