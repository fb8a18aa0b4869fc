//! Dropping every capability once setup is done. The agent needs CAP_BPF (pinned maps),
//! CAP_NET_ADMIN (the re-entry pair), CAP_NET_RAW (AF_XDP and packet sockets) and CAP_PERFMON
//! only to open what it then keeps open; reading maps through descriptors it holds, the ring
//! buffer, the sockets' rings and the TCP connection to central need none (map access through
//! held descriptors without CAP_BPF needs Linux 5.19 or later when
//! kernel.unprivileged_bpf_disabled is set).
//!
//! Capabilities belong to threads: each thread that opened something drops its own, and the
//! agent starts no other thread before its main thread has dropped them (threads inherit the
//! sets of the thread that creates them). `/proc/PID/task/*/status` shows `CapEff: 0` for all.

use caps::{CapSet, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("clearing the {set:?} capability set failed: {source}")]
    Clear {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("{set:?} capabilities remain after clearing: {left:?}")]
    Remaining { set: CapSet, left: CapsHashSet },
}

/// Clears the calling thread's ambient, inheritable, effective and permitted sets (in that
/// order: effective must stay a subset of permitted), then checks that they are empty.
pub fn drop_all() -> Result<(), Error> {
    let sets = [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ];
    for set in sets {
        caps::clear(None, set).map_err(|source| Error::Clear { set, source })?;
    }
    for set in sets {
        let left = caps::read(None, set).map_err(|source| Error::Clear { set, source })?;
        if !left.is_empty() {
            return Err(Error::Remaining { set, left });
        }
    }
    Ok(())
}
