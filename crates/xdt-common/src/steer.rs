//! AF_XDP steering: `XDT_XSKS` (the agent's sockets, one per RX queue), `XDT_STEER` (the agent's
//! lease) and the metadata the probe writes in front of every steered frame.
//!
//! Fail-open: the probe redirects a `steer` match only when all of these hold, and otherwise
//! passes the packet to the kernel stack and counts it in `steer_fallback_packets`:
//! - the lease in `XDT_STEER` has not expired (the agent renews it from its steering thread,
//!   so a hung agent stops receiving within one lease);
//! - `XDT_XSKS` holds a socket at the packet's RX queue, bound to that same queue (a closed or
//!   killed agent's sockets leave the map with the socket);
//! - the metadata fits in front of the frame.

use crate::user_pod;

pub const XSKS_MAP: &str = "XDT_XSKS";
/// RX queues the probe can steer from (entries of `XDT_XSKS`, indexed by queue id).
pub const MAX_QUEUES: u32 = 256;

pub const LEASE_MAP: &str = "XDT_STEER";

/// Entry 0 of `XDT_STEER`, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerLease {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`) nanoseconds until which steering is on; 0 = off.
    pub expires_ns: u64,
}

/// Written by the probe immediately before the frame (XDP metadata, `bpf_xdp_adjust_meta`); the
/// agent finds it `size_of::<SteerMeta>()` bytes before the frame's first byte in its UMEM.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerMeta {
    /// `bpf_ktime_get_ns()` at the XDP hook.
    pub timestamp_ns: u64,
    pub label: u32,
    /// The matching rule's id (its number in the rules file).
    pub rule: u32,
    /// RX queue the frame arrived on.
    pub rx_queue: u32,
    /// [`META_MAGIC`]: tells a probe-written header from stale bytes.
    pub magic: u32,
}

pub const META_MAGIC: u32 = 0x7864_7431; // "xdt1"

user_pod!(SteerLease, SteerMeta);

const _: () = assert!(core::mem::size_of::<SteerLease>() == 8);
// XDP metadata must be a multiple of 4 bytes and at most 32.
const _: () = assert!(core::mem::size_of::<SteerMeta>() == 24);
