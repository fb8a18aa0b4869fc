//! Named network namespaces (`ip netns`), deleted on drop with every interface in them, and
//! veth pairs between them.

use std::{
    fs::File,
    process::{Command, Output},
};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// Runs `ip ARGS`; an error carries the command line and ip's message.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Runs `command` to completion; a failure to start or a non-zero exit is an error naming it.
pub(crate) fn run(command: &mut Command) -> Result<Output> {
    let line = format!("{command:?}").replace('"', "");
    let out = command.output().map_err(|source| Error::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// A name unique to this process and call, short enough for an interface (15 bytes) when the
/// prefix has at most five.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    format!("{prefix}{pid}{n}")
}

/// A network namespace made by this process, deleted (with the interfaces in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up; an existing one of that name is refused,
    /// never taken over (it belongs to someone else, who would lose it on our drop).
    pub fn new(name: &str) -> Result<Self> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            return Err(Error::NamespaceExists(name.to_owned()));
        }
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `program` to be run in the namespace's network stack only (mounts stay the caller's, so
    /// /sys/fs/bpf is the host's bpffs), like `nsenter --net`. nsenter execs the program, so
    /// the child's pid is the program's own.
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")]))
        .map(drop)
    }

    /// Runs `f` on a thread whose network namespace is this one (the caller's thread keeps its
    /// own).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let path = self.path();
                let file = File::open(&path).map_err(|source| Error::Io {
                    what: "open namespace",
                    path: path.into(),
                    source,
                })?;
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Setns(self.name.clone(), e))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::ThreadPanicked(self.name.clone())))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair from `a` to `b`, each in a namespace (`None`: the caller's), with `queues` TX and
/// RX queues on each end, down and unconfigured. It goes away with either namespace.
pub fn veth(a: (Option<&Netns>, &str), b: (Option<&Netns>, &str), queues: u32) -> Result<()> {
    let q = queues.to_string();
    let mut args = vec!["link", "add", a.1];
    if let Some(ns) = a.0 {
        args.extend(["netns", ns.name()]);
    }
    args.extend([
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b.1,
    ]);
    if let Some(ns) = b.0 {
        args.extend(["netns", ns.name()]);
    }
    args.extend(["numtxqueues", &q, "numrxqueues", &q]);
    ip(&args).map(drop)
}
