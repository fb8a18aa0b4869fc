//! Attaching the probe to an interface so that it outlives the process (pinned bpf_link, program
//! and maps under the interface's [`PinDir`]), detaching it, and listing the attached
//! interfaces of a network namespace.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;
use xdt_common::config::{MODE_GENERIC, MODE_NATIVE};

use crate::{
    attached::not_attached,
    error::{Error, Result, is_permission, pin_error},
    paths::{self, Netns, PinDir},
    probe::{ALL_MAPS, Capacity, LoadedProbe},
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

/// Removes the pins in `dir`, `dir`, and its namespace's directory if that is empty now.
fn remove_pins(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        fs::remove_file(entry?.path())?;
    }
    fs::remove_dir(dir)?;
    if let Some(parent) = dir.parent()
        && parent != Path::new(paths::PIN_ROOT)
    {
        // Fails while other interfaces of the namespace are attached, as it should.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Loads the probe with `rules`, attaches it to `iface` and pins it. On any failure nothing is
/// left behind: no pin, no attached program.
pub fn attach(iface: &str, mode: Mode, rules: &[Rule], capacity: Capacity) -> Result<Attached> {
    let ifindex = sys::ifindex(iface)?;
    sys::ensure_bpffs()?;
    let pins = PinDir::here(iface)?;
    let dir = pins.path().to_owned();
    if dir.exists() {
        return Err(Error::AlreadyAttached {
            iface: iface.to_owned(),
            dir,
        });
    }
    let legacy = paths::legacy_dir(iface);
    if legacy.join("link").exists() {
        return Err(Error::LegacyPins {
            iface: iface.to_owned(),
            dir: legacy,
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
                let reason = xdt_systemd::logging::error_chain(&source);
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
        let path = pins.map(name);
        let map = probe
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Load(format!("no map {name}").into()))?;
        map.pin(&path).map_err(|e| pin_error(&path, e))?;
    }
    let program = probe.program_mut()?;
    let program_pin = pins.program();
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
    let link_pin = pins.link();
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

#[must_use]
pub fn mode_name(mode: u32) -> &'static str {
    match mode {
        MODE_NATIVE => "native",
        MODE_GENERIC => "generic",
        _ => "unknown",
    }
}

/// Detaches the probe from `iface` (of the caller's network namespace) and removes every pin;
/// the kernel frees the program and the maps once no other process holds them. Pins in the
/// layout of an older xdt (not keyed by namespace) are detached too.
pub fn detach(iface: &str) -> Result<()> {
    sys::require_bpffs()?;
    let pins = PinDir::here(iface)?;
    let link_pin = if pins.path().exists() {
        pins.link()
    } else if paths::legacy_dir(iface).join("link").exists() {
        paths::legacy_dir(iface).join("link")
    } else {
        return Err(not_attached(iface, &pins));
    };
    let dir = link_pin
        .parent()
        .map_or_else(|| pins.path().to_owned(), Path::to_owned);
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

/// Interfaces of the caller's network namespace that have xdt pins.
pub fn attached_interfaces() -> Result<Vec<String>> {
    sys::require_bpffs()?;
    let root = Netns::current()?.pin_root();
    let mut names = Vec::new();
    match fs::read_dir(&root) {
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
                path: root,
                source: e,
            });
        }
    }
    names.sort();
    Ok(names)
}
