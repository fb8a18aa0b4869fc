//! Re-injection out of an egress interface with an AF_PACKET socket.
//!
//! Not AF_XDP: an AF_XDP TX socket claims its queue on the egress interface, the queue that
//! another agent steering from that interface needs for its own RX socket (a bump in the wire
//! runs one agent per direction). A packet socket claims nothing and sends through the
//! interface's normal transmit path.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

#[derive(Debug)]
pub struct PacketTx {
    fd: OwnedFd,
    buffer: Vec<u8>,
    sent: u64,
}

impl PacketTx {
    pub fn open(iface: &str) -> io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|_| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {iface}"))
        })?;
        // Protocol 0: this socket sends only, it receives nothing.
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex.cast_signed();
        // SAFETY: bind(2) with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Frames are complete: skip the egress qdisc, as a NIC's own queue would see them.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) with an int option; failure only costs the shortcut.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Self {
            fd,
            buffer: Vec::with_capacity(16 * 1024),
            sent: 0,
        })
    }

    /// Sends `frame` (its offloaded checksum completed); `false` if the kernel refused it.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.buffer.clear();
        self.buffer.extend_from_slice(frame);
        super::checksum::complete_partial(&mut self.buffer);
        // SAFETY: send(2) of an initialised buffer of the given length.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                self.buffer.as_ptr().cast(),
                self.buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let ok = usize::try_from(rc).is_ok_and(|n| n == self.buffer.len());
        if ok {
            self.sent += 1;
        }
        ok
    }

    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent
    }
}
