//! The VM test: Debian 12 VMs under qemu boot real systemd with xdt's Debian package installed
//! (`apt install ./xdt_*.deb`, built here from this build's binaries by `cargo xtask deb`), and
//! run `vm-tests/scenario.py` (the script the NixOS VM test runs too) through
//! `vm-tests/debian/run.py`; a second package with a newer version is installed over the running
//! appliance by the scenario's upgrade subtest. Root only. It needs qemu-system-x86_64,
//! mmdebstrap, mkfs.ext4 and cargo-deb (`cargo xtask setup --tests` installs them); without them
//! it fails, it does not skip.

use std::{path::Path, process::Command};

use xdt_testkit::{
    process::{sibling, xtask},
    root_or_skip,
};

/// `cargo xtask deb` for the binaries of this build, into `out` (lintian runs in `cargo xtask
/// deb`'s own check, not here).
fn package(version: &str, out: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(out).expect("create the packages' directory");
    let deb = out.join(format!("xdt_{version}_amd64.deb"));
    let status = xtask("deb")
        .args(["--no-lintian", "--deb-version", version, "--output"])
        .arg(&deb)
        .status()
        .expect("run cargo xtask deb");
    assert!(status.success(), "cargo xtask deb failed: {status}");
    assert!(deb.is_file(), "cargo xtask deb wrote no {}", deb.display());
    deb
}

#[test]
fn the_appliance_scenario_passes_under_real_systemd() {
    if !root_or_skip("the_appliance_scenario_passes_under_real_systemd") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let xdt = sibling("xdt");
    let bin_dir = xdt.parent().expect("the binaries' directory");
    for binary in ["xdt", "xdt-agent", "xdt-central", "xdt-service-health"] {
        assert!(
            bin_dir.join(binary).is_file(),
            "{binary} is not built in {}",
            bin_dir.display()
        );
    }
    let out = bin_dir.join("vm-test-debs");
    let version = env!("CARGO_PKG_VERSION");
    let deb = package(version, &out);
    // Same binaries, newer version: the upgrade is what changes, not the code.
    let upgrade = package(&format!("{version}+vmupgrade"), &out);
    let status = Command::new("python3")
        .arg(repo.join("vm-tests/debian/run.py"))
        .arg("--deb")
        .arg(&deb)
        .arg("--upgrade-deb")
        .arg(&upgrade)
        .arg("--scenario")
        .arg(repo.join("vm-tests/scenario.py"))
        .status()
        .expect("run python3 vm-tests/debian/run.py");
    assert!(status.success(), "the VM scenario failed: {status}");
}
