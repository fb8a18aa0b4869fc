//! The VM test: Debian 12 VMs under qemu boot real systemd with xdt's Debian package installed
//! (`apt install ./xdt_*.deb`, built here from this build's binaries by `cargo xtask deb`), and
//! run `vm-tests/scenario.py` (the script the NixOS VM test runs too) through
//! `vm-tests/debian/run.py`; a second package with a newer version is installed over the running
//! appliance by the scenario's upgrade subtest. Root only. It needs qemu-system-x86_64,
//! mmdebstrap, mkfs.ext4 and cargo-deb (`cargo xtask setup --tests` installs them); without them
//! it fails, it does not skip.

use std::{path::Path, process::Command};

use xdt_testkit::{process::sibling, root_or_skip};

/// `cargo xtask deb` for the binaries of this build (the dev profile), into `out`.
fn package(repo: &Path, profile: &str, version: &str, out: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(out).expect("create the packages' directory");
    let deb = out.join(format!("xdt_{version}_amd64.deb"));
    // The xtask is run through cargo, which only builds xtask itself here: the binaries are
    // this test's siblings (--no-build). lintian runs in `cargo xtask deb`'s own check, not here.
    let status = Command::new(env!("CARGO"))
        .current_dir(repo)
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "deb",
            "--no-build",
            "--no-lintian",
        ])
        .args(["--profile", profile, "--deb-version", version, "--output"])
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
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile directory in {}", bin_dir.display()),
    };
    let out = bin_dir.join("vm-test-debs");
    let version = env!("CARGO_PKG_VERSION");
    let deb = package(&repo, profile, version, &out);
    // Same binaries, newer version: the upgrade is what changes, not the code.
    let upgrade = package(&repo, profile, &format!("{version}+vmupgrade"), &out);
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
