//! The RX socket of one receive queue of the monitored interface.

use std::os::fd::RawFd;

use xdpilone::{
    DeviceQueue, RingRx, Umem,
    xdp::{XdpDesc, XdpStatisticsV2},
};

use super::socket::{BindMode, Region, XskError, all_frames, frame_base, open};

/// A frame read off an RX ring: the bytes before it (where the probe's metadata is) and the
/// frame itself.
#[derive(Debug)]
pub struct RxFrame<'a> {
    pub headroom: &'a [u8],
    pub frame: &'a [u8],
}

/// The RX socket of one receive queue.
pub struct RxQueue {
    pub queue: u32,
    pub zerocopy: bool,
    // Drop order: rings and socket before the UMEM's memory.
    rx: RingRx,
    device: DeviceQueue,
    _umem: Umem,
    region: Region,
    free: Vec<u64>,
    /// Descriptors read by the last `receive` and not yet released.
    batch: Vec<XdpDesc>,
}

impl std::fmt::Debug for RxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxQueue")
            .field("queue", &self.queue)
            .field("zerocopy", &self.zerocopy)
            .finish_non_exhaustive()
    }
}

impl RxQueue {
    pub fn open(
        iface: &str,
        ifindex: u32,
        queue: u32,
        frames: u32,
        mode: BindMode,
    ) -> Result<Self, XskError> {
        let opened = open::<RingRx>(iface, ifindex, queue, frames, mode)?;
        let mut this = Self {
            queue,
            zerocopy: opened.zerocopy,
            rx: opened.ring,
            device: opened.device,
            _umem: opened.umem,
            region: opened.region,
            free: all_frames(frames),
            batch: Vec::new(),
        };
        this.refill();
        Ok(this)
    }

    /// The socket, for `XDT_XSKS` and poll.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Hands free frames to the kernel's fill ring: as many as it has room for. A reservation
    /// counts on a cached view of the kernel's consumer that is refreshed only once it shows
    /// no room at all, so one short reservation is not a full ring: reserve until one is empty.
    pub fn refill(&mut self) {
        while !self.free.is_empty() {
            let mut writer = self.device.fill(self.free.len() as u32);
            let start = self.free.len();
            let given = writer.insert(self.free.iter().rev().copied());
            writer.commit();
            drop(writer);
            if given == 0 {
                break;
            }
            self.free.truncate(start - given as usize);
        }
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// Takes up to `max` frames off the RX ring; read them with [`RxQueue::frame`], then
    /// [`RxQueue::release`].
    pub fn receive(&mut self, max: u32) -> usize {
        self.batch.clear();
        let mut reader = self.rx.receive(max);
        while let Some(desc) = reader.read() {
            self.batch.push(desc);
        }
        reader.release();
        self.batch.len()
    }

    /// Frame `i` of the last `receive`, with up to `meta` bytes before it.
    #[must_use]
    pub fn frame(&self, i: usize, meta: usize) -> Option<RxFrame<'_>> {
        let desc = self.batch.get(i)?;
        let base = frame_base(desc.addr);
        let before = usize::try_from(desc.addr - base).ok()?.min(meta);
        let all = self
            .region
            .bytes(desc.addr - before as u64, before + desc.len as usize)?;
        let (headroom, frame) = all.split_at(before);
        Some(RxFrame { headroom, frame })
    }

    /// Starts loading frame `i` of the last `receive` into this CPU's cache: its `meta` bytes
    /// before it and its first bytes, what is read of every frame. The kernel wrote them on the
    /// CPU that received the frame, so without this each frame's first read waits for them to
    /// come from that CPU's cache (most of the thread's own time in a profile).
    pub fn prefetch(&self, i: usize, meta: usize) {
        let Some(desc) = self.batch.get(i) else {
            return;
        };
        let start = desc.addr.saturating_sub(meta as u64);
        let Some(bytes) = self
            .region
            .bytes(start, meta + PREFETCHED.min(desc.len as usize))
        else {
            return;
        };
        for line in bytes.chunks(64) {
            prefetch(line.as_ptr());
        }
    }

    /// Gives the frames of the last `receive` back to the fill ring.
    pub fn release(&mut self) {
        self.free
            .extend(self.batch.drain(..).map(|d| frame_base(d.addr)));
        self.refill();
    }

    #[must_use]
    pub fn statistics(&self) -> Option<XdpStatisticsV2> {
        self.device.statistics_v2().ok()
    }
}

/// The bytes of a frame [`RxQueue::prefetch`] loads: its headers and the start of its payload.
const PREFETCHED: usize = 128;

#[cfg(target_arch = "x86_64")]
fn prefetch(at: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: SSE is part of the x86_64 baseline; a prefetch is a hint that never faults,
    // whatever the address (here always one inside the UMEM).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast()) };
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_at: *const u8) {}
