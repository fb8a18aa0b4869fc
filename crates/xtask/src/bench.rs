//! `cargo xtask bench`: every benchmark of the workspace in one run, release builds, and one
//! report with the machine, the commit and each benchmark's tables (docs/benchmarks.md says what
//! each measures). Benchmarks are not tests: nothing here passes or fails on a figure; a
//! benchmark fails only when it cannot run or finds lost data.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, Steps, cargo};

/// The benchmarks, in the order they run: (package, bench target, needs root, what it measures).
pub const BENCHES: &[(&str, &str, bool, &str)] = &[
    (
        "xdt-datapath",
        "probe",
        true,
        "Probe cost per packet (BPF_PROG_TEST_RUN)",
    ),
    ("xdt-central", "ingest", false, "Central ingest"),
    ("xdt-central", "fleet", false, "Central under a fleet"),
    ("xdt-agent", "agent_load", true, "Agent memory and CPU"),
    (
        "xdt-agent",
        "flows",
        true,
        "Agent flow drain, expiry and IPFIX export",
    ),
    (
        "xdt-agent",
        "steer",
        true,
        "AF_XDP steering and re-injection",
    ),
];

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run only these benchmarks (bench target names: probe, ingest, fleet, agent_load, flows,
    /// steer).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    only: Vec<String>,
    /// Where the report goes (default: target/xtask/bench-<unix time>.md).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

pub fn run(steps: &mut Steps, args: &BenchArgs) -> Result<PathBuf> {
    for name in &args.only {
        if !BENCHES.iter().any(|(_, bench, _, _)| bench == name) {
            let known: Vec<_> = BENCHES.iter().map(|(_, b, _, _)| *b).collect();
            bail!("no benchmark {name:?}; there are: {}", known.join(", "));
        }
    }
    // The benchmarks start the release binaries of other packages (agent, central, xdt).
    steps.run("build (release)", || {
        cmd::run(cargo().args(["build", "--release", "--workspace", "--bins"]))
    })?;
    let mut report = header()?;
    for (package, bench, root, title) in BENCHES {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == bench) {
            continue;
        }
        let printed = steps.run(&format!("bench {bench}"), || {
            let mut command = cargo();
            command.args(["bench", "-p", package, "--bench", bench]);
            if *root && !cmd::is_root() {
                command.env(
                    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
                    cmd::sudo_runner(),
                );
            }
            tee(&mut command)
        })?;
        let as_root = if *root { " (as root)" } else { "" };
        let _ = write!(
            report,
            "\n## {title}\n\n`cargo bench -p {package} --bench {bench}`{as_root}\n\n{printed}"
        );
    }
    let path = args.report.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        cmd::repo().join(format!("target/xtask/bench-{now}.md"))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    println!("\n{report}\nxtask: the report is in {}", path.display());
    Ok(path)
}

/// The machine and the source the figures belong to.
fn header() -> Result<String> {
    let text = |program: &str, args: &[&str]| -> Result<String> {
        let out = cmd::output(std::process::Command::new(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let cpu = text("lscpu", &[])?
        .lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map_or_else(|| "unknown CPU".to_owned(), |m| m.trim().to_owned());
    let commit = text(
        "git",
        &[
            "-C",
            &cmd::repo().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )?;
    let dirty = !text(
        "git",
        &[
            "-C",
            &cmd::repo().to_string_lossy(),
            "status",
            "--porcelain",
        ],
    )?
    .is_empty();
    Ok(format!(
        "# xdt benchmarks\n\n- machine: {cpu}, {} CPUs, Linux {}\n- source: {commit}{}\n- date: {}\n",
        text("nproc", &[])?,
        text("uname", &["-r"])?,
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        text("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?,
    ))
}

/// Runs `command` with its output shown as it comes and returned; stderr goes to the terminal.
fn tee(command: &mut std::process::Command) -> Result<String> {
    let line = format!("{command:?}");
    println!("+ {line}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {line}"))?;
    let mut printed = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    for l in BufReader::new(stdout).lines() {
        let l = l.with_context(|| format!("reading the output of {line}"))?;
        println!("{l}");
        let _ = std::io::stdout().flush();
        printed.push_str(&l);
        printed.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(printed)
}
