//! One handle on the probe attached to an interface of the caller's network namespace: every
//! pin is opened once and the ABI checked once, in [`AttachedProbe::open`]; the handle then
//! hands out what its users need — the maps (counters, labels, rules), label names for a
//! reader, the event ring, the agent's ledger, the steering maps — as descriptors of the maps it
//! opened, so all of them belong to the one attachment that was checked (a detach and attach in
//! between cannot mix two probes), from any thread or namespace.

use std::{path::PathBuf, time::Duration};

use aya::{
    maps::MapData,
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use serde::Serialize;
use xdt_common::ABI_VERSION;

use crate::{
    attach::mode_name,
    error::{Error, Result, is_permission, pin_error},
    events::EventReader,
    flows::FlowTables,
    labels::LabelNames,
    ledger::Ledger,
    maps::ProbeMaps,
    paths::{self, PinDir},
    probe::{ALL_MAPS, duplicate},
    steer::SteerMaps,
};

pub struct AttachedProbe {
    iface: String,
    pins: PinDir,
    maps: ProbeMaps,
    events: MapData,
    sockets: MapData,
    lease: MapData,
    /// Absent when an xdt without the ledger attached the probe.
    ledger: Option<MapData>,
    flow_tables: [MapData; 2],
    flow_generation: MapData,
}

impl std::fmt::Debug for AttachedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedProbe")
            .field("iface", &self.iface)
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl AttachedProbe {
    /// Opens the probe attached to `iface` in the calling thread's network namespace.
    pub fn open(iface: &str) -> Result<Self> {
        let pins = PinDir::here(iface)?;
        match std::fs::symlink_metadata(pins.link()) {
            Ok(_) => {}
            Err(e) if is_permission(&e) => {
                return Err(Error::NotPermitted {
                    call: "stat /sys/fs/bpf/xdt",
                    source: e,
                });
            }
            Err(_) => return Err(not_attached(iface, &pins)),
        }
        let open = |name| open_pinned_map(&pins, name);
        let maps = ProbeMaps::from_lookup(open)?;
        let attachment = maps.config()?.attachment;
        if attachment.abi_version != ABI_VERSION {
            return Err(Error::AbiMismatch {
                iface: iface.to_owned(),
                found: attachment.abi_version,
                expected: ABI_VERSION,
            });
        }
        // Pins outlive their interface: deleted, or gone with its namespace (whose inode number
        // a new namespace may then get). Such a probe sees no traffic; reading it would show
        // counters that stopped without saying why.
        let now = crate::sys::ifindex(iface).ok();
        if now != Some(attachment.ifindex) {
            return Err(Error::InterfaceGone {
                iface: iface.to_owned(),
                dir: pins.path().to_owned(),
                attached: attachment.ifindex,
                now,
            });
        }
        let ledger = pins
            .map(xdt_common::agent::MAP)
            .exists()
            .then(|| open(xdt_common::agent::MAP))
            .transpose()?;
        Ok(Self {
            iface: iface.to_owned(),
            maps,
            events: open(xdt_common::events::MAP)?,
            sockets: open(xdt_common::steer::XSKS_MAP)?,
            lease: open(xdt_common::steer::LEASE_MAP)?,
            ledger,
            flow_tables: [
                open(xdt_common::flows::TABLE_MAPS[0])?,
                open(xdt_common::flows::TABLE_MAPS[1])?,
            ],
            flow_generation: open(xdt_common::flows::GENERATION_MAP)?,
            pins,
        })
    }

    #[must_use]
    pub fn interface(&self) -> &str {
        &self.iface
    }

    #[must_use]
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Configuration, counters, labels and rules.
    #[must_use]
    pub fn maps(&self) -> &ProbeMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut ProbeMaps {
        &mut self.maps
    }

    /// Label names, for a reader of events (see [`crate::labels::LabelCache`]).
    pub fn label_names(&self) -> Result<LabelNames> {
        self.maps.label_names_handle()
    }

    /// The reader of the ring buffer (it has one reader at a time: see [`EventReader`]).
    pub fn events(&self) -> Result<EventReader> {
        EventReader::from_map_data(duplicate(&self.events, xdt_common::events::MAP)?)
    }

    /// The agent's sockets and lease.
    pub fn steer_maps(&self) -> Result<SteerMaps> {
        SteerMaps::new(
            duplicate(&self.sockets, xdt_common::steer::XSKS_MAP)?,
            duplicate(&self.lease, xdt_common::steer::LEASE_MAP)?,
        )
    }

    /// The agent's ledger; `Ok(None)` when the probe was attached by an xdt without one
    /// (attach it again to have it).
    pub fn ledger(&self) -> Result<Option<Ledger>> {
        self.ledger
            .as_ref()
            .map(|data| Ledger::new(duplicate(data, xdt_common::agent::MAP)?))
            .transpose()
    }

    /// The flow tables; [`Error::FlowsOff`] (which says how to turn them on) when the probe was
    /// attached without them.
    pub fn flows(&self) -> Result<FlowTables> {
        let entries = self.maps.config()?.flow_entries;
        if entries == 0 {
            return Err(Error::FlowsOff {
                iface: self.iface.clone(),
            });
        }
        let [first, second] = &self.flow_tables;
        FlowTables::new(
            [
                duplicate(first, xdt_common::flows::TABLE_MAPS[0])?,
                duplicate(second, xdt_common::flows::TABLE_MAPS[1])?,
            ],
            duplicate(&self.flow_generation, xdt_common::flows::GENERATION_MAP)?,
            entries,
        )
    }

    /// The program's cumulative run time and run count (counted only while
    /// kernel.bpf_stats_enabled=1).
    pub fn program_runtime(&self) -> Result<(Duration, u64)> {
        let pin = self.pins.program();
        let info = aya::programs::ProgramInfo::from_pin(&pin).map_err(|e| pin_error(&pin, e))?;
        Ok((info.run_time(), info.run_count()))
    }

    /// What `xdt status` reports.
    pub fn status(&self) -> Result<Status> {
        let config = self.maps.config()?;
        let generation = config.generations[config.active.min(1) as usize];
        let link_pin = self.pins.link();
        let link = PinnedLink::from_pin(&link_pin).map_err(|e| pin_error(&link_pin, e))?;
        let link = FdLink::from(link);
        let info = link.info().map_err(|e| pin_error(&link_pin, e))?;
        let program = loaded_programs()
            .filter_map(std::result::Result::ok)
            .find(|p| p.id() == info.program_id());
        let mut maps = Vec::new();
        for name in ALL_MAPS {
            let pin = self.pins.map(name);
            let map = aya::maps::MapInfo::from_pin(&pin).map_err(|e| pin_error(&pin, e))?;
            maps.push(MapStatus {
                name,
                id: map.id(),
                max_entries: map.max_entries(),
                pin,
            });
        }
        Ok(Status {
            interface: self.iface.clone(),
            network_namespace: self.pins.netns().to_string(),
            mode: mode_name(config.attachment.mode),
            program_id: info.program_id(),
            link_id: info.id(),
            attached_at_unix: config.attachment.attached_at_ns / 1_000_000_000,
            rules: generation.rule_count,
            labels: self.maps.label_names()?.len(),
            max_rules: config.attachment.max_rules,
            trie_nodes_used: generation.node_count,
            trie_nodes: config.attachment.trie_nodes,
            run_count: program
                .as_ref()
                .map_or(0, aya::programs::ProgramInfo::run_count),
            run_time_ns: program
                .as_ref()
                .map_or(0, |p| p.run_time().as_nanos() as u64),
            maps,
        })
    }
}

/// Why `iface` has no pins in `pins`' namespace: not attached at all, attached in another
/// namespace only (named, with this one), or pinned in the layout of an older xdt.
pub(crate) fn not_attached(iface: &str, pins: &PinDir) -> Error {
    if let Err(e) = crate::sys::require_bpffs() {
        return e;
    }
    let legacy = paths::legacy_dir(iface);
    if legacy.join("link").exists() {
        return Error::LegacyPins {
            iface: iface.to_owned(),
            dir: legacy,
        };
    }
    let elsewhere = paths::namespaces_with(iface, pins.netns());
    if !elsewhere.is_empty() {
        return Error::AttachedElsewhere {
            iface: iface.to_owned(),
            here: pins.netns(),
            there: elsewhere,
        };
    }
    Error::NotAttached {
        iface: iface.to_owned(),
        dir: pins.path().to_owned(),
    }
}

/// Opens one pinned map.
pub(crate) fn open_pinned_map(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).map_err(|e| match e {
        aya::maps::MapError::SyscallError(s) if is_permission(&s.io_error) => Error::NotPermitted {
            call: "BPF_OBJ_GET",
            source: s.io_error,
        },
        e => pin_error(&path, e),
    })
}

/// One pinned map, as `xdt status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub id: u32,
    pub max_entries: u32,
    pub pin: PathBuf,
}

/// What `xdt status` reports for one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub interface: String,
    /// The network namespace the interface is in, as `lsns` names it (`net:[INODE]`).
    pub network_namespace: String,
    pub mode: &'static str,
    pub program_id: u32,
    pub link_id: u32,
    /// Wall-clock attach time, seconds since the Unix epoch.
    pub attached_at_unix: u64,
    pub rules: u32,
    pub labels: usize,
    pub max_rules: u32,
    pub trie_nodes_used: u32,
    pub trie_nodes: u32,
    /// Program run time and count (kernel.bpf_stats_enabled=1), else zero.
    pub run_count: u64,
    pub run_time_ns: u64,
    pub maps: Vec<MapStatus>,
}
