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
    /// Skip lintian (the tests that only install the package leave it to `cargo xtask deb`).
    #[arg(long)]
    pub no_lintian: bool,
    /// Lighter compression (a bigger package made in a fraction of the time), for tests.
    #[arg(long)]
    pub fast: bool,
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
    if args.fast {
        deb.arg("--fast");
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

/// What `cargo xtask images` was asked for.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub deb: DebArgs,
    /// Tag of the images localhost/xdt-agent and localhost/xdt-central [default: the package's
    /// version].
    #[arg(long)]
    pub tag: Option<String>,
}

/// The Debian 12 base of the images, from this machine's apt sources (no registry is needed):
/// curl is there for podman, which runs a pod's httpGet probes as curl inside the container.
const BASE_MMDEBSTRAP: &[&str] = &[
    "--variant=apt",
    "--mode=root",
    "--format=tar",
    "--include=curl",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "bookworm",
];

/// podman with the settings that let its containers start on these machines, written to
/// target/containers/containers.conf and named by `CONTAINERS_CONF` (the tests use the same
/// file): runc (crun 1.8 refuses cgroup v1 hierarchies with cgroup2 mounted beside them,
/// "cgroups in hybrid mode not supported", which these machines have) through
/// crates/xtask/containers/runc-clamp, which lowers the rlimits podman asks for to what root
/// here may set (it lacks CAP_SYS_RESOURCE).
pub fn podman_conf() -> Result<PathBuf> {
    let dir = target_dir().join("containers");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("containers.conf");
    std::fs::write(
        &path,
        format!(
            "# Written by cargo xtask (crates/xtask/src/dist.rs, podman_conf).\n\
             [engine]\nruntime = \"runc-clamp\"\n\n\
             [engine.runtimes]\nrunc-clamp = [\"{}\"]\n",
            runtime().display()
        ),
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn runtime() -> PathBuf {
    cmd::repo().join("crates/xtask/containers/runc-clamp")
}

fn podman(conf: &Path) -> Command {
    let mut podman = Command::new("podman");
    podman.env("CONTAINERS_CONF", conf);
    podman
}

/// A stable name for a recipe (FNV-1a: the key only has to change when the recipe does).
fn recipe_key(recipe: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in recipe.join("\0").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The apt sources the base is made from (as the VM test's base).
fn apt_sources() -> Result<PathBuf> {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .context("no Debian apt sources on this machine")
}

/// The base image localhost/xdt-base:KEY: made with mmdebstrap once per recipe (the tarball is
/// kept in target/containers/), imported into podman when missing.
pub fn container_base(conf: &Path) -> Result<String> {
    let key = recipe_key(BASE_MMDEBSTRAP);
    let image = format!("localhost/xdt-base:{key}");
    let dir = target_dir().join("containers");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tar = dir.join(format!("base-{key}.tar"));
    if !tar.is_file() {
        let partial = dir.join(format!("base-{key}.tar.partial"));
        cmd::run(
            Command::new("mmdebstrap")
                .args(BASE_MMDEBSTRAP)
                .arg(&partial)
                .arg(apt_sources()?),
        )?;
        std::fs::rename(&partial, &tar)?;
    }
    let exists = cmd::output(podman(conf).args(["image", "exists", &image]))?;
    if !exists.status.success() {
        cmd::run(podman(conf).arg("import").arg(&tar).arg(&image))?;
    }
    Ok(image)
}

/// The package, its base, then both images from docs/kubernetes/Containerfile; returns their
/// names.
pub fn images(steps: &mut Steps, args: &ImageArgs) -> Result<Vec<String>> {
    let deb = deb(steps, &args.deb)?;
    let conf = podman_conf()?;
    println!("podman config: {}", conf.display());
    let base = steps.run("container base (mmdebstrap)", || container_base(&conf))?;
    println!("base: {base}");
    let tag = match &args.tag {
        Some(tag) => tag.clone(),
        None => deb_version(&deb)?,
    };
    steps.run("podman build", || {
        let context = target_dir().join("containers/context");
        std::fs::create_dir_all(&context)?;
        std::fs::copy(&deb, context.join("xdt.deb"))
            .with_context(|| format!("cannot copy {}", deb.display()))?;
        let mut built = Vec::new();
        for target in ["agent", "central"] {
            let image = format!("localhost/xdt-{target}:{tag}");
            cmd::run(
                podman(&conf)
                    .args(["build", "--network", "none", "--runtime"])
                    .arg(runtime())
                    .args(["--layers=false", "--target", target])
                    .arg("--build-arg")
                    .arg(format!("BASE={base}"))
                    .args(["--tag", &image, "--file"])
                    .arg(cmd::repo().join("docs/kubernetes/Containerfile"))
                    .arg(&context),
            )?;
            built.push(image);
        }
        std::fs::remove_file(context.join("xdt.deb"))?;
        // The shared stage of both builds stays behind untagged: only this file's go.
        cmd::run(podman(&conf).args([
            "image",
            "prune",
            "--force",
            "--filter",
            "dangling=true",
            "--filter",
            "label=org.example.xdt.containerfile",
        ]))?;
        for image in &built {
            println!("image: {image}");
        }
        Ok(built)
    })
}

/// The Version: field of a package.
fn deb_version(deb: &Path) -> Result<String> {
    let out = cmd::output(
        Command::new("dpkg-deb")
            .args(["--field"])
            .arg(deb)
            .arg("Version"),
    )?;
    if !out.status.success() {
        bail!("dpkg-deb --field {} Version failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
