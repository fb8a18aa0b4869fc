//! Reading the probe's flow tables (`xdt_common::flows`): whole tables in batches of records
//! per bpf(2) call (BPF_MAP_LOOKUP_BATCH and BPF_MAP_LOOKUP_AND_DELETE_BATCH, Linux 5.6), not
//! one call per flow.
//!
//! aya 0.14 has no batch operations, so the calls are made here directly. Reading never
//! removes anything; a reader that removes records (the agent's expiry) loses no count by the
//! order of docs/flows.md: [`FlowTables::switch`] the generation, [`GracePeriod::wait`] until
//! no program run can still hold a record of the old table, then [`FlowTables::drain_table`]
//! the table nobody writes any more.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::maps::{Array, Map, MapData};
use xdt_common::flows::{self, FlowKey, FlowRecord};

use crate::error::{Error, Result, is_permission, map_error};

/// The probe's two flow tables and the word saying which one it writes.
pub struct FlowTables {
    tables: [MapData; 2],
    generation: Array<MapData, u32>,
    entries: u32,
}

impl std::fmt::Debug for FlowTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTables")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// Records asked for per call at first; a bucket holding more makes the kernel refuse the call
/// (ENOSPC) and the read asks again with room for twice as many.
const BATCH: usize = 512;
/// bpf(2) command numbers (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// Map types (include/uapi/linux/bpf.h).
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// Which batch call [`batch`] makes.
#[derive(Clone, Copy)]
enum BatchOp {
    Lookup,
    LookupAndDelete,
}

