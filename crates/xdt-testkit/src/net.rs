//! Network namespaces and veth pairs for root tests. Every object removes itself on drop, also
//! when the test panics, so a failed test leaves nothing behind.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Output},
};

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

/// The lab's network namespace ([`xdt_lab::Netns`]) for tests: a unique name, and a panic
/// instead of an error.
#[derive(Debug)]
pub struct Netns(pub xdt_lab::Netns);

impl Netns {
    /// A fresh namespace named `PREFIX…`, unique to this process.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self(xdt_lab::Netns::new(&crate::unique_name(prefix)).unwrap_or_else(|e| panic!("{e}")))
    }

    #[must_use]
    pub fn name(&self) -> &str {
        self.0.name()
    }

    #[must_use]
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// `ip -n NS ARGS...`
    #[expect(
        clippy::must_use_candidate,
        reason = "callers run it for its effect and may ignore the output"
    )]
    pub fn ip(&self, args: &[&str]) -> Output {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// See [`xdt_lab::Netns::command`].
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        self.0.command(program)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.0.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `f` on a thread whose network namespace is this one.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.enter(f).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A veth pair from interface `a` in namespace `ns_a` to `b` in `ns_b`, with `queues` TX and
/// RX queues on each end, down and unconfigured.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: u32) {
    xdt_lab::veth((Some(&ns_a.0), a), (Some(&ns_b.0), b), queues).unwrap_or_else(|e| panic!("{e}"));
}

/// A veth pair from interface `a` in namespace `ns_a` to `b` in `ns_b`, both up, quiet (no
/// addresses, IPv6 and ARP off: see [`xdt_lab::Side`]) so that only test frames cross it.
pub fn quiet_veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: u32) {
    veth(ns_a, a, ns_b, b, queues);
    for (ns, iface) in [(ns_a, a), (ns_b, b)] {
        let side = xdt_lab::Side {
            ns: ns.name().to_owned(),
            iface: iface.to_owned(),
            v4: None,
            v6: None,
        };
        side.configure(&ns.0).unwrap_or_else(|e| panic!("{e}"));
    }
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
