//! Where the agent's counters come from: xdt's own probe (pinned maps of an interface), or a map
//! of another XDP program with the otel demo's `struct pkt_stats` layout (8 x u64).

use aya::maps::{Array, Map, MapData, MapInfo, MapType, PerCpuArray, loaded_maps};
use xdt_common::counters::NAMES;
use xdt_datapath::attached::AttachedProbe;
use xdt_wire::LabelCount;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Datapath(#[from] xdt_datapath::Error),
    #[error("no loaded BPF map is named {name:?} (see `bpftool map list`)")]
    NoSuchMap { name: String },
    #[error("cannot open BPF map {what}")]
    Open {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {what} is not usable as struct pkt_stats: {reason}")]
    Layout { what: String, reason: String },
}

/// Which foreign map to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapSelector {
    Name(String),
    Id(u32),
}

/// Cumulative counters and label counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<(String, u64)>,
    pub labels: Vec<LabelCount>,
}

/// An opened counter source.
pub struct Source(Inner);

enum Inner {
    Probe(Box<AttachedProbe>),
    PktStats { what: String, map: PktStatsMap },
}

enum PktStatsMap {
    Shared(Array<MapData, [u64; 8]>),
    PerCpu(PerCpuArray<MapData, [u64; 8]>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Probe(_) => f.write_str("xdt probe"),
            Inner::PktStats { what, .. } => write!(f, "pkt_stats map {what}"),
        }
    }
}

impl Source {
    /// xdt's probe on `iface`, opened once: the other readers (events, ledger, steering)
    /// take their handles from [`Source::probe`].
    pub fn xdt_probe(iface: &str) -> Result<Self, SourceError> {
        Ok(Self(Inner::Probe(Box::new(AttachedProbe::open(iface)?))))
    }

    /// Opens a foreign array map with the `pkt_stats` layout (key 0, one value of 8 x u64,
    /// per-CPU or not).
    pub fn pkt_stats(selector: &MapSelector) -> Result<Self, SourceError> {
        let (what, info) = match selector {
            MapSelector::Id(id) => {
                let what = format!("id {id}");
                let info = MapInfo::from_id(*id).map_err(|source| SourceError::Open {
                    what: what.clone(),
                    source,
                })?;
                (what, info)
            }
            MapSelector::Name(name) => {
                let info = loaded_maps()
                    .filter_map(Result::ok)
                    .find(|m| m.name_as_str() == Some(name.as_str()))
                    .ok_or_else(|| SourceError::NoSuchMap { name: name.clone() })?;
                (format!("{name:?} (id {})", info.id()), info)
            }
        };
        let layout = |reason: String| SourceError::Layout {
            what: what.clone(),
            reason,
        };
        if info.key_size() != 4 {
            return Err(layout(format!(
                "key size {} (expected 4, an array)",
                info.key_size()
            )));
        }
        if info.value_size() != 64 {
            return Err(layout(format!(
                "value size {} (expected 64: 8 x u64)",
                info.value_size()
            )));
        }
        let kind = info.map_type().map_err(|source| SourceError::Open {
            what: what.clone(),
            source,
        })?;
        let data = MapData::from_id(info.id()).map_err(|source| SourceError::Open {
            what: what.clone(),
            source,
        })?;
        let open = |source| SourceError::Open {
            what: what.clone(),
            source,
        };
        let map = match kind {
            MapType::Array => PktStatsMap::Shared(Array::try_from(Map::Array(data)).map_err(open)?),
            MapType::PerCpuArray => {
                PktStatsMap::PerCpu(PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open)?)
            }
            other => {
                return Err(layout(format!(
                    "type {other:?} (expected an array or per-CPU array)"
                )));
            }
        };
        Ok(Self(Inner::PktStats { what, map }))
    }

    /// xdt's own probe (which also has labels, sampled events and steering), if that is the
    /// source.
    #[must_use]
    pub fn probe(&self) -> Option<&AttachedProbe> {
        match &self.0 {
            Inner::Probe(probe) => Some(probe),
            Inner::PktStats { .. } => None,
        }
    }

    pub fn snapshot(&self) -> Result<Snapshot, SourceError> {
        match &self.0 {
            Inner::Probe(probe) => {
                let maps = probe.maps();
                let counters = maps.counters()?;
                Ok(Snapshot {
                    counters: NAMES
                        .iter()
                        .zip(counters.values)
                        .map(|(n, v)| ((*n).to_owned(), v))
                        .collect(),
                    labels: maps
                        .label_counts()?
                        .into_iter()
                        .map(|l| LabelCount {
                            label: l.label,
                            packets: l.packets,
                            bytes: l.bytes,
                        })
                        .collect(),
                })
            }
            Inner::PktStats { what, map } => {
                let open = |source| SourceError::Open {
                    what: what.clone(),
                    source,
                };
                let values = match map {
                    PktStatsMap::Shared(m) => m.get(&0, 0).map_err(open)?,
                    PktStatsMap::PerCpu(m) => {
                        m.get(&0, 0)
                            .map_err(open)?
                            .iter()
                            .fold([0u64; 8], |mut sum, cpu| {
                                for (s, v) in sum.iter_mut().zip(cpu) {
                                    *s = s.wrapping_add(*v);
                                }
                                sum
                            })
                    }
                };
                Ok(Snapshot {
                    counters: xdt_common::pkt_stats::FIELDS
                        .iter()
                        .zip(values)
                        .map(|(n, v)| ((*n).to_owned(), v))
                        .collect(),
                    labels: Vec::new(),
                })
            }
        }
    }
}
