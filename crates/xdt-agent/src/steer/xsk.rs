//! AF_XDP sockets with xdpilone: one RX socket per receive queue of the monitored interface and
//! one TX socket for re-injection, each with its own UMEM.
//!
//! Frame ownership is plain bookkeeping: a frame is either in the kernel's hands (fill ring,
//! RX ring, TX ring, completion ring) or on the socket's `free` list. The RX path hands every
//! frame straight back after reading it (the bytes are copied into a TX frame), so a slow or
//! failed TX never starves reception.

use std::{io, num::NonZeroU32, os::fd::RawFd, ptr::NonNull};

use xdpilone::{
    DeviceQueue, Errno, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
    xdp::{XdpDesc, XdpStatisticsV2},
};

/// One chunk per frame: a page, which holds an MTU-sized frame and its metadata.
pub const FRAME_SIZE: u32 = 4096;

/// What to ask of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy, and copy mode where the driver cannot (veth, most virtual devices).
    Auto,
    Copy,
    ZeroCopy,
}

impl BindMode {
    /// The bind flags to try before the last one, and the last one.
    fn attempts(self) -> (&'static [u16], u16) {
        match self {
            Self::Auto => (
                &[SocketConfig::XDP_BIND_ZEROCOPY],
                SocketConfig::XDP_BIND_COPY,
            ),
            Self::Copy => (&[], SocketConfig::XDP_BIND_COPY),
            Self::ZeroCopy => (&[], SocketConfig::XDP_BIND_ZEROCOPY),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("mmap of a {mib} MiB UMEM failed")]
    Mmap {
        mib: usize,
        #[source]
        source: io::Error,
    },
    #[error("{step} for {iface} queue {queue} failed: {errno}{hint}")]
    Setup {
        step: &'static str,
        iface: String,
        queue: u32,
        errno: Errno,
        hint: &'static str,
    },
}

/// Anonymous, page-aligned memory for a UMEM; unmapped on drop (after the sockets, which are
/// declared before it in their owners).
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by one socket owner; the kernel writes into it only
// through the rings that owner drives.
unsafe impl Send for Region {}

impl Region {
    fn new(len: usize) -> Result<Self, XskError> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::Mmap {
                mib: len >> 20,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| XskError::Mmap {
            mib: len >> 20,
            source: io::Error::other("mmap returned NULL"),
        })?;
        Ok(Self { ptr, len })
    }

    fn area(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// The bytes `[offset, offset + len)`, or `None` outside the region.
    fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: inside the mapping (checked); the kernel does not write to a frame while user
        // space owns it (it came off the RX ring and is not on the fill ring).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len) })
    }

    fn bytes_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn frame_base(addr: u64) -> u64 {
    addr & !u64::from(FRAME_SIZE - 1)
}

/// The ring a socket carries packets on: RX for the steered interface, TX for re-injection.
trait PacketRing: Sized {
    const RX: bool;
    const STEP: &'static str;
    fn map(user: &User) -> Result<Self, Errno>;
}

impl PacketRing for RingRx {
    const RX: bool = true;
    const STEP: &'static str = "mapping the RX ring";
    fn map(user: &User) -> Result<Self, Errno> {
        user.map_rx()
    }
}

impl PacketRing for RingTx {
    const RX: bool = false;
    const STEP: &'static str = "mapping the TX ring";
    fn map(user: &User) -> Result<Self, Errno> {
        user.map_tx()
    }
}

/// Sets up one socket: UMEM of `frames` frames, fill/completion rings, the RX or TX ring,
/// bind. Tries each of `mode`'s bind flags in turn, each on fresh objects; only a refused bind
/// moves on to the next.
fn open<R: PacketRing>(
    iface: &str,
    ifindex: u32,
    queue: u32,
    frames: u32,
    mode: BindMode,
) -> Result<Opened<R>, XskError> {
    let (earlier, last) = mode.attempts();
    for &flag in earlier {
        match open_once(iface, ifindex, queue, frames, flag) {
            Err(XskError::Setup { step: "bind", .. }) => {}
            other => return other,
        }
    }
    open_once(iface, ifindex, queue, frames, last)
}

struct Opened<R> {
    ring: R,
    device: DeviceQueue,
    umem: Umem,
    region: Region,
    zerocopy: bool,
}

/// Every frame of a UMEM of `frames` frames, as the free list starts.
fn all_frames(frames: u32) -> Vec<u64> {
    (0..frames)
        .rev()
        .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
        .collect()
}

fn open_once<R: PacketRing>(
    iface: &str,
    ifindex: u32,
    queue: u32,
    frames: u32,
    flag: u16,
) -> Result<Opened<R>, XskError> {
    let err = |step: &'static str| {
        move |errno: Errno| {
            let hint = match (step, errno.get_raw()) {
                ("umem", libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => {
                    " (the UMEM is locked memory: raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=, or grant CAP_IPC_LOCK)"
                }
                ("socket", libc::EPERM | libc::EACCES) => " (AF_XDP sockets need CAP_NET_RAW)",
                ("socket", libc::EAFNOSUPPORT) => " (the kernel lacks AF_XDP: CONFIG_XDP_SOCKETS)",
                ("bind", libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
                ("bind", libc::EOPNOTSUPP) if flag == SocketConfig::XDP_BIND_ZEROCOPY => {
                    " (the driver has no zero-copy AF_XDP)"
                }
                _ => "",
            };
            XskError::Setup {
                step,
                iface: iface.to_owned(),
                queue,
                errno,
                hint,
            }
        }
    };
    let ring = NonZeroU32::new(frames / 2);
    let region = Region::new(frames as usize * FRAME_SIZE as usize)?;
    let config = UmemConfig {
        fill_size: frames / 2,
        complete_size: frames / 2,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
    };
    // SAFETY: the area is page-aligned (mmap) and lives as long as the UMEM: both end up in the
    // same owner, the region declared last so it is unmapped after the sockets close.
    let umem = unsafe { Umem::new(config, region.area()) }.map_err(err("umem"))?;
    let mut info = IfInfo::invalid();
    info.from_ifindex(ifindex).map_err(err("socket"))?;
    info.set_queue(queue);
    let socket = Socket::with_shared(&info, &umem).map_err(err("socket"))?;
    let device = umem.fq_cq(&socket).map_err(err("fill/completion rings"))?;
    let user = umem
        .rx_tx(
            &socket,
            &SocketConfig {
                rx_size: if R::RX { ring } else { None },
                tx_size: if R::RX { None } else { ring },
                bind_flags: flag | SocketConfig::XDP_BIND_NEED_WAKEUP,
            },
        )
        .map_err(err("rx/tx rings"))?;
    let ring = R::map(&user).map_err(err(R::STEP))?;
    umem.bind(&user).map_err(err("bind"))?;
    Ok(Opened {
        ring,
        device,
        umem,
        region,
        zerocopy: flag == SocketConfig::XDP_BIND_ZEROCOPY,
    })
}

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
        super::checksum::complete_partial(buffer);
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
