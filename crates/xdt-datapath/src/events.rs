//! Sampled packet metadata from the probe's ring buffer, decoded for people and JSON.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;
use xdt_common::{
    events::{self, SampledEvent},
    packet::Headers,
    rules::{ACTION_DROP, ACTION_SAMPLE},
};

use crate::{
    error::{Error, Result, map_error},
    labels::LabelTable,
};

/// A sampled packet, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub label: String,
    pub rule: u32,
    pub action: &'static str,
    pub ip_version: u8,
    /// Printed as its fields, in place (`xdt events --json`).
    #[serde(flatten)]
    pub headers: Headers,
}

impl Event {
    /// Decodes a raw event; `labels` gives names by label id.
    #[must_use]
    pub fn decode(raw: &SampledEvent, labels: &LabelTable) -> Self {
        let address = |bytes: [u8; 16]| -> IpAddr {
            if raw.ip_version == 4 {
                Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
            } else {
                Ipv6Addr::from(bytes).into()
            }
        };
        Self {
            timestamp_ns: raw.timestamp_ns,
            ifindex: raw.ifindex,
            rx_queue: raw.rx_queue,
            label: labels.name(raw.label),
            rule: raw.rule,
            action: match raw.action {
                ACTION_SAMPLE => "sample",
                ACTION_DROP => "drop",
                _ => "count",
            },
            ip_version: raw.ip_version,
            headers: Headers {
                protocol: raw.protocol,
                src: address(raw.src_addr),
                dst: address(raw.dst_addr),
                src_port: raw.src_port,
                dst_port: raw.dst_port,
                ip_len: raw.ip_len,
                payload_len: raw.payload_len,
                tcp_flags: raw.tcp_flags,
            },
        }
    }
}

/// Reads raw events from a probe's ring buffer. The ring has one reader at a time: events one
/// reader takes, another does not see.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

/// The ring's descriptor becomes readable when events arrive (for epoll, tokio's `AsyncFd`).
impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// See [`crate::attached::AttachedProbe::events`].
    pub(crate) fn from_map_data(data: MapData) -> Result<Self> {
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(map_error(events::MAP, "open"))?;
        Ok(Self { ring })
    }

    /// Waits up to `timeout` for events and hands each to `f`; returns how many were read.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&SampledEvent)) -> Result<usize> {
        let mut read = self.drain(&mut f);
        if read > 0 {
            return Ok(read);
        }
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Sys {
                    call: "poll",
                    source: e.into(),
                });
            }
        }
        read += self.drain(&mut f);
        Ok(read)
    }

    /// Hands every event already in the ring to `f` without waiting; returns how many.
    pub fn drain(&mut self, f: &mut impl FnMut(&SampledEvent)) -> usize {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            // The probe writes exactly one SampledEvent per record.
            if let Some(event) = read_record::<SampledEvent>(&item) {
                f(&event);
                read += 1;
            }
        }
        read
    }
}

/// A record the probe wrote at the start of `bytes` (a ring buffer entry, the metadata in front
/// of a steered frame); `None` if `bytes` is too short for one.
pub(crate) fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked above), every bit pattern is
    // a valid T (it is Pod: plain integers) and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
