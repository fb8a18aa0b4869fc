//! Builds the XDP probe (../../bpf) for bpfel-unknown-none and hands the objects to the crate.
//!
//! The probe needs bpf-linker and a Rust compiler that either ships `core` for the target (as
//! nixpkgs' rustc does: then the probe builds like any other target) or has its standard
//! library's source, from which `-Z build-std=core` compiles it. On Debian 12
//! `cargo xtask setup` installs the second kind (Debian's rustc-web/rust-web-src 1.96) and
//! bpf-linker 0.10.4; docs/building.md has the details. Environment overrides:
//! - `XDT_PROBE_DIR`: a directory with the prebuilt `xdt` object, and the `bench-pass`,
//!   `bench-lpm`, `demo-counter` and `unverifiable` objects too when the `test-objects` feature
//!   is on (packagers, Nix): nothing is compiled.
//!
//! Without `test-objects` only the probe itself is built and embedded.
//! - `XDT_BPF_RUSTC`, `XDT_BPF_CARGO`: the compiler and cargo to use (default /usr/bin/rustc,
//!   /usr/bin/cargo; the flake's dev shell sets nixpkgs' own).
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, exit},
};

const TARGET: &str = "bpfel-unknown-none";
const PROBE: &str = "xdt";
/// Objects of the `test-objects` feature.
const TEST_OBJECTS: [&str; 4] = ["bench-pass", "bench-lpm", "demo-counter", "unverifiable"];
const SETUP: &str = "run `cargo xtask setup` (Debian 12) or see docs/building.md";

fn fail(what: &str) -> ! {
    eprintln!("\nerror: cannot build the xdt XDP probe: {what}\n");
    exit(1);
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let bpf = manifest.join("../../bpf");
    let common = manifest.join("../xdt-common");
    for path in [
        bpf.join("src"),
        bpf.join("Cargo.toml"),
        bpf.join("Cargo.lock"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rerun-if-changed={}", common.join("src").display());
    for var in ["XDT_PROBE_DIR", "XDT_BPF_RUSTC", "XDT_BPF_CARGO"] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let mut wanted = vec![PROBE];
    if env::var_os("CARGO_FEATURE_TEST_OBJECTS").is_some() {
        wanted.extend(TEST_OBJECTS);
    }
    let objects = match env::var_os("XDT_PROBE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build_probe(&bpf, &wanted),
    };
    for name in wanted {
        let from = objects.join(name);
        if let Err(e) = std::fs::copy(&from, out.join(format!("{name}.bpf.o"))) {
            fail(&format!("probe object {} is missing: {e}", from.display()));
        }
    }
}

fn build_probe(bpf: &Path, objects: &[&str]) -> PathBuf {
    let rustc = env::var("XDT_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = env::var("XDT_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let print = |what: &[&str]| match Command::new(&rustc).arg("--print").args(what).output() {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => fail(&format!(
            "no Rust compiler at {rustc} (it needs one that ships core for {TARGET} or has the \
             standard library's source): {SETUP}"
        )),
    };
    // A compiler that ships `core` for the target needs nothing more; otherwise build-std
    // compiles it from the source in the sysroot (rust-src).
    let ships_core =
        std::fs::read_dir(print(&["target-libdir", "--target", TARGET])).is_ok_and(|dir| {
            dir.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        });
    if !ships_core
        && !print(&["sysroot"])
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    {
        fail(&format!(
            "{rustc} ships no core for {TARGET} and has no standard library source (rust-src), \
             from which -Z build-std=core would build it: {SETUP}"
        ));
    }
    if Command::new(&cargo).arg("--version").output().is_err() {
        fail(&format!("no cargo at {cargo}: {SETUP}"));
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        fail(&format!(
            "bpf-linker is not on PATH: `cargo install bpf-linker@0.10.4 --locked`, or {SETUP}"
        ));
    }
    // bpf-linker 0.10 loads the LLVM that the compiler was built with.
    let llvm_major = Command::new(&rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("LLVM version: ")
                    .map(|v| v.split('.').next().unwrap_or("").to_owned())
            })
        })
        .unwrap_or_default();
    let mut library_path = env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let debian_llvm = format!("/usr/lib/llvm-{llvm_major}/lib");
    if Path::new(&debian_llvm).is_dir() {
        library_path = format!("{debian_llvm}:{library_path}");
    }

    let mut command = Command::new(&cargo);
    // The outer cargo's settings (compiler wrappers, flags, target dir) are for the host build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_NET_OFFLINE")
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_HTTP_");
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST")) {
            command.env_remove(&key);
        }
    }
    command.args(["build", "--release", "--target", TARGET]);
    for object in objects {
        command.args(["--bin", object]);
    }
    if !ships_core {
        command.args(["-Z", "build-std=core"]);
    }
    // The target is tier 3: stable compilers build for it (and build-std) with RUSTC_BOOTSTRAP.
    let status = command
        .current_dir(bpf)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("LD_LIBRARY_PATH", library_path)
        .status();
    match status {
        Ok(s) if s.success() => bpf.join("target").join(TARGET).join("release"),
        Ok(s) => fail(&format!(
            "`cargo build` of {} failed ({s}); its output is above",
            bpf.display()
        )),
        Err(e) => fail(&format!("cannot run {cargo}: {e}")),
    }
}
