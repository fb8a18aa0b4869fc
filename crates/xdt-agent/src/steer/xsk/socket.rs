//! What the RX and TX sockets share: the bind modes, the errors, the UMEM's memory, and
//! setting up one socket (UMEM, rings, bind) in the modes asked for.

use std::{io, num::NonZeroU32, ptr::NonNull};

use xdpilone::{
    DeviceQueue, Errno, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
};

/// One chunk per frame: a page, which holds an MTU-sized frame and its metadata.
pub const FRAME_SIZE: u32 = 4096;

/// A transparent huge page on x86_64 and most other targets.
const HUGE_PAGE: usize = 2 << 20;

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
pub(super) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by one socket owner; the kernel writes into it only
// through the rings that owner drives.
unsafe impl Send for Region {}

impl Region {
    /// `len` bytes, on 2 MiB transparent huge pages where the kernel has them. The agent's
    /// thread reads every frame where the kernel wrote it: with a 4 KiB page per frame each
    /// frame's first read missed the TLB (a two-level page walk in a VM), most of that thread's
    /// own time in a profile. Huge pages are a hint: without them (THP `never`, no free 2 MiB
    /// block) the region is on small pages, as before.
    pub(super) fn new(len: usize) -> Result<Self, XskError> {
        let fail = |source: io::Error| XskError::Mmap {
            mib: len >> 20,
            source,
        };
        // Room to start the region on a 2 MiB boundary; the slack is unmapped again below.
        let mapped = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| fail(io::Error::other("too large")))?;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(fail(io::Error::last_os_error()));
        }
        let base = ptr as usize;
        let head = base.next_multiple_of(HUGE_PAGE) - base;
        let tail = mapped - head - len;
        // SAFETY: the slack before and after `[base + head, base + head + len)`, both inside
        // the mapping just made and page-aligned (mmap, HUGE_PAGE and `len` are multiples of the
        // page size); nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(ptr, head);
            }
            if tail > 0 {
                libc::munmap(ptr.cast::<u8>().add(head + len).cast(), tail);
            }
        }
        let start = ptr.cast::<u8>().wrapping_add(head);
        // SAFETY: advice on `[start, start + len)`, the mapping this region now owns. Both are
        // hints (errors ignored): huge pages where available, and every page faulted in now
        // rather than at the first frame (the UMEM's registration would fault them in anyway).
        unsafe {
            libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
            libc::madvise(start.cast(), len, libc::MADV_POPULATE_WRITE);
        }
        let ptr =
            NonNull::new(start).ok_or_else(|| fail(io::Error::other("mmap returned NULL")))?;
        Ok(Self { ptr, len })
    }

    pub(super) fn area(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// The bytes `[offset, offset + len)`, or `None` outside the region.
    pub(super) fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: inside the mapping (checked); the kernel does not write to a frame while user
        // space owns it (it came off the RX ring and is not on the fill ring).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len) })
    }

    pub(super) fn bytes_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
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

pub(super) fn frame_base(addr: u64) -> u64 {
    addr & !u64::from(FRAME_SIZE - 1)
}

/// The ring a socket carries packets on: RX for the steered interface, TX for re-injection.
pub(super) trait PacketRing: Sized {
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
pub(super) fn open<R: PacketRing>(
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

pub(super) struct Opened<R> {
    pub(super) ring: R,
    pub(super) device: DeviceQueue,
    pub(super) umem: Umem,
    pub(super) region: Region,
    pub(super) zerocopy: bool,
}

/// Every frame of a UMEM of `frames` frames, as the free list starts.
pub(super) fn all_frames(frames: u32) -> Vec<u64> {
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
    // An RX socket's frames are all either free or on its rings, and a free one waits on the
    // fill ring: both rings hold every frame, so a burst can fill the whole UMEM before the
    // kernel drops (with half the frames on each ring, the kernel dropped for an empty fill
    // ring while the other half waited on the agent's free list). A TX socket's frames wait in
    // the agent until it has one to send: half on the TX ring, half completing.
    let (ring, fill, complete) = if R::RX {
        (frames, frames, 1)
    } else {
        (frames / 2, 1, frames / 2)
    };
    let ring = NonZeroU32::new(ring);
    let region = Region::new(frames as usize * FRAME_SIZE as usize)?;
    let config = UmemConfig {
        fill_size: fill,
        complete_size: complete,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_starts_on_a_huge_page_and_is_all_usable() {
        for len in [64 * FRAME_SIZE as usize, 2048 * FRAME_SIZE as usize] {
            let mut region = Region::new(len).expect("region");
            assert_eq!(region.ptr.as_ptr() as usize % HUGE_PAGE, 0, "{len} bytes");
            let all = region.bytes_mut(0, len).expect("whole region");
            all.fill(0xa5);
            assert!(
                region
                    .bytes(0, len)
                    .expect("read")
                    .iter()
                    .all(|&b| b == 0xa5)
            );
            assert!(region.bytes(1, len).is_none());
        }
    }
}
