//! Every path xdt uses. Pins live on bpffs under `/sys/fs/bpf/xdt/<interface>/`: the XDP link
//! (`link`), the program (`prog`) and one file per map, named as the map.

use std::path::{Path, PathBuf};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdt";

#[must_use]
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

#[must_use]
pub fn link_pin(iface: &str) -> PathBuf {
    pin_dir(iface).join("link")
}

#[must_use]
pub fn program_pin(iface: &str) -> PathBuf {
    pin_dir(iface).join("prog")
}

#[must_use]
pub fn map_pin(iface: &str, map: &str) -> PathBuf {
    pin_dir(iface).join(map)
}
