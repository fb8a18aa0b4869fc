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
    children: Vec<(String, Child)>,
}

impl Processes {
    /// Logs go to `logs/NAME.log`. On drop each process gets SIGTERM and `grace` to exit (the
    /// agent flushes and central saves in it) before SIGKILL.
    #[must_use]
    pub fn new(logs: PathBuf, grace: Duration) -> Self {
        Self {
            logs,
            grace,
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

    /// Stops every process, newest first, calling `stopped` with the name of each once it is
    /// gone.
    pub fn stop_all(&mut self, mut stopped: impl FnMut(&str)) {
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
            stopped(&name);
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the demo prints as it tears its lab down: each process by name, newest first,
    /// once it has exited; SIGTERM within the grace time.
    #[test]
    fn stop_all_names_each_process_newest_first_once_gone() {
        let dir = std::env::temp_dir().join(crate::netns::unique_name("xdt-lab-stop-"));
        fs::create_dir_all(&dir).expect("dir");
        let mut processes = Processes::new(dir.clone(), Duration::from_secs(5));
        let mut pids = Vec::new();
        for name in ["first", "second"] {
            let pid = processes
                .spawn(name, Command::new("sleep").arg("60"))
                .expect("spawn sleep");
            pids.push(pid);
        }
        let started = Instant::now();
        let mut stopped = Vec::new();
        processes.stop_all(|name| stopped.push(name.to_owned()));
        assert_eq!(stopped, ["second", "first"]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sleep ends at SIGTERM"
        );
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "{pid} still exists"
            );
        }
        let _ = fs::remove_dir_all(dir);
    }
}
