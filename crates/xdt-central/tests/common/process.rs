//! A real `xdt-central` process on loopback ports, started, watched and reaped: shared by the
//! integration tests (through `common`) and the benchmarks (`#[path]`), which include this file
//! on its own.

#![allow(
    dead_code,
    reason = "each test binary and benchmark uses a different part of this file"
)]

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

pub const TOKEN: &str = "test-token-5f1c";
/// Longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

/// A real `xdt-central` process on loopback ports; killed and reaped on drop.
pub struct CentralProcess {
    pub child: std::process::Child,
    pub telemetry: SocketAddr,
    pub http: SocketAddr,
    /// Its stderr lines, read by a thread.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl CentralProcess {
    /// Starts the binary with `args` (after `--token-file`, the loopback listeners and
    /// `--state-dir` when given) and waits (bounded) for its "listening" line. `nofile` is
    /// the child's RLIMIT_NOFILE (soft and hard), as the unit's `LimitNOFILE=` sets it.
    pub fn start(dir: &Path, state_dir: Option<&Path>, args: &[&str], nofile: Option<u64>) -> Self {
        Self::start_with_env(dir, state_dir, args, nofile, &[])
    }

    /// [`CentralProcess::start`] with environment variables set.
    pub fn start_with_env(
        dir: &Path,
        state_dir: Option<&Path>,
        args: &[&str],
        nofile: Option<u64>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_xdt-central"));
        command
            .arg("--token-file")
            .arg(&token)
            .args([
                "--telemetry-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env_remove("XDT_TOKEN_FILE")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(state_dir) = state_dir {
            command.arg("--state-dir").arg(state_dir);
        }
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        if let Some(nofile) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        nofile,
                        nofile,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command.spawn().expect("start xdt-central");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("XDT_TEST_LOG").is_some() {
                    eprintln!("central: {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let listening = loop {
            let Ok(line) = lines.recv_timeout(STEP) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening' line; stderr: {seen:#?}");
            };
            if line.contains("xdt-central listening") {
                break line;
            }
            seen.push(line);
        };
        let field = |key: &str| -> SocketAddr {
            listening
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {listening:?}"))
        };
        let (telemetry, http) = (field("telemetry"), field("http"));
        Self {
            child,
            telemetry,
            http,
            lines,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// SIGTERM (central saves its state and stops), and waits for the process to be gone.
    pub fn terminate(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Waits (bounded) for a stderr line containing every one of `needles`.
    pub fn wait_for_line(&self, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let left = STEP.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needles:?} from central: {e}"),
            }
        }
    }
}

impl Drop for CentralProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
