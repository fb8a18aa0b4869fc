//! The steering maps of an attached probe, for the agent: its AF_XDP sockets in `XDT_XSKS` and
//! its lease in `XDT_STEER` (see `xdt_common::steer` for how the probe uses them).

use std::{fmt, os::fd::AsRawFd, time::Duration};

use aya::maps::{Array, Map, MapData, XskMap};
use xdt_common::steer::{LEASE_MAP, MAX_QUEUES, SteerLease, XSKS_MAP};

use crate::{
    Error, Result,
    error::map_error,
    probe::{ProbeMaps, open_pinned_map},
};

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
    /// Opens the pinned steering maps of the probe attached to `iface` (checking its ABI).
    pub fn open(iface: &str) -> Result<Self> {
        ProbeMaps::open(iface)?;
        Ok(Self {
            sockets: Map::XskMap(open_pinned_map(iface, XSKS_MAP)?)
                .try_into()
                .map_err(map_error(XSKS_MAP, "open"))?,
            lease: Map::Array(open_pinned_map(iface, LEASE_MAP)?)
                .try_into()
                .map_err(map_error(LEASE_MAP, "open"))?,
        })
    }

    /// The steering maps of a loaded (not necessarily attached) probe.
    pub fn of(probe: &crate::probe::LoadedProbe) -> Result<Self> {
        let open = |name| probe.map_handle(name);
        Ok(Self {
            sockets: Map::XskMap(open(XSKS_MAP)?)
                .try_into()
                .map_err(map_error(XSKS_MAP, "open"))?,
            lease: Map::Array(open(LEASE_MAP)?)
                .try_into()
                .map_err(map_error(LEASE_MAP, "open"))?,
        })
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
