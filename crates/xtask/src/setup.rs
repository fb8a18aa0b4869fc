//! What the demo and the tests need on a Debian 12 machine with rustup's cargo, installed only
//! where missing. The probe's toolchain is the one docs/building.md explains: Debian's Rust with
//! its standard library's source (rustup here cannot add rust-src), and bpf-linker 0.10.x,
//! which loads that compiler's LLVM.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::{
    apt::Apt,
    cmd::{self, Steps, cargo, privileged},
};

const BPF_LINKER: &str = "0.10.4";
const CARGO_FUZZ: &str = "0.13.2";
const NIXPKGS_FMT: &str = "1.3.0";
/// cargo-deb 3.8 builds with rustc 1.85 and later.
const CARGO_DEB: &str = "3.8.0";
/// Where the workplace keeps a fetched copy of nix-community/nixpkgs.lib (never committed):
/// nixpkgs itself is out of reach, so the NixOS module is evaluated against its lib alone.
const NIXPKGS_LIB_MIRROR: &str = "/work/.mirror/nix-community+nixpkgs.lib/repo";

/// What the installs found that the test run passes on.
#[derive(Debug, Default)]
pub struct Tools {
    /// nixpkgs' lib directory for crates/xdt-system-tests/tests/nix.rs (`XDT_NIXPKGS_LIB`).
    pub nixpkgs_lib: Option<PathBuf>,
}

pub fn install(steps: &mut Steps, tests: bool) -> Result<Tools> {
    let mut apt = Apt::default();
    steps.run("install: the probe's toolchain", || {
        probe_toolchain(&mut apt)
    })?;
    steps.run("install: the demo's tools", || {
        // ip (namespaces, veth), nsenter/unshare (util-linux), ping.
        apt.ensure("the demo", &["iproute2", "util-linux", "iputils-ping"])?;
        mount_bpffs()
    })?;
    if !tests {
        return Ok(Tools::default());
    }
    steps.run("install: the tests' tools", || test_tools(&mut apt))
}

fn probe_toolchain(apt: &mut Apt) -> Result<()> {
    apt.ensure(
        "the probe's compiler",
        &["rustc-web", "cargo-web", "rust-web-src"],
    )?;
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "rust-web-src is installed but /usr/lib/rustlib/src/rust/library/core is missing: reinstall it (`apt-get install --reinstall rust-web-src`)"
        );
    }
    cargo_install_once(&["bpf-linker"], "bpf-linker", BPF_LINKER)
}