impl BatchOp {
    fn command(self) -> libc::c_long {
        match self {
            Self::Lookup => BPF_MAP_LOOKUP_BATCH,
            Self::LookupAndDelete => BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lookup => "BPF_MAP_LOOKUP_BATCH",
            Self::LookupAndDelete => "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        }
    }
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl FlowTables {
    /// `entries` is the size of each table, as `Config::flow_entries` records it (not 0).
    pub(crate) fn new(tables: [MapData; 2], generation: MapData, entries: u32) -> Result<Self> {
        Ok(Self {
            tables,
            generation: Map::Array(generation)
                .try_into()
                .map_err(map_error(flows::GENERATION_MAP, "open"))?,
            entries,
        })
    }

    /// Flows each table holds at most.
    #[must_use]
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The generation (0 or 1) whose table the probe writes.
    pub fn generation(&self) -> Result<u32> {
        self.generation
            .get(&0, 0)
            .map(|g| g & 1)
            .map_err(map_error(flows::GENERATION_MAP, "read"))
    }

    /// Every record of one generation's table, in the kernel's order.
    pub fn read_table(&self, generation: u32) -> Result<Vec<(FlowKey, FlowRecord)>> {
        let index = (generation & 1) as usize;
        let mut out = Vec::new();
        batch(
            &self.tables[index],
            flows::TABLE_MAPS[index],
            BatchOp::Lookup,
            &mut out,
        )?;
        Ok(out)
    }

    /// Makes the probe write the other table from its next run on; returns the generation it
    /// wrote until now. Runs that started before may still be updating that table: wait for
    /// [`GracePeriod::wait`] before draining it.
    pub fn switch(&mut self) -> Result<u32> {
        let old = self.generation()?;
        self.generation
            .set(0, old ^ 1, 0)
            .map_err(map_error(flows::GENERATION_MAP, "write"))?;
        Ok(old)
    }

    /// Reads and removes every record of one generation's table into `out` (appended): only
    /// for a table the probe no longer writes (after [`FlowTables::switch`] and
    /// [`GracePeriod::wait`]), whose counts are then final. The kernel deletes what it hands
    /// over, so `out` keeps the records read before an error too: a failed drain loses none of
    /// them, and what the failing call did not return is still in the table.
    pub fn drain_table(&self, generation: u32, out: &mut Vec<(FlowKey, FlowRecord)>) -> Result<()> {
        let index = (generation & 1) as usize;
        batch(
            &self.tables[index],
            flows::TABLE_MAPS[index],
            BatchOp::LookupAndDelete,
            out,
        )
    }

    /// Every flow of both tables, a flow in both summed into one record (see [`merge`]).
    pub fn read(&self) -> Result<Vec<(FlowKey, FlowRecord)>> {
        let mut flows: HashMap<FlowKey, FlowRecord> = HashMap::new();
        for generation in [0, 1] {
            for (key, record) in self.read_table(generation)? {
                flows
                    .entry(key)
                    .and_modify(|known| *known = merge(known, &record))
                    .or_insert(record);
            }
        }
        Ok(flows.into_iter().collect())
    }
}

/// One flow's records from the two tables as one: counts added, the earliest first and the
/// latest last time, flags ORed, the label of the earlier record (the flow's first packet), the
/// handshake of the later one that has one.
#[must_use]
pub fn merge(a: &FlowRecord, b: &FlowRecord) -> FlowRecord {
    let (early, late) = if a.first_seen_ns <= b.first_seen_ns {
        (a, b)
    } else {
        (b, a)
    };
    let mut flags = early.tcp_flag_seen;
    for (flag, seen) in flags.iter_mut().zip(late.tcp_flag_seen) {
        *flag |= seen;
    }
    let (syn_ns, handshake_ns) = if late.handshake_ns != 0 || late.syn_ns != 0 {
        (late.syn_ns, late.handshake_ns)
    } else {
        (early.syn_ns, early.handshake_ns)
    };
    FlowRecord {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
        first_seen_ns: early.first_seen_ns,
        last_seen_ns: a.last_seen_ns.max(b.last_seen_ns),
        syn_ns,
        handshake_ns,
        tcp_flag_seen: flags,
        label: early.label,
        padding: 0,
    }
}

/// Waits for an RCU grace period: until every BPF program run that had started has ended. The
/// kernel does that on each update of a map-in-map (`maybe_wait_bpf_programs` in
/// kernel/bpf/syscall.c), so this is a one-entry array of maps of the caller's own, written
/// once per wait; the probe never sees it. Creating it needs CAP_BPF (do it before dropping
/// capabilities); writing it through the descriptor needs none.
#[derive(Debug)]
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

/// The `map_create` member of `union bpf_attr`, up to `map_name` and the fields after it that
/// must be zero.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

/// The element member of `union bpf_attr` (update).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl GracePeriod {
    /// Creates the two maps (an inner one-entry array and the array of maps holding it).
    pub fn new() -> Result<Self> {
        let inner = create_map(&CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_name: *b"xdt_grace_inner\0",
            ..CreateAttr::default()
        })?;
        let outer = create_map(&CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd().cast_unsigned(),
            map_name: *b"xdt_grace\0\0\0\0\0\0\0",
            ..CreateAttr::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns after an RCU grace period (milliseconds on an idle machine).
    pub fn wait(&self) -> Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd().cast_unsigned();
        let mut attr = ElemAttr {
            map_fd: self.outer.as_raw_fd().cast_unsigned(),
            key: (&raw const key) as u64,
            value: (&raw const value) as u64,
            ..ElemAttr::default()
        };
        // SAFETY: `attr` is the element member of bpf_attr with its size; key and value point
        // to a u32 each (the map's key and value sizes) that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &raw mut attr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            return Err(Error::Sys {
                call: "BPF_MAP_UPDATE_ELEM (the grace-period map)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn create_map(attr: &CreateAttr) -> Result<OwnedFd> {
    // SAFETY: `attr` is the map_create member of bpf_attr, its trailing fields zero, passed
    // with its size; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            std::ptr::from_ref(attr),
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if is_permission(&source) {
            return Err(Error::NotPermitted {
                call: "BPF_MAP_CREATE (the grace-period map)",
                source,
            });
        }
        return Err(Error::Sys {
            call: "BPF_MAP_CREATE (the grace-period map)",
            source,
        });
    }
    let fd = i32::try_from(rc).map_err(|_| Error::Sys {
        call: "BPF_MAP_CREATE (the grace-period map)",
        source: io::Error::other("the kernel returned no descriptor"),
    })?;
    // SAFETY: a successful BPF_MAP_CREATE returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the whole hash map `map` in batches (`op`: looking only, or also deleting).
/// Records read before an error stay in `out`.
fn batch(
    map: &MapData,
    name: &'static str,
    op: BatchOp,
    out: &mut Vec<(FlowKey, FlowRecord)>,
) -> Result<()> {
    let fd = map.fd().as_fd();
    let mut chunk = BATCH;
    // The kernel's position in a hash map is a bucket number (u32); u64 leaves it room.
    let mut position: u64 = 0;
    let mut next: u64 = 0;
    let mut first = true;
    let mut keys = vec![FlowKey::default(); chunk];
    let mut values = vec![FlowRecord::default(); chunk];
    loop {
        keys.resize(chunk, FlowKey::default());
        values.resize(chunk, FlowRecord::default());
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const position) as u64
            },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch member of bpf_attr with its size; `keys` and `values`
        // have room for `count` keys and values of the map's sizes (FlowKey and FlowRecord are
        // the map's layouts, checked by the ABI version), `position` and `next` for the
        // kernel's u32 position, and all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                op.command(),
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        out.extend(
            keys.iter()
                .copied()
                .zip(values.iter().copied())
                .take(filled),
        );
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {
                position = next;
                first = false;
            }
            // The end of the map: what this call filled is the last of it.
            Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more records than there was room for: ask again, with more.
            Some(libc::ENOSPC) if filled == 0 && chunk < 1 << 20 => chunk *= 2,
            Some(libc::EINVAL) => {
                return Err(Error::KernelFeature {
                    feature: "batch reads of BPF maps (BPF_MAP_LOOKUP_BATCH and \
                              BPF_MAP_LOOKUP_AND_DELETE_BATCH, Linux 5.6)",
                    source: Box::new(error.unwrap_or_else(|| io::Error::other("EINVAL"))),
                });
            }
            _ => {
                let source = error.unwrap_or_else(|| io::Error::other("unknown error"));
                if is_permission(&source) {
                    return Err(Error::NotPermitted {
                        call: op.name(),
                        source,
                    });
                }
                return Err(Error::FlowRead { map: name, source });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(packets: u64, first: u64, last: u64, flags: u8, label: u32) -> FlowRecord {
        FlowRecord::of_packets(packets, packets * 100, first, last, flags, label)
    }

    #[test]
    fn merge_sums_counts_and_keeps_the_first_packets_label() {
        let old = FlowRecord {
            syn_ns: 5,
            handshake_ns: 7,
            ..record(3, 10, 20, 0x02, 4)
        };
        let new = record(2, 30, 40, 0x11, 9);
        for merged in [merge(&old, &new), merge(&new, &old)] {
            assert_eq!(merged.packets, 5);
            assert_eq!(merged.bytes, 500);
            assert_eq!(merged.first_seen_ns, 10);
            assert_eq!(merged.last_seen_ns, 40);
            assert_eq!(merged.tcp_flags(), 0x13);
            assert_eq!(merged.label, 4);
            assert_eq!((merged.syn_ns, merged.handshake_ns), (5, 7));
        }
    }
}
