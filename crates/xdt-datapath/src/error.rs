//! The datapath's errors: each says what failed and on what, and keeps the failing call's error.

use std::{io, path::PathBuf};

use crate::{
    paths::Netns,
    rules::{CompileError, RulesError},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller lacks the privileges a BPF or netlink call needs.
    #[error("{call} was refused: xdt needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")]
    NotPermitted {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    /// No network interface has that name.
    #[error("unknown interface {iface:?}")]
    UnknownInterface { iface: String },
    /// xdt's pins for the interface already exist.
    #[error("xdt is already attached to {iface} (pins in {}); run `xdt detach --interface {iface}` first", dir.display())]
    AlreadyAttached { iface: String, dir: PathBuf },
    /// Another XDP program holds the interface.
    #[error(
        "another XDP program is already attached to {iface}; remove it first (`ip link set dev {iface} xdp off`)"
    )]
    OtherProgramAttached {
        iface: String,
        #[source]
        source: io::Error,
    },
    /// No pins of xdt for the interface.
    #[error("xdt is not attached to {iface} (no pins in {}); run `xdt attach --interface {iface}`", dir.display())]
    NotAttached { iface: String, dir: PathBuf },
    /// Pins of the interface exist only in other network namespaces.
    #[error(
        "xdt is not attached to {iface} in this network namespace ({here}); an interface of that \
         name in {} has it: run xdt in that namespace (nsenter --net=/proc/PID/ns/net)",
        list(there)
    )]
    AttachedElsewhere {
        iface: String,
        here: Netns,
        there: Vec<Netns>,
    },
    /// Pins whose interface is gone (the pinned link has nothing attached any more).
    #[error(
        "the pins of {iface} in {} are of an interface that is gone (index {attached} when \
         attached, {} now): `xdt detach --interface {iface}` removes them",
        dir.display(),
        now.map_or_else(|| "no such interface".to_owned(), |i| format!("index {i}"))
    )]
    InterfaceGone {
        iface: String,
        dir: PathBuf,
        attached: u32,
        now: Option<u32>,
    },
    /// Pins in the layout of xdt before network namespaces were part of the path.
    #[error(
        "the pins of {iface} are in {}, where an older xdt kept them without their network \
         namespace; detach (`xdt detach --interface {iface}`) and attach again",
        dir.display()
    )]
    LegacyPins { iface: String, dir: PathBuf },
    /// bpffs is not mounted and could not be mounted.
    #[error(
        "bpffs is not mounted at {path} and mounting it failed; mount it with `mount -t bpf bpf {path}`"
    )]
    BpffsMount {
        path: &'static str,
        #[source]
        source: nix::Error,
    },
    /// bpffs is not mounted, so no probe can be attached.
    #[error(
        "bpffs is not mounted at {path}, so xdt is not attached anywhere (`xdt attach` mounts it)"
    )]
    BpffsMissing { path: &'static str },
    /// The running kernel lacks something the probe needs.
    #[error("the kernel lacks {feature}")]
    KernelFeature {
        feature: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Loading the probe's object or program failed.
    #[error("loading the XDP probe failed")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The kernel refused the attach in that mode.
    #[error("attaching to {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Creating, reading or removing a pin failed.
    #[error("pin {} failed", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map operation failed.
    #[error("map {map}: {what} failed")]
    Map {
        map: &'static str,
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The pinned maps were made by another version of the probe.
    #[error(
        "the pinned maps of {iface} have ABI version {found}, this xdt speaks {expected}; detach and attach again"
    )]
    AbiMismatch {
        iface: String,
        found: u32,
        expected: u32,
    },
    /// A rules file that does not parse.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// A rule set the probe cannot hold.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// More distinct labels than the label table has ids.
    #[error(
        "label table full: {count} labels, at most {capacity} (labels keep their id while attached; detach to reset)"
    )]
    LabelTableFull { count: usize, capacity: u32 },
    /// Reading a file failed.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--flows` asks for more than a flow table may hold.
    #[error("a flow table of {entries} entries is too large: at most {max} (`--flows`)")]
    FlowTableTooLarge { entries: u32, max: u32 },
    /// The probe was attached without flow tables.
    #[error(
        "flows are off on {iface}: the probe was attached without a flow table; detach and \
         attach again with `xdt attach --interface {iface} --flows N` (N flows per table)"
    )]
    FlowsOff { iface: String },
    /// Reading a flow table failed.
    #[error("reading the flow table {map} failed")]
    FlowRead {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    /// An RX queue beyond what the probe's socket map holds.
    #[error("RX queue {queue} cannot be steered: the probe holds sockets for queues 0-{}", max - 1)]
    TooManyQueues { queue: u32, max: u32 },
    /// A system call outside aya failed.
    #[error("{call} failed")]
    Sys {
        call: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an aya map error, naming the map and the operation, and spotting missing privileges.
pub(crate) fn map_error(
    map: &'static str,
    what: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| {
        if let aya::maps::MapError::SyscallError(e) = &source
            && is_permission(&e.io_error)
        {
            return Error::NotPermitted {
                call: e.call,
                source: io::Error::from_raw_os_error(libc::EPERM),
            };
        }
        Error::Map { map, what, source }
    }
}

pub(crate) fn pin_error(
    path: &std::path::Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Pin {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

fn list(namespaces: &[Netns]) -> String {
    let names: Vec<String> = namespaces.iter().map(ToString::to_string).collect();
    names.join(", ")
}

pub(crate) fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}
