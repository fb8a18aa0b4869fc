//! Attaching the probe to an interface so that it outlives the process (pinned bpf_link, program
//! and maps under /sys/fs/bpf/xdt/<interface>/), detaching it, and describing an attachment.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use serde::Serialize;
use xdt_common::config::{MODE_GENERIC, MODE_NATIVE};

use crate::{
    error::{Error, Result, is_permission},
    paths,
    probe::{ALL_MAPS, Capacity, LoadedProbe, ProbeMaps},
    rules::Rule,
    sys,
};

/// The XDP mode asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) mode if the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
}

/// A successful attach.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub interface: String,
    /// The mode that held: "native" or "generic".
    pub mode: &'static str,
    /// Why native mode was not used, when `Auto` fell back to generic.
    pub native_error: Option<String>,
    pub program_id: u32,
    pub link_id: u32,
    pub rules: usize,
    pub pin_dir: PathBuf,
}

/// Removes a half-made pin directory unless the attach completed.
struct PinDirGuard {
    dir: PathBuf,
    keep: bool,
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_pins(&self.dir);
        }
    }
}

fn remove_pins(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        fs::remove_file(entry?.path())?;
    }
    fs::remove_dir(dir)
}

/// Loads the probe with `rules`, attaches it to `iface` and pins it. On any failure nothing is
/// left behind: no pin, no attached program.
pub fn attach(iface: &str, mode: Mode, rules: &[Rule], capacity: Capacity) -> Result<Attached> {
    let ifindex = sys::ifindex(iface)?;
    sys::ensure_bpffs()?;
    let dir = paths::pin_dir(iface);
    if dir.exists() {
        return Err(Error::AlreadyAttached {
            iface: iface.to_owned(),
            dir,
        });
    }
    let mut probe = LoadedProbe::load(capacity)?;
    let mut maps = probe.maps()?;
    maps.install(rules)?;

    let program = probe.program_mut()?;
    let (link_id, held, native_error) = match mode {
        Mode::Native => (
            try_attach(program, iface, ifindex, XdpMode::Driver)?,
            MODE_NATIVE,
            None,
        ),
        Mode::Generic => (
            try_attach(program, iface, ifindex, XdpMode::Skb)?,
            MODE_GENERIC,
            None,
        ),
        Mode::Auto => match try_attach(program, iface, ifindex, XdpMode::Driver) {
            Ok(id) => (id, MODE_NATIVE, None),
            Err(Error::Attach { source, .. }) => {
                let reason = error_chain(&source);
                (
                    try_attach(program, iface, ifindex, XdpMode::Skb)?,
                    MODE_GENERIC,
                    Some(reason),
                )
            }
            Err(e) => return Err(e),
        },
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    maps.record_attachment(held, ifindex, now)?;

    fs::create_dir_all(&dir).map_err(|e| pin_error(&dir, e))?;
    let mut guard = PinDirGuard {
        dir: dir.clone(),
        keep: false,
    };
    for name in ALL_MAPS {
        let path = paths::map_pin(iface, name);
        let map = probe
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Load(format!("no map {name}").into()))?;
        map.pin(&path).map_err(|e| pin_error(&path, e))?;
    }
    let program = probe.program_mut()?;
    let program_pin = paths::program_pin(iface);
    program
        .pin(&program_pin)
        .map_err(|e| pin_error(&program_pin, e))?;
    let program_id = program.info().map_err(|e| Error::Load(Box::new(e)))?.id();
    let link = program
        .take_link(link_id)
        .map_err(|e| Error::Load(Box::new(e)))?;
    // aya falls back to a netlink attach when bpf_link_create is missing; such an attachment
    // cannot be pinned, so it would not outlive this process.
    let link = FdLink::try_from(link).map_err(|e| Error::KernelFeature {
        feature: "bpf_link for XDP (Linux 5.9), which pinning the attachment needs",
        source: Box::new(e),
    })?;
    let link_id = link.info().map_err(|e| Error::Load(Box::new(e)))?.id();
    let link_pin = paths::link_pin(iface);
    link.pin(&link_pin).map_err(|e| pin_error(&link_pin, e))?;
    guard.keep = true;
    Ok(Attached {
        interface: iface.to_owned(),
        mode: mode_name(held),
        native_error,
        program_id,
        link_id,
        rules: rules.len(),
        pin_dir: dir,
    })
}

