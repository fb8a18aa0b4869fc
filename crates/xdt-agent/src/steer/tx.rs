//! Where the steering thread re-injects frames: the re-entry pair's AF_XDP socket, or an egress
//! interface's packet socket, behind one interface.

use super::{packet::PacketTx, xsk::TxPort};

/// Where the worker re-injects: the re-entry pair's AF_XDP socket, or an egress interface's
/// packet socket (see [`packet`]).
pub(super) enum Tx {
    Xsk(Box<TxPort>),
    Packet(PacketTx),
}

impl Tx {
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Xsk(t) if t.zerocopy => "AF_XDP zerocopy",
            Self::Xsk(_) => "AF_XDP copy",
            Self::Packet(_) => "AF_PACKET",
        }
    }

    pub(super) fn queue(&mut self, frame: &[u8], dst_mac: Option<[u8; 6]>) -> bool {
        match self {
            Self::Xsk(t) => t.queue(frame, dst_mac),
            Self::Packet(t) => t.send(frame),
        }
    }

    /// Frames that could not be handed to the kernel.
    pub(super) fn flush(&mut self) -> usize {
        match self {
            Self::Xsk(t) => t.flush(),
            Self::Packet(_) => 0,
        }
    }

    pub(super) fn transmitted(&self) -> u64 {
        match self {
            Self::Xsk(t) => t.transmitted(),
            Self::Packet(t) => t.sent(),
        }
    }

    /// Frames the kernel took and dropped (a packet socket's refusals are `queue`'s `false`).
    pub(super) fn dropped(&self) -> u64 {
        match self {
            Self::Xsk(t) => t.dropped(),
            Self::Packet(_) => 0,
        }
    }

    pub(super) fn in_flight(&self) -> u32 {
        match self {
            Self::Xsk(t) => t.in_flight(),
            Self::Packet(_) => 0,
        }
    }

    /// Frames on the TX ring the kernel has not taken.
    pub(super) fn on_ring(&self) -> u32 {
        match self {
            Self::Xsk(t) => t.on_ring(),
            Self::Packet(_) => 0,
        }
    }

    pub(super) fn invalid_descs(&self) -> Option<u64> {
        match self {
            Self::Xsk(t) => t.statistics().map(|s| s.tx_invalid_descs),
            Self::Packet(_) => None,
        }
    }
}
