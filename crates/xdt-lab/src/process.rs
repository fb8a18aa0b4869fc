//! The lab's processes: started with their output in a log file each, watched for an early exit,
//! and stopped on drop (SIGTERM, then SIGKILL after the grace time), newest first.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, Result};

/// `dir/name` if it is a file: one of xdt's binaries, which cargo builds side by side.
pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            name: name.to_owned(),
            dir: dir.to_owned(),
        })
    }
}

#[derive(Debug)]
pub struct Processes {
    logs: PathBuf,
    grace: Duration,
    report: bool,
    children: Vec<(String, Child)>,
}

impl Processes {
    /// Logs go to `logs/NAME.log`. On drop each process gets SIGTERM and `grace` to exit (the
    /// agent flushes and central saves in it) before SIGKILL; `report` prints each stop.
    #[must_use]
    pub fn new(logs: PathBuf, grace: Duration, report: bool) -> Self {
        Self {
            logs,
            grace,
            report,
            children: Vec::new(),
        }
    }

    /// Starts `command` as `name` with stdin closed and stdout and stderr in `NAME.log`; its pid.
    pub fn spawn(&mut self, name: &str, command: &mut Command) -> Result<u32> {
        let path = self.log_path(name);
        let io = |source| Error::Io {
            what: "create log",
            path: path.clone(),
            source,
        };
        let log = fs::File::create(&path).map_err(io)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: command.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    #[must_use]
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// What `name` has written so far (empty if nothing).
    #[must_use]
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// The first process that has exited, with its status and the last lines of its log.
    pub fn exited(&mut self) -> Option<String> {
        let (name, status) = self
            .children
            .iter_mut()
            .find_map(|(name, child)| Some((name.clone(), child.try_wait().ok()??)))?;
        let log = self.log(&name);
        let mut tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.reverse();
        Some(format!(
            "{name} exited ({status}):\n  {}",
            tail.join("\n  ")
        ))
    }

    /// Stops every process, newest first.
    pub fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
            if !self.grace.is_zero() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + self.grace;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            if self.report {
                println!("stopped {name}");
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}