/// `cargo install KRATE@VERSION` unless `command --version` already prints that version
/// (whatever its exit status: nixpkgs-fmt exits 1 after printing it).
fn cargo_install_once(command: &[&str], krate: &str, version: &str) -> Result<()> {
    let printed = cmd::output(
        Command::new(command[0])
            .args(&command[1..])
            .arg("--version"),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default();
    if printed.contains(version) {
        println!("{krate}: installed ({})", printed.trim());
        return Ok(());
    }
    cmd::run(cargo().args(["install", &format!("{krate}@{version}"), "--locked"]))
        .map_err(|e| anyhow::anyhow!("installing {krate} {version} from crates.io: {e}"))
}

/// What `cargo xtask deb` needs besides the probe's toolchain: cargo-deb, and lintian to check
/// the package.
pub fn packaging_tools(apt: &mut Apt) -> Result<()> {
    apt.ensure("the Debian package", &["lintian"])?;
    cargo_install_once(&["cargo", "deb"], "cargo-deb", CARGO_DEB)
}

/// The probe's toolchain and the packaging tools, for `cargo xtask deb`.
pub fn install_for_deb(steps: &mut Steps) -> Result<()> {
    install(steps, false)?;
    steps.run("install: the packaging tools", || {
        packaging_tools(&mut Apt::default())
    })
}

/// `pip install REQUIREMENT` unless `installed` says it is there.
fn pip_install_once(requirement: &str, installed: bool) -> Result<()> {
    if installed {
        println!("{requirement}: installed");
        return Ok(());
    }
    cmd::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", requirement]))
        .map_err(|e| anyhow::anyhow!("installing the Python package {requirement}: {e}"))
}

/// The probe's maps are pinned under /sys/fs/bpf.
fn mount_bpffs() -> Result<()> {
    if cmd::succeeds("mountpoint", &["-q", "/sys/fs/bpf"]) {
        return Ok(());
    }
    cmd::run(privileged("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn test_tools(apt: &mut Apt) -> Result<Tools> {
    // curl (steering tests), Chromium (the dashboard test), promtool from prometheus (the
    // /metrics test).
    apt.ensure("the tests", &["curl", "chromium", "prometheus"])?;
    // The VM test (vm-tests/): Debian 12 guests made with mmdebstrap into ext4 images and
    // booted under qemu.
    apt.ensure(
        "the VM test",
        &["qemu-system-x86", "qemu-utils", "mmdebstrap", "e2fsprogs"],
    )?;
    // The Nix checks parse and evaluate with Debian's nix-bin.
    apt.ensure("the Nix checks", &["nix-bin"])?;
    // softflowd: the reference flow exporter `xdt flows` is checked against.
    apt.ensure("the flows test", &["softflowd"])?;
    // nfdump's nfcapd (an IPFIX collector) and tshark (a decoder that flags malformed
    // messages): the agent's IPFIX export is checked against both.
    apt.ensure("the IPFIX test", &["nfdump", "tshark"])?;
    if !(cmd::succeeds("node", &["--version"]) && cmd::succeeds("npm", &["--version"])) {
        apt.ensure("the dashboard test", &["nodejs", "npm"])?;
    }
    // The dashboard test drives Chromium with playwright-core, pinned in the lock file.
    cmd::run(Command::new("npm").current_dir(cmd::repo()).args([
        "ci",
        "--prefix",
        "ui/tests",
        "--no-audit",
        "--no-fund",
    ]))
    .map_err(|e| anyhow::anyhow!("installing the dashboard test's Node packages: {e}"))?;
    // The OTLP test's receiver decodes requests with the official protobufs.
    pip_install_once(
        "opentelemetry-proto",
        cmd::succeeds(
            "python3",
            &[
                "-c",
                "import opentelemetry.proto.collector.logs.v1.logs_service_pb2",
            ],
        ),
    )?;
    cargo_install_once(&["cargo", "fuzz"], "cargo-fuzz", CARGO_FUZZ)?;
    if !cmd::succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        bail!(
            "the fuzz run needs rustup's nightly toolchain (cargo-fuzz builds with sanitizers): `rustup toolchain install nightly`"
        );
    }
    cargo_install_once(&["nixpkgs-fmt"], "nixpkgs-fmt", NIXPKGS_FMT)?;
    // The VM and container tests build and install the .deb.
    packaging_tools(apt)?;
    // The Kubernetes test: images built and pods run with podman (buildah is its build side),
    // the manifests validated against the Kubernetes schemas.
    apt.ensure("the Kubernetes test", &["podman", "buildah"])?;
    pip_install_once(
        "kubernetes-validate==1.37.0",
        cmd::output(Command::new("kubernetes-validate").arg("--version"))
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("1.37.0")),
    )?;
    Ok(Tools {
        nixpkgs_lib: nixpkgs_lib()?,
    })
}

/// nixpkgs' lib for the module evaluation: `XDT_NIXPKGS_LIB` if set, else extracted from the
/// workplace's copy into target/ when the machine has one.
fn nixpkgs_lib() -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("XDT_NIXPKGS_LIB") {
        return Ok(Some(PathBuf::from(dir)));
    }
    let git_dir = format!("--git-dir={NIXPKGS_LIB_MIRROR}");
    let Ok(rev) = cmd::output(Command::new("git").args([&git_dir, "rev-parse", "--short", "HEAD"]))
    else {
        println!("nixpkgs lib: git is missing; the module evaluation test will say it is skipped");
        return Ok(None);
    };
    if !rev.status.success() {
        println!(
            "nixpkgs lib: no copy at {NIXPKGS_LIB_MIRROR}; the module evaluation test will say it is skipped"
        );
        return Ok(None);
    }
    let rev = String::from_utf8_lossy(&rev.stdout).trim().to_owned();
    let dir = cmd::repo().join("target/xtask/nixpkgs-lib").join(&rev);
    if !dir.join("lib/default.nix").is_file() {
        std::fs::create_dir_all(&dir)?;
        let archive = cmd::output(Command::new("git").args([&git_dir, "archive", "HEAD", "lib"]))?;
        if !archive.status.success() {
            bail!(
                "`git {git_dir} archive HEAD lib` failed: {}",
                String::from_utf8_lossy(&archive.stderr)
            );
        }
        let mut tar = Command::new("tar")
            .args(["-x", "-C"])
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(tar.stdin.as_mut().expect("stdin is piped"), &archive.stdout)?;
        if !tar.wait()?.success() {
            bail!("unpacking nixpkgs' lib into {} failed", dir.display());
        }
    }
    println!("nixpkgs lib: {rev} ({})", dir.display());
    Ok(Some(dir))
}
