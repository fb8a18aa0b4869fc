//! Running commands: each failure names the command line and how it ended; what needs root goes
//! through sudo when xtask is not root; every step is timed for the summary.

use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The repository's root (xtask lives in crates/xtask).
pub fn repo() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    path.canonicalize().unwrap_or(path)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// rustup's cargo proxy from PATH, in the repository (not `$CARGO`, the toolchain's own cargo,
/// which does not understand `+nightly`). `RUSTUP_TOOLCHAIN`, which the proxy may have set for
/// `cargo xtask` itself, is cleared so that `+nightly` and the repository's own choice apply.
pub fn cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(repo()).env_remove("RUSTUP_TOOLCHAIN");
    cargo
}

/// `program` as root: directly when xtask is root, through sudo otherwise (keeping PATH, so
/// tools installed under ~/.cargo/bin are found).
pub fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["--preserve-env", "env"]);
        if let Some(path) = std::env::var_os("PATH") {
            let mut assignment = std::ffi::OsString::from("PATH=");
            assignment.push(path);
            sudo.arg(assignment);
        }
        sudo.arg(program);
        sudo
    }
}

/// The test runner cargo puts in front of each test binary when xtask is not root.
pub fn sudo_runner() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("sudo --preserve-env env PATH={path}")
}

fn describe(command: &Command) -> String {
    let words: Vec<_> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect();
    words.join(" ")
}

/// Runs `command` with the terminal as its output; an error names it and how it ended.
pub fn run(command: &mut Command) -> Result<()> {
    let line = describe(command);
    println!("+ {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` quietly and returns what it printed, whatever its exit status.
pub fn output(command: &mut Command) -> Result<Output> {
    let line = describe(command);
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))
}

/// True when `program args` runs and exits 0.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The steps of one run and their wall times, printed at the end (also after a failure).
#[derive(Debug, Default)]
pub struct Steps {
    done: Vec<(String, Duration, bool)>,
}

impl Steps {
    pub fn run<T>(&mut self, name: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n== xtask: {name}");
        let started = Instant::now();
        let outcome = step().with_context(|| format!("step \"{name}\" failed"));
        self.done
            .push((name.to_owned(), started.elapsed(), outcome.is_ok()));
        outcome
    }

    pub fn print_summary(&self, started: Instant) {
        println!("\n== xtask: summary");
        for (name, took, ok) in &self.done {
            let mark = if *ok { "ok    " } else { "FAILED" };
            println!("  {mark} {:>7.1} s  {name}", took.as_secs_f64());
        }
        println!(
            "         {:>7.1} s  in all",
            started.elapsed().as_secs_f64()
        );
    }
}
