//! The VM test: Debian 12 VMs under qemu boot real systemd with the units of `systemd/` and the
//! binaries of this build, and run `vm-tests/scenario.py` (the script the NixOS VM test runs
//! too) through `vm-tests/debian/run.py`. Root only. It needs qemu-system-x86_64, mmdebstrap and
//! mkfs.ext4 (`.ci/run` installs them); without them the harness fails, it does not skip.

use std::{path::Path, process::Command};

use xdt_testkit::{process::sibling, root_or_skip};

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
    let status = Command::new("python3")
        .arg(repo.join("vm-tests/debian/run.py"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--scenario")
        .arg(repo.join("vm-tests/scenario.py"))
        .status()
        .expect("run python3 vm-tests/debian/run.py");
    assert!(status.success(), "the VM scenario failed: {status}");
}
