//! The workspace's own binaries as processes under test: finding them, free loopback ports for
//! them, and a guard that kills and reaps a process on drop (also when the test panics).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A binary of another package of the workspace, next to the directory of the running test or
/// benchmark (`target/<profile>/`): `cargo test --workspace` builds them there, benchmarks need
/// `cargo build --release --workspace` first.
#[must_use]
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    xdt_lab::binary(dir, name).unwrap_or_else(|e| panic!("{e}"))
}

/// The `xdt` command of this build (a [`sibling`]), for tests that run it as a program.
#[must_use]
pub fn xdt() -> &'static str {
    static XDT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    XDT.get_or_init(|| {
        sibling("xdt")
            .to_str()
            .expect("the target directory's path is UTF-8")
            .to_owned()
    })
}

/// `cargo xtask TASK --no-build --profile P`, run in the repository, for the binaries of this
/// build (the test's siblings, profile P): xtask packages what the tests just built.
#[must_use]
pub fn xtask(task: &str) -> Command {
    let bin_dir = sibling("xdt")
        .parent()
        .expect("the binaries' directory")
        .to_owned();
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile directory in {}", bin_dir.display()),
    };
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            task,
            "--no-build",
        ])
        .args(["--profile", profile]);
    cargo
}

/// A loopback port that was free a moment ago.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// Spawns `command` with stdin closed.
    pub fn start(command: &mut Command) -> Self {
        Self(command.stdin(Stdio::null()).spawn().expect("start process"))
    }

    #[must_use]
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then waits up to 10 s for it to exit.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id().cast_signed());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) {
            assert!(Instant::now() < deadline, "process did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(thread id, CapEff, CapPrm)` of every thread of process `pid`, from
/// `/proc/PID/task/*/status` (capabilities are per thread).
#[must_use]
pub fn thread_capabilities(pid: u32) -> Vec<(u32, u64, u64)> {
    let mut threads = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .expect("capability field")
        };
        let tid = task.file_name().to_string_lossy().parse().expect("tid");
        threads.push((tid, field("CapEff:"), field("CapPrm:")));
    }
    threads
}
