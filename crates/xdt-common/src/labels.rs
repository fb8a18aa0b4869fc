//! `XDT_LABEL_STATS` (per-CPU packets/bytes per label id) and `XDT_LABEL_NAMES` (the name of each
//! label id, written by user space and never read by the probe, so that every process opening
//! the pins sees the same names). Label id 0 means "no label" and has no entry in use.
//!
//! Label ids are stable while the probe is attached: replacing the rules keeps the id of every
//! label that already exists, so its counters continue.

use crate::user_pod;

pub const STATS_MAP: &str = "XDT_LABEL_STATS";
pub const NAMES_MAP: &str = "XDT_LABEL_NAMES";
pub const MAX_LABELS: u32 = 1024;
/// Longest label name in bytes (UTF-8).
pub const MAX_NAME_LEN: usize = 60;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelStats {
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelName {
    /// Length of the name in `bytes`; 0 marks an unused id.
    pub len: u32,
    pub bytes: [u8; MAX_NAME_LEN],
}

impl LabelName {
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; MAX_NAME_LEN],
    };
}

user_pod!(LabelStats, LabelName);

const _: () = assert!(core::mem::size_of::<LabelStats>() == 16);
const _: () = assert!(core::mem::size_of::<LabelName>() == 64);
