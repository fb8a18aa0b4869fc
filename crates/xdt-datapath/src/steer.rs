//! The steering maps of an attached probe, for the agent: its AF_XDP sockets in `XDT_XSKS` and
//! its lease in `XDT_STEER` (see `xdt_common::steer` for how the probe uses them).

use std::{fmt, os::fd::AsRawFd, time::Duration};

use aya::maps::{Array, Map, MapData, XskMap};
use xdt_common::steer::{LEASE_MAP, MAX_QUEUES, META_MAGIC, SteerLease, SteerMeta, XSKS_MAP};

use crate::{Error, Result, error::map_error};

pub struct SteerMaps {
    sockets: XskMap<MapData>,
    lease: Array<MapData, SteerLease>,
}

impl fmt::Debug for SteerMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteerMaps").finish_non_exhaustive()
    }
}

impl SteerMaps {
    /// See [`crate::attached::AttachedProbe::steer_maps`].
    pub(crate) fn new(sockets: MapData, lease: MapData) -> Result<Self> {
        Ok(Self {
            sockets: Map::XskMap(sockets)
                .try_into()
                .map_err(map_error(XSKS_MAP, "open"))?,
            lease: Map::Array(lease)
                .try_into()
                .map_err(map_error(LEASE_MAP, "open"))?,
        })
    }

    /// The steering maps of a loaded (not necessarily attached) probe.
    pub fn of(probe: &crate::probe::LoadedProbe) -> Result<Self> {
        Self::new(probe.map_handle(XSKS_MAP)?, probe.map_handle(LEASE_MAP)?)
    }

    /// Steers packets of RX queue `queue` to `socket` (bound to that queue).
    pub fn set_socket(&mut self, queue: u32, socket: impl AsRawFd) -> Result<()> {
        if queue >= MAX_QUEUES {
            return Err(Error::TooManyQueues {
                queue,
                max: MAX_QUEUES,
            });
        }
        self.sockets
            .set(queue, socket, 0)
            .map_err(map_error(XSKS_MAP, "update"))
    }

    /// Removes the socket of `queue` (a closed socket leaves the map by itself).
    pub fn clear_socket(&mut self, queue: u32) -> Result<()> {
        match self.sockets.unset(queue) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => other.map_err(map_error(XSKS_MAP, "delete")),
        }
    }

    /// Lets the probe steer for `lease` from now (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
    pub fn renew(&mut self, lease: Duration) -> Result<()> {
        let now = crate::sys::monotonic_ns()?;
        let expires_ns = now.saturating_add(lease.as_nanos().try_into().unwrap_or(u64::MAX));
        self.lease
            .set(0, SteerLease { expires_ns }, 0)
            .map_err(map_error(LEASE_MAP, "update"))
    }

    /// Stops steering now: matching packets pass to the kernel stack.
    pub fn revoke(&mut self) -> Result<()> {
        self.lease
            .set(0, SteerLease { expires_ns: 0 }, 0)
            .map_err(map_error(LEASE_MAP, "update"))
    }
}

/// The probe's metadata in front of a steered frame, from the end of the frame's `headroom`;
/// `None` if it is not there (no room, or bytes without the magic).
#[must_use]
pub fn meta_before(headroom: &[u8]) -> Option<SteerMeta> {
    let at = headroom.len().checked_sub(size_of::<SteerMeta>())?;
    let meta = crate::events::read_record::<SteerMeta>(&headroom[at..])?;
    (meta.magic == META_MAGIC).then_some(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_read_from_the_end_of_the_headroom() {
        let meta = SteerMeta {
            timestamp_ns: 0x0102_0304_0506_0708,
            label: 7,
            rule: 3,
            rx_queue: 1,
            magic: META_MAGIC,
        };
        let mut headroom = vec![0xaa; 5];
        headroom.extend_from_slice(&meta.timestamp_ns.to_ne_bytes());
        for word in [meta.label, meta.rule, meta.rx_queue, meta.magic] {
            headroom.extend_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(meta_before(&headroom), Some(meta));
        assert_eq!(meta_before(&headroom[..headroom.len() - 1]), None);
        let last = headroom.len() - 1;
        headroom[last] ^= 1;
        assert_eq!(meta_before(&headroom), None, "a wrong magic is no metadata");
    }
}
