//! `cargo xtask`: the two commands of README's Quick start, with everything they need installed
//! on a fresh Debian 12 machine that has rustup's cargo (as root, or as a user with sudo).
//!
//! - `cargo xtask demo [XDT-DEMO-ARGS...]`: installs the probe's toolchain and what the demo
//!   runs, builds the workspace in release mode and runs `xdt demo` (as root, through sudo when
//!   needed) with the given arguments, e.g. `--duration 60`.
//! - `cargo xtask test`: installs what the tests need, then runs the whole suite: rustfmt,
//!   clippy, the bounded fuzz run, `cargo test --workspace -- --test-threads=1`, and lintian on
//!   the Debian package of the tested binaries. CI runs exactly this (`.ci/run`).
//! - `cargo xtask setup [--tests]`: only the installs.
//! - `cargo xtask deb`: the Debian package into target/debian/, checked by lintian (dist.rs).
//! - `cargo xtask images`: the package, then the agent and central container images (podman).
//! - `cargo xtask bench [--only NAME,...]`: every benchmark in one run and one report (bench.rs).
//!
//! Every step is idempotent: what is installed already is left alone, so a second run installs
//! nothing and needs no network. Any install that fails stops the run with the package and the
//! command that failed.

mod apt;
mod bench;
mod cmd;
mod dist;
mod setup;

use std::{path::PathBuf, time::Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::{Steps, cargo, privileged};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "xdt's set-up, demo and test suite")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the probe's toolchain, build everything, run `xdt demo` with these arguments.
    Demo {
        /// Arguments for `xdt demo` (`--duration SECONDS`, `--http-listen ADDR:PORT`, ...).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "XDT-DEMO-ARGS"
        )]
        args: Vec<String>,
    },
    /// Install what the tests need, then run fmt, clippy, the fuzz run, `cargo test`, lintian.
    Test {
        /// How long the fuzzer runs on the telemetry frame decoder.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        fuzz_seconds: u32,
    },
    /// Build the release binaries and the Debian package `xdt` into target/debian/.
    Deb(dist::DebArgs),
    /// The package, then the container images localhost/xdt-agent and localhost/xdt-central
    /// (podman, from a Debian base made with mmdebstrap).
    Images(dist::ImageArgs),
    /// Run every benchmark (release builds) and print one report with the machine and commit.
    Bench(bench::BenchArgs),
    /// Only install: the probe's toolchain and the demo's tools, and with --tests the tests'.
    Setup {
        #[arg(long)]
        tests: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let started = Instant::now();
    let mut steps = Steps::default();
    let outcome = match cli.task {
        Task::Demo { args } => demo(&mut steps, &args),
        Task::Test { fuzz_seconds } => test(&mut steps, fuzz_seconds),
        Task::Setup { tests } => setup::install(&mut steps, tests).map(|_| ()),
        Task::Deb(args) => setup::install_for_deb(&mut steps)
            .and_then(|()| dist::deb(&mut steps, &args).map(|_| ())),
        Task::Bench(args) => setup::install(&mut steps, false)
            .and_then(|_| bench::run(&mut steps, &args).map(|_| ())),
        Task::Images(args) => setup::install_for_deb(&mut steps)
            .and_then(|()| dist::images(&mut steps, &args).map(|_| ())),
    };
    steps.print_summary(started);
    if let Err(e) = outcome {
        eprintln!("\nxtask: {e:#}");
        std::process::exit(1);
    }
}

fn demo(steps: &mut Steps, args: &[String]) -> Result<()> {
    setup::install(steps, false)?;
    steps.run("build (release)", || {
        cmd::run(cargo().args(["build", "--release", "--workspace", "--bins"]))
    })?;
    let xdt = cmd::repo().join("target/release/xdt");
    steps.run("xdt demo", || {
        cmd::run(privileged(&xdt.to_string_lossy()).arg("demo").args(args))
    })
}

fn test(steps: &mut Steps, fuzz_seconds: u32) -> Result<()> {
    let tools = setup::install(steps, true)?;
    let repo = cmd::repo();
    steps.run("rustfmt", || {
        cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        // The probe is not a workspace member (it is no_std for another target).
        let mut probe_sources = vec![repo.join("bpf/src/main.rs")];
        probe_sources.extend(rust_files(&repo.join("bpf/src/bin"))?);
        cmd::run(
            std::process::Command::new("rustfmt")
                .args(["--edition", "2024", "--check"])
                .args(&probe_sources),
        )
    })?;
    steps.run("clippy", || {
        cmd::run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.run("fuzz (frame decoder)", || {
        cmd::run(
            cargo()
                .current_dir(repo.join("crates/xdt-wire"))
                .args(["+nightly", "fuzz", "run", "frame_decoder", "--"])
                .arg(format!("-max_total_time={fuzz_seconds}")),
        )
    })?;
    steps.run("cargo test", || {
        let mut test = cargo();
        test.args(["test", "--workspace", "--", "--test-threads=1"]);
        if let Some(lib) = &tools.nixpkgs_lib {
            test.env("XDT_NIXPKGS_LIB", lib);
        }
        if !cmd::is_root() {
            // Build as this user, run the test binaries as root: they attach XDP programs and
            // make network namespaces.
            test.env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
                cmd::sudo_runner(),
            );
        }
        cmd::run(&mut test)
    })?;
    // The package of the binaries the tests just built, checked by lintian like a release's
    // (cargo-deb strips them the same way); the release build itself is `cargo xtask deb`.
    dist::deb(
        steps,
        &dist::DebArgs {
            profile: "dev".to_owned(),
            no_build: true,
            deb_version: None,
            output: Some(repo.join("target/debian/dev")),
            no_lintian: false,
            fast: true,
        },
    )
    .map(|_| ())
}

fn rust_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