fn try_attach(
    program: &mut aya::programs::Xdp,
    iface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<aya::programs::xdp::XdpLinkId> {
    let mode_name = if mode == XdpMode::Driver {
        "native"
    } else {
        "generic"
    };
    program.attach_to_if_index(ifindex, mode).map_err(|source| {
        if let ProgramError::SyscallError(e) = &source {
            match e.io_error.raw_os_error() {
                Some(libc::EBUSY | libc::EEXIST) => {
                    return Error::OtherProgramAttached {
                        iface: iface.to_owned(),
                        source: io::Error::from_raw_os_error(
                            e.io_error.raw_os_error().unwrap_or(0),
                        ),
                    };
                }
                Some(libc::EPERM | libc::EACCES) => {
                    return Error::NotPermitted {
                        call: e.call,
                        source: io::Error::from_raw_os_error(libc::EPERM),
                    };
                }
                _ => {}
            }
        }
        Error::Attach {
            iface: iface.to_owned(),
            mode: mode_name,
            source,
        }
    })
}

fn pin_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Pin {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[must_use]
pub fn mode_name(mode: u32) -> &'static str {
    match mode {
        MODE_NATIVE => "native",
        MODE_GENERIC => "generic",
        _ => "unknown",
    }
}

/// Detaches the probe from `iface` and removes every pin; the kernel frees the program and the
/// maps once no other process holds them.
pub fn detach(iface: &str) -> Result<()> {
    sys::require_bpffs()?;
    let dir = paths::pin_dir(iface);
    if !dir.exists() {
        return Err(Error::NotAttached {
            iface: iface.to_owned(),
            dir,
        });
    }
    let link_pin = paths::link_pin(iface);
    if link_pin.exists() {
        let link = PinnedLink::from_pin(&link_pin).map_err(|e| match e {
            aya::programs::links::LinkError::SyscallError(s) if is_permission(&s.io_error) => {
                Error::NotPermitted {
                    call: s.call,
                    source: s.io_error,
                }
            }
            e => pin_error(&link_pin, e),
        })?;
        // Dropping the last reference detaches the program.
        drop(link.unpin().map_err(|e| pin_error(&link_pin, e))?);
    }
    remove_pins(&dir).map_err(|e| pin_error(&dir, e))
}

/// Interfaces that have xdt pins.
pub fn attached_interfaces() -> Result<Vec<String>> {
    sys::require_bpffs()?;
    let mut names = Vec::new();
    match fs::read_dir(paths::PIN_ROOT) {
        Ok(entries) => {
            for entry in entries.flatten() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if is_permission(&e) => {
            return Err(Error::NotPermitted {
                call: "opendir /sys/fs/bpf/xdt",
                source: e,
            });
        }
        Err(e) => {
            return Err(Error::Read {
                path: paths::PIN_ROOT.into(),
                source: e,
            });
        }
    }
    names.sort();
    Ok(names)
}

/// One pinned map, as `xdt status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub id: u32,
    pub max_entries: u32,
    pub pin: PathBuf,
}

/// What `xdt status` reports for one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub interface: String,
    pub mode: &'static str,
    pub program_id: u32,
    pub link_id: u32,
    /// Wall-clock attach time, seconds since the Unix epoch.
    pub attached_at_unix: u64,
    pub rules: u32,
    pub labels: usize,
    pub max_rules: u32,
    pub trie_nodes_used: u32,
    pub trie_nodes: u32,
    /// Program run time and count (kernel.bpf_stats_enabled=1), else zero.
    pub run_count: u64,
    pub run_time_ns: u64,
    pub maps: Vec<MapStatus>,
}

/// The attached program's cumulative run time and run count (counted only while
/// kernel.bpf_stats_enabled=1).
pub fn program_runtime(iface: &str) -> Result<(std::time::Duration, u64)> {
    let pin = paths::program_pin(iface);
    let info = aya::programs::ProgramInfo::from_pin(&pin).map_err(|e| pin_error(&pin, e))?;
    Ok((info.run_time(), info.run_count()))
}

pub fn status(iface: &str) -> Result<Status> {
    let maps = ProbeMaps::open(iface)?;
    let config = maps.config()?;
    let generation = config.generations[config.active.min(1) as usize];
    let link_pin = paths::link_pin(iface);
    let link = PinnedLink::from_pin(&link_pin).map_err(|e| pin_error(&link_pin, e))?;
    let link = FdLink::from(link);
    let info = link.info().map_err(|e| pin_error(&link_pin, e))?;
    let program = loaded_programs()
        .filter_map(std::result::Result::ok)
        .find(|p| p.id() == info.program_id());
    let mut map_status = Vec::new();
    for name in ALL_MAPS {
        let pin = paths::map_pin(iface, name);
        let map = aya::maps::MapInfo::from_pin(&pin).map_err(|e| pin_error(&pin, e))?;
        map_status.push(MapStatus {
            name,
            id: map.id(),
            max_entries: map.max_entries(),
            pin,
        });
    }
    Ok(Status {
        interface: iface.to_owned(),
        mode: mode_name(config.attachment.mode),
        program_id: info.program_id(),
        link_id: info.id(),
        attached_at_unix: config.attachment.attached_at_ns / 1_000_000_000,
        rules: generation.rule_count,
        labels: maps.label_names()?.iter().flatten().count(),
        max_rules: config.attachment.max_rules,
        trie_nodes_used: generation.node_count,
        trie_nodes: config.attachment.trie_nodes,
        run_count: program
            .as_ref()
            .map_or(0, aya::programs::ProgramInfo::run_count),
        run_time_ns: program
            .as_ref()
            .map_or(0, |p| p.run_time().as_nanos() as u64),
        maps: map_status,
    })
}
