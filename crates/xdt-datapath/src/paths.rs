//! Every path xdt uses. Pins live on bpffs under `/sys/fs/bpf/xdt/netns-<N>/<interface>/`: the
//! XDP link (`link`), the program (`prog`) and one file per map, named as the map.
//!
//! `N` is the inode of the network namespace the interface was attached in (`ls -l
//! /proc/PID/ns/net` shows it as `net:[N]`, `lsns -t net` in its NS column): an interface name
//! means something only within its namespace, so two namespaces can each attach their own
//! `eth0`, and a process sees only the probes of its own namespace. bpffs is one for the
//! machine, so the namespace has to be in the path. The inode and not the netns cookie
//! because operators can find it with the tools they have.

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdt";
/// Prefix of a namespace's directory under [`PIN_ROOT`]. With the inode's ten digits it is
/// longer than any interface name can be (15 bytes), so it never clashes with the directory of
/// an interface in the layout of xdt before namespaces ([`legacy_dir`]).
const NETNS_PREFIX: &str = "netns-";

/// A network namespace, by the inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Netns(u64);

impl Netns {
    /// The namespace of the calling thread (a thread that entered another namespace with
    /// setns(2) is in that one, while `/proc/self` would name the main thread's).
    pub fn current() -> Result<Self> {
        Self::of_file(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace of an nsfs file: `/proc/PID/ns/net`, or a namespace `ip netns add` named
    /// (`/run/netns/NAME` is a bind mount of one).
    pub fn of_file(path: &Path) -> Result<Self> {
        std::fs::metadata(path)
            .map(|m| Self(m.ino()))
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })
    }

    /// The directory of this namespace's pins.
    #[must_use]
    pub fn pin_root(self) -> PathBuf {
        Path::new(PIN_ROOT).join(format!("{NETNS_PREFIX}{}", self.0))
    }

    /// The namespace whose pins `dir` (a child of [`PIN_ROOT`]) holds.
    fn of_dir(name: &str) -> Option<Self> {
        name.strip_prefix(NETNS_PREFIX)?.parse().ok().map(Self)
    }
}

/// As `ls -l /proc/PID/ns/net` and `lsns` show it.
impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.0)
    }
}

/// The pins of the probe on one interface of one network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    dir: PathBuf,
    netns: Netns,
}

impl PinDir {
    /// The pins of `iface` in the calling thread's network namespace.
    pub fn here(iface: &str) -> Result<Self> {
        Ok(Self::of(Netns::current()?, iface))
    }

    #[must_use]
    pub fn of(netns: Netns, iface: &str) -> Self {
        Self {
            dir: netns.pin_root().join(iface),
            netns,
        }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn netns(&self) -> Netns {
        self.netns
    }

    #[must_use]
    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    #[must_use]
    pub fn program(&self) -> PathBuf {
        self.dir.join("prog")
    }

    #[must_use]
    pub fn map(&self, map: &str) -> PathBuf {
        self.dir.join(map)
    }
}

/// Where xdt before namespaced pins kept the pins of `iface`.
#[must_use]
pub fn legacy_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

/// The namespaces other than `except` that have pins for an interface named `iface`.
#[must_use]
pub fn namespaces_with(iface: &str, except: Netns) -> Vec<Netns> {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return Vec::new();
    };
    let mut found: Vec<Netns> = entries
        .flatten()
        .filter_map(|e| Netns::of_dir(&e.file_name().to_string_lossy()))
        .filter(|ns| *ns != except && PinDir::of(*ns, iface).link().exists())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_directory_is_never_an_interface_name() {
        let ns = Netns(4_026_531_840);
        let name = ns.pin_root();
        let name = name.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.len() > 15, "{name} could be an interface name");
        assert_eq!(Netns::of_dir(name), Some(ns));
        assert_eq!(Netns::of_dir("eth0"), None);
        assert_eq!(ns.to_string(), "net:[4026531840]");
        assert_eq!(
            PinDir::of(ns, "eth0").map("XDT_COUNTERS"),
            Path::new("/sys/fs/bpf/xdt/netns-4026531840/eth0/XDT_COUNTERS")
        );
    }
}
