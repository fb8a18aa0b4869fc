//! Network namespaces and veth pairs for root tests. Every object removes itself on drop, also
//! when the test panics, so a failed test leaves nothing behind.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Output},
};

use nix::sched::{CloneFlags, setns};

/// Runs a command and panics with its output if it fails.
#[expect(
    clippy::must_use_candidate,
    reason = "callers run it for its effect and may ignore the output"
)]
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with the interfaces in it) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let name = crate::unique_name(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS...`
    #[expect(
        clippy::must_use_candidate,
        reason = "callers run it for its effect and may ignore the output"
    )]
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command in the namespace's network stack only (mounts stay the caller's, so
    /// /sys/fs/bpf is the host's bpffs), like `nsenter --net`.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let out = self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "sysctl {key}={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread whose network namespace is this one.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(self.path()).expect("open netns");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
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

/// A veth pair from interface `a` in namespace `ns_a` to `b` in `ns_b`, with `queues` TX and
/// RX queues on each end, down and unconfigured.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: u32) {
    let q = queues.to_string();
    run(
        "ip",
        &[
            "link",
            "add",
            a,
            "netns",
            &ns_a.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &ns_b.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ],
    );
}

/// A veth pair from interface `a` in namespace `ns_a` to `b` in `ns_b`, both up, quiet: IPv6
/// and ARP off on `a` (the sending side) so that only test frames reach `b`.
pub fn quiet_veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: u32) {
    veth(ns_a, a, ns_b, b, queues);
    ns_a.sysctl(&format!("net.ipv6.conf.{a}.disable_ipv6"), "1");
    ns_b.sysctl(&format!("net.ipv6.conf.{b}.disable_ipv6"), "1");
    ns_a.ip(&["link", "set", a, "arp", "off", "up"]);
    ns_b.ip(&["link", "set", b, "arp", "off", "up"]);
}

/// An AF_PACKET socket that sends whole frames out of one interface.
#[derive(Debug)]
pub struct FrameSender {
    fd: OwnedFd,
}

impl FrameSender {
    /// Opens the socket on `iface`; call it inside [`Netns::enter`] for an interface there.
    #[must_use]
    pub fn open(iface: &str) -> Self {
        let ifindex = nix::net::if_::if_nametoindex(iface).expect("interface");
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            raw >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex.cast_signed();
        // SAFETY: addr is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert!(
            rc == 0,
            "bind(AF_PACKET, {iface}): {}",
            std::io::Error::last_os_error()
        );
        Self { fd }
    }

    /// Keeps the calling thread on one CPU, so that a veth delivers (and XDP sees) every frame
    /// on that CPU: per-CPU counters such as 1-in-N sampling then behave deterministically.
    pub fn pin_to_cpu(cpu: usize) {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("cpu index");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .expect("sched_setaffinity");
    }

    /// Sends one frame, retrying while the device queue is full.
    pub fn send(&self, frame: &[u8]) {
        for _ in 0..1000 {
            // SAFETY: frame is a valid buffer of frame.len() bytes.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n == frame.len().cast_signed() {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert!(e.raw_os_error() == Some(libc::ENOBUFS), "send: {e}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("send: device queue stayed full");
    }
}
