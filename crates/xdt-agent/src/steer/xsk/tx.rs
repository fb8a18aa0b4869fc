//! The TX socket steered frames are re-injected through (the re-entry pair's agent end).

use std::io;

use xdpilone::{
    DeviceQueue, Errno, RingTx, Umem,
    xdp::{XdpDesc, XdpStatisticsV2},
};

use super::socket::{BindMode, FRAME_SIZE, Region, XskError, all_frames, frame_base, open};
use crate::steer::checksum;

/// The TX socket frames are re-injected through.
pub struct TxPort {
    pub iface: String,
    pub zerocopy: bool,
    tx: RingTx,
    device: DeviceQueue,
    _umem: Umem,
    region: Region,
    free: Vec<u64>,
    queued: Vec<XdpDesc>,
    /// TX descriptors handed to the kernel and not completed.
    in_flight: u32,
    completed: u64,
    /// Frames the kernel completed without transmitting them (see [`TxPort::kick`]).
    dropped: u64,
}

impl std::fmt::Debug for TxPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxPort")
            .field("iface", &self.iface)
            .field("zerocopy", &self.zerocopy)
            .finish_non_exhaustive()
    }
}

impl TxPort {
    pub fn open(iface: &str, frames: u32, mode: BindMode) -> Result<Self, XskError> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| XskError::Setup {
            step: "socket",
            iface: iface.to_owned(),
            queue: 0,
            errno: Errno::last_os_error(),
            hint: if e == nix::errno::Errno::ENODEV {
                " (no such interface)"
            } else {
                ""
            },
        })?;
        let opened = open::<RingTx>(iface, ifindex, 0, frames, mode)?;
        Ok(Self {
            iface: iface.to_owned(),
            zerocopy: opened.zerocopy,
            tx: opened.ring,
            device: opened.device,
            _umem: opened.umem,
            region: opened.region,
            free: all_frames(frames),
            queued: Vec::new(),
            in_flight: 0,
            completed: 0,
            dropped: 0,
        })
    }

    /// Copies `frame` into a TX frame, with the destination MAC replaced by `dst_mac` if given
    /// and an offloaded (partial) L4 checksum completed.
    /// `false` when no TX frame is free (the caller counts the loss).
    pub fn queue(&mut self, frame: &[u8], dst_mac: Option<[u8; 6]>) -> bool {
        if frame.len() > FRAME_SIZE as usize || frame.len() < 14 {
            return false;
        }
        if self.free.is_empty() {
            self.complete();
        }
        let Some(base) = self.free.pop() else {
            return false;
        };
        let Some(buffer) = self.region.bytes_mut(base, frame.len()) else {
            self.free.push(base);
            return false;
        };
        buffer.copy_from_slice(frame);
        if let Some(mac) = dst_mac {
            buffer[..6].copy_from_slice(&mac);
        }
        checksum::complete_partial(buffer);
        self.queued.push(XdpDesc {
            addr: base,
            len: frame.len() as u32,
            options: 0,
        });
        true
    }

    /// Hands queued frames to the kernel and kicks it. Returns how many could not be put on the
    /// TX ring (their frames are free again; the caller counts the loss).
    pub fn flush(&mut self) -> usize {
        let mut rejected = 0;
        if !self.queued.is_empty() {
            let mut at = 0;
            // A reservation counts on a cached view of the kernel's consumer, refreshed only
            // once that view shows no room at all: a short reservation is not a full ring
            // (taking it for one dropped a frame about every 1,024 at 55 frames/s). Reserve
            // until everything is on the ring or a reservation is empty; then let the kernel
            // take what is on the ring and try once more.
            for _ in 0..2 {
                while at < self.queued.len() {
                    let mut writer = self.tx.transmit((self.queued.len() - at) as u32);
                    let sent = writer.insert(self.queued[at..].iter().copied()) as usize;
                    writer.commit();
                    drop(writer);
                    if sent == 0 {
                        break;
                    }
                    at += sent;
                    self.in_flight += sent as u32;
                }
                if at == self.queued.len() {
                    break;
                }
                self.kick();
                self.complete();
            }
            rejected = self.queued.len() - at;
            let frames: Vec<u64> = self.queued.drain(..).skip(at).map(|d| d.addr).collect();
            self.free.extend(frames);
        }
        if self.tx.pending() > 0 {
            self.kick();
        }
        self.complete();
        rejected
    }

    /// Makes the kernel transmit what is on the TX ring. In copy mode each `sendto` transmits
    /// at most a kernel batch (TX_BATCH_SIZE, 32) and stops early at a frame the device
    /// dropped: the kernel then completes that frame, as it does a transmitted one, and
    /// `sendto` fails with EBUSY ("SKB completed but not sent" in net/xdp/xsk.c). A veth drops
    /// when its peer cannot take the frame: the host end down, a frame over its MTU, a full
    /// backlog. Each EBUSY is one such frame, counted in [`TxPort::dropped`]; the rest of the
    /// ring goes with the next call.
    fn kick(&mut self) {
        if self.zerocopy && !self.tx.needs_wakeup() {
            return;
        }
        // Every call that makes progress consumes at least one frame: bounded by the ring.
        for _ in 0..=self.tx.pending() {
            let before = self.tx.pending();
            if before == 0 {
                break;
            }
            // SAFETY: sendto(2) of no data on the socket's descriptor, which the ring owns and
            // keeps open; MSG_DONTWAIT as the kernel requires for AF_XDP.
            let rc = unsafe {
                libc::sendto(
                    self.tx.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EBUSY) => self.dropped += 1,
                    // The kernel's batch is done, or the completion ring is full (completed
                    // below, by the caller): go on while frames leave the ring.
                    Some(libc::EAGAIN) => {}
                    // Link down (ENETDOWN) and the like: the frames wait on the ring.
                    _ => break,
                }
            }
            if self.zerocopy || self.tx.pending() == before {
                break;
            }
        }
    }

    /// Frames the kernel finished with go back to the free list; returns how many.
    pub fn complete(&mut self) -> u32 {
        let mut reader = self.device.complete(self.in_flight);
        let mut done = 0;
        while let Some(addr) = reader.read() {
            self.free.push(frame_base(addr));
            done += 1;
        }
        reader.release();
        self.in_flight -= done.min(self.in_flight);
        self.completed += u64::from(done);
        done
    }

    /// Frames transmitted since the socket opened: completed by the kernel and not dropped.
    #[must_use]
    pub fn transmitted(&self) -> u64 {
        self.completed.saturating_sub(self.dropped)
    }

    /// Frames the kernel took off the TX ring and completed without transmitting them.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Frames on the TX ring the kernel has not taken yet (they do not go once the socket
    /// closes).
    #[must_use]
    pub fn on_ring(&self) -> u32 {
        self.tx.pending()
    }

    /// Frames on the TX ring the kernel has not completed.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    #[must_use]
    pub fn statistics(&self) -> Option<XdpStatisticsV2> {
        self.device.statistics_v2().ok()
    }
}
