//! `cargo xtask deb`: the Debian package `xdt` from this workspace. The four binaries are built,
//! each writes its own man pages and shell completions from its clap definition
//! (`XDT_GENERATE_DOCS`, crates/xdt-clidoc), and cargo-deb packages them with the units of
//! systemd/ and the rest that crates/xdt-cli/Cargo.toml's `[package.metadata.deb]` lists, into
//! target/debian/ by default. lintian then checks the package: a tag that is neither fixed nor
//! overridden (with its reason) in crates/xdt-cli/debian/lintian-overrides fails the build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, Steps, cargo};

/// The binaries the package ships, each with its own man pages and completions.
pub const BINARIES: [&str; 4] = ["xdt", "xdt-agent", "xdt-central", "xdt-service-health"];
/// The crate whose Cargo.toml holds `[package.metadata.deb]`.
const DEB_CRATE: &str = "xdt-cli";

/// What `cargo xtask deb` was asked for.
#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// Cargo profile of the binaries: release, or dev for the VM test's quicker builds.
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Package the binaries already built with --profile instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Package version instead of the workspace's (the VM test's upgrade needs a newer one).
    #[arg(long, value_name = "VERSION")]
    pub deb_version: Option<String>,
    /// Directory (or file name) of the package [default: target/debian/].
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Skip lintian (it takes a while; `cargo xtask test` runs it once for the release build).
    #[arg(long)]
    pub no_lintian: bool,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| cmd::repo().join("target"), PathBuf::from)
}

/// Where a profile's binaries land (`dev` builds into target/debug).
fn profile_dir(profile: &str) -> PathBuf {
    target_dir().join(if profile == "dev" { "debug" } else { profile })
}

/// Builds (unless --no-build), generates the pages and completions, packages; returns the
/// package's path.
pub fn deb(steps: &mut Steps, args: &DebArgs) -> Result<PathBuf> {
    if !args.no_build {
        steps.run(&format!("build ({})", args.profile), || {
            let mut build = cargo();
            build.args(["build", "--profile", &args.profile, "--bins"]);
            for package in ["xdt-cli", "xdt-agent", "xdt-central", "xdt-service-health"] {
                build.args(["--package", package]);
            }
            cmd::run(&mut build)
        })?;
    }
    let bins = profile_dir(&args.profile);
    steps.run("man pages and completions", || generate_docs(&bins))?;
    let deb = steps.run("cargo deb", || package(args))?;
    if !args.no_lintian {
        steps.run("lintian", || lintian(&deb))?;
    }
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Each binary writes its man pages and completions into PROFILE_DIR/xdt-docs, where
/// `[package.metadata.deb]` picks them up.
fn generate_docs(bins: &Path) -> Result<()> {
    let docs = bins.join("xdt-docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs)
            .with_context(|| format!("cannot remove the old {}", docs.display()))?;
    }
    for binary in BINARIES {
        let path = bins.join(binary);
        if !path.is_file() {
            bail!("{} is not built", path.display());
        }
        let out = cmd::output(Command::new(&path).env("XDT_GENERATE_DOCS", &docs))?;
        if !out.status.success() {
            bail!(
                "{} did not write its man pages and completions ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let written = String::from_utf8_lossy(&out.stdout).lines().count();
        println!("{binary}: {written} files in {}", docs.display());
    }
    // Debian ships man pages and the changelog compressed; -n keeps the package reproducible.
    std::fs::copy(
        cmd::repo().join("crates/xdt-cli/debian/changelog"),
        docs.join("changelog"),
    )
    .context("cannot copy crates/xdt-cli/debian/changelog")?;
    let mut gzip = Command::new("gzip");
    gzip.args(["-9", "-n", "-f"]).arg(docs.join("changelog"));
    for page in std::fs::read_dir(docs.join("man"))? {
        gzip.arg(page?.path());
    }
    cmd::run(&mut gzip)
}

fn package(args: &DebArgs) -> Result<PathBuf> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| target_dir().join("debian"));
    if output.extension().is_none() {
        std::fs::create_dir_all(&output)
            .with_context(|| format!("cannot create {}", output.display()))?;
    }
    let mut deb = cargo();
    deb.args(["deb", "--package", DEB_CRATE, "--no-build", "--profile"])
        .arg(&args.profile)
        .arg("--output")
        .arg(&output);
    if let Some(version) = &args.deb_version {
        deb.args(["--deb-version", version]);
    }
    let line = format!("{deb:?}");
    println!("+ {line}");
    let out = deb
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!("cannot start {line}: is cargo-deb installed (`cargo xtask setup --tests`)?")
        })?;
    if !out.status.success() {
        bail!("{line} failed ({})", out.status);
    }
    // cargo-deb prints the package's path last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .map(|l| PathBuf::from(l.trim()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb printed no package path: {stdout}"))?;
    Ok(path)
}

/// lintian with every tag shown (info and pedantic too); any tag not overridden fails.
fn lintian(deb: &Path) -> Result<()> {
    let out = cmd::output(
        Command::new("lintian")
            .args([
                "--info",
                "--display-info",
                "--pedantic",
                "--fail-on",
                "info,pedantic,warning,error",
            ])
            .arg(deb),
    )
    .context("cannot run lintian: is it installed (`cargo xtask setup --tests`)?")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    print!("{printed}");
    if !out.status.success() {
        bail!(
            "lintian found tags in {} ({}): fix them, or override each with its reason in crates/xdt-cli/debian/lintian-overrides",
            deb.display(),
            out.status
        );
    }
    Ok(())
}
