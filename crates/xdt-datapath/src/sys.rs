//! Small system facts the datapath needs besides the bpf() calls aya makes: interface indexes and
//! the bpffs mount.

use std::path::Path;

use nix::{
    errno::Errno,
    mount::{MsFlags, mount},
    sys::statfs::statfs,
};

use crate::{
    error::{Error, Result},
    paths::BPFFS,
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The index of `iface`, or `UnknownInterface`.
pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| Error::UnknownInterface {
        iface: iface.to_owned(),
    })
}

fn is_bpffs(path: &str) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    if !Path::new(BPFFS).is_dir() {
        std::fs::create_dir_all(BPFFS).map_err(|e| Error::BpffsMount {
            path: BPFFS,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    }
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| Error::BpffsMount {
        path: BPFFS,
        source,
    })
}

/// Fails with a clear error when bpffs is not mounted (nothing can be attached then).
pub fn require_bpffs() -> Result<()> {
    if is_bpffs(BPFFS) {
        Ok(())
    } else {
        Err(Error::BpffsMissing { path: BPFFS })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> Result<u64> {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(|e| Error::Sys {
            call: "clock_gettime",
            source: e.into(),
        })?;
    Ok(now.tv_sec().cast_unsigned() * 1_000_000_000 + now.tv_nsec().cast_unsigned())
}
