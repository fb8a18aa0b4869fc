//! The steering thread: it opens the sockets, then takes frames off every RX ring, records
//! what it sees in each, re-injects them, renews the lease and keeps the figures [`Counters`]
//! hold for batches (and its heartbeat for the watchdog).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use log::{error, warn};
use xdt_common::steer::SteerMeta;
use xdt_datapath::{
    labels::LabelTable,
    steer::{SteerMaps, meta_before},
};
use xdt_wire::{Event, Inspection};

use crate::outbox::Encoded;

use super::{
    config::{EventSink, Reinject, SteerConfig, SteerError},
    inspect,
    packet::PacketTx,
    tx::Tx,
    xsk::{RxQueue, TxPort},
};

/// Counters the loop updates and batches read.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) received_packets: AtomicU64,
    pub(super) received_bytes: AtomicU64,
    pub(super) reinjected_packets: AtomicU64,
    pub(super) reinject_dropped: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) rx_ring_full: AtomicU64,
    pub(super) rx_fill_ring_empty: AtomicU64,
    pub(super) tx_invalid_descs: AtomicU64,
    /// When the sockets' loop last went round (CLOCK_MONOTONIC ns): its liveness for the
    /// watchdog.
    pub(super) heartbeat_ns: AtomicU64,
}

/// What the steering thread opens.
pub(super) struct Setup {
    pub(super) iface: String,
    pub(super) ifindex: u32,
    pub(super) queues: u32,
    pub(super) tx_iface: String,
    pub(super) config: SteerConfig,
}

impl Setup {
    pub(super) fn open(&self, maps: &mut SteerMaps) -> Result<(Vec<RxQueue>, Tx), SteerError> {
        let c = &self.config;
        let rx = (0..self.queues)
            .map(|q| RxQueue::open(&self.iface, self.ifindex, q, c.frames, c.mode))
            .collect::<Result<Vec<_>, _>>()?;
        let tx = match &c.reinject {
            Reinject::Host => Tx::Xsk(Box::new(TxPort::open(&self.tx_iface, c.frames, c.mode)?)),
            Reinject::Egress(dev) => {
                Tx::Packet(PacketTx::open(dev).map_err(|source| SteerError::Egress {
                    iface: dev.clone(),
                    source,
                })?)
            }
        };
        for q in &rx {
            maps.set_socket(q.queue, q.fd())?;
        }
        maps.renew(c.lease)?;
        Ok((rx, tx))
    }
}

/// Frames taken off one RX ring per turn.
const RX_BATCH: u32 = 64;
/// How many frames ahead of the one being read the next is prefetched.
const PREFETCH_AHEAD: usize = 4;

pub(super) struct Worker {
    pub(super) names: crate::labels::LabelNames,
    pub(super) rx: Vec<RxQueue>,
    pub(super) tx: Tx,
    pub(super) maps: SteerMaps,
    pub(super) dst_mac: Option<[u8; 6]>,
    pub(super) lease: Duration,
    /// How long to keep checking the rings after the last frame before sleeping in poll().
    pub(super) spin: Duration,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) counters: Arc<Counters>,
    pub(super) sink: EventSink,
    /// `tx.dropped()` as last counted.
    pub(super) tx_dropped: u64,
}

impl Worker {
    pub(super) fn run(mut self) {
        let offset = crate::clock::monotonic_to_unix_offset();
        let renew_every = self.lease / 4;
        let mut renewed = Instant::now();
        let mut renew_failed = false;
        let mut fds: Vec<libc::pollfd> = self
            .rx
            .iter()
            .map(|q| libc::pollfd {
                fd: q.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // The events wait encoded, and one event value is filled in place for each frame: no
        // allocation per frame on this thread (its strings and boxed inspection are reused).
        let mut events = Encoded::default();
        let mut unfit = 0;
        let mut event = Event::blank("steer");
        let mut last_frame = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.counters.heartbeat_ns.store(
                xdt_datapath::sys::monotonic_ns().unwrap_or(0),
                Ordering::Relaxed,
            );
            if renewed.elapsed() >= renew_every {
                match self.maps.renew(self.lease) {
                    Ok(()) => renew_failed = false,
                    Err(e) if !renew_failed => {
                        error!("renewing the steering lease failed (steering stops): {e}");
                        renew_failed = true;
                    }
                    Err(_) => {}
                }
                self.read_kernel_stats();
                renewed = Instant::now();
            }
            let now = xdt_datapath::sys::monotonic_ns().unwrap_or(0);
            let mut received = 0;
            for q in &mut self.rx {
                let n = q.receive(RX_BATCH);
                received += n;
                for i in 0..PREFETCH_AHEAD {
                    q.prefetch(i, size_of::<SteerMeta>());
                }
                for i in 0..n {
                    q.prefetch(i + PREFETCH_AHEAD, size_of::<SteerMeta>());
                    let Some(rx) = q.frame(i, size_of::<SteerMeta>()) else {
                        // A descriptor outside the UMEM: nothing to re-inject, and received.
                        self.counters
                            .reinject_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let meta = meta_before(rx.headroom);
                    let ok = self.tx.queue(rx.frame, self.dst_mac);
                    if !ok {
                        self.counters
                            .reinject_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.counters
                        .received_bytes
                        .fetch_add(rx.frame.len() as u64, Ordering::Relaxed);
                    let names = meta.as_ref().map(|m| self.names.covering(m.label));
                    fill_event(
                        &mut event,
                        rx.frame,
                        meta.as_ref(),
                        q.queue,
                        names,
                        now,
                        offset,
                        ok,
                    );
                    if events.push(&event).is_err() {
                        unfit += 1;
                    }
                }
                q.release();
            }
            if received > 0 {
                self.counters
                    .received_packets
                    .fetch_add(received as u64, Ordering::Relaxed);
            }
            self.flush_tx();
            if !events.is_empty() || unfit > 0 {
                (self.sink)(&mut events, unfit);
                unfit = 0;
            }
            if received > 0 {
                last_frame = Instant::now();
            } else if last_frame.elapsed() < self.spin {
                // Traffic just now: the next frame likely follows within the spin, and finds
                // this thread running instead of asleep (a wake-up costs tens of microseconds
                // in a VM, on another CPU). Yielding leaves the CPU to any thread that wants
                // it, such as the receiver the re-injected frames wake on this CPU.
                std::thread::yield_now();
            } else {
                // Idle: sleep until a frame arrives, at most until the next renewal is due.
                let wait = renew_every
                    .saturating_sub(renewed.elapsed())
                    .min(Duration::from_millis(100));
                // SAFETY: `fds` is a valid array of pollfd for its length.
                unsafe {
                    libc::poll(
                        fds.as_mut_ptr(),
                        fds.len() as libc::nfds_t,
                        wait.as_millis() as i32,
                    );
                }
            }
        }
        // Revoke before the sockets close, so no packet is redirected into a closing socket.
        if let Err(e) = self.maps.revoke() {
            warn!("revoking the steering lease failed: {e}");
        }
        for q in &self.rx {
            let _ = self.maps.clear_socket(q.queue);
        }
        // Let what is on the TX ring go out; what the kernel has not taken when the socket
        // closes never goes, and is counted.
        for _ in 0..100 {
            self.flush_tx();
            if self.tx.in_flight() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.counters
            .reinject_dropped
            .fetch_add(u64::from(self.tx.on_ring()), Ordering::Relaxed);
        self.read_kernel_stats();
    }

    /// Hands the queued frames to the kernel and brings the TX figures up to date: frames that
    /// found no room on the ring and frames the kernel dropped are `reinject_dropped`.
    fn flush_tx(&mut self) {
        let rejected = self.tx.flush() as u64;
        let dropped = self.tx.dropped();
        let newly = rejected + dropped.saturating_sub(self.tx_dropped);
        self.tx_dropped = dropped;
        if newly > 0 {
            self.counters
                .reinject_dropped
                .fetch_add(newly, Ordering::Relaxed);
        }
        self.counters
            .reinjected_packets
            .store(self.tx.transmitted(), Ordering::Relaxed);
    }

    fn read_kernel_stats(&self) {
        let (mut dropped, mut full, mut empty) = (0, 0, 0);
        for q in &self.rx {
            if let Some(s) = q.statistics() {
                dropped += s.rx_dropped;
                full += s.rx_ring_full;
                empty += s.rx_fill_ring_empty_descs;
            }
        }
        let c = &self.counters;
        c.rx_dropped.store(dropped, Ordering::Relaxed);
        c.rx_ring_full.store(full, Ordering::Relaxed);
        c.rx_fill_ring_empty.store(empty, Ordering::Relaxed);
        if let Some(s) = self.tx.invalid_descs() {
            c.tx_invalid_descs.store(s, Ordering::Relaxed);
        }
    }
}

/// Makes `event` the event of a steered frame, in place: its label string is rewritten only
/// when the name changes, and its inspection's box, once made, is reused.
#[expect(clippy::too_many_arguments, reason = "the parts of one event")]
fn fill_event(
    event: &mut Event,
    frame: &[u8],
    meta: Option<&SteerMeta>,
    queue: u32,
    names: Option<&LabelTable>,
    now_ns: u64,
    offset: u64,
    reinjected: bool,
) {
    let seen = inspect::inspect(frame);
    let (timestamp_ns, rule) = if let (Some(m), Some(names)) = (meta, names) {
        match names.get(m.label) {
            Some(name) => {
                if event.label != name {
                    event.label.clear();
                    event.label.push_str(name);
                }
            }
            // An id the table does not name: its fallback name, made each time (rare).
            None => event.label = names.name(m.label),
        }
        (m.timestamp_ns, m.rule)
    } else {
        event.label.clear();
        (now_ns, 0)
    };
    event.timestamp_unix_ns = timestamp_ns.wrapping_add(offset);
    event.rule = rule;
    event.rx_queue = queue;
    event.headers = seen.headers;
    let inspection = Inspection {
        frame_len: frame.len() as u32,
        agent_latency_ns: now_ns.saturating_sub(timestamp_ns),
        reinjected,
        http: seen.http,
        dns: seen.dns,
    };
    match event.inspection.as_deref_mut() {
        Some(reused) => *reused = inspection,
        None => event.inspection = Some(Box::new(inspection)),
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use xdt_common::steer::META_MAGIC;
    use xdt_wire::frame::encode_item;

    use super::*;

    fn udp4(dport: u16, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(40000, dport);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).expect("build");
        frame
    }

    fn meta(label: u32, rule: u32) -> SteerMeta {
        SteerMeta {
            timestamp_ns: 1_000 + u64::from(rule),
            label,
            rule,
            rx_queue: 0,
            magic: META_MAGIC,
        }
    }

    /// The event of a frame as a fresh value, the way it was built before events were filled in
    /// place.
    fn fresh(frame: &[u8], meta: Option<&SteerMeta>, names: &LabelTable, ok: bool) -> Event {
        let seen = inspect::inspect(frame);
        let (ts, label, rule) = meta.map_or((5_000, String::new(), 0), |m| {
            (m.timestamp_ns, names.name(m.label), m.rule)
        });
        Event {
            timestamp_unix_ns: ts + 7,
            label,
            rule,
            action: "steer".to_owned(),
            rx_queue: 3,
            headers: seen.headers,
            inspection: Some(Box::new(Inspection {
                frame_len: frame.len() as u32,
                agent_latency_ns: 5_000 - ts,
                reinjected: ok,
                http: seen.http,
                dns: seen.dns,
            })),
        }
    }

    #[test]
    fn an_event_filled_in_place_encodes_as_a_fresh_one() {
        let names: LabelTable = [
            None,
            Some("web".to_owned()),
            Some("a-longer-name".to_owned()),
        ]
        .into_iter()
        .collect();
        let http = {
            let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 1, 1000)
                .ack(1);
            let mut frame = Vec::new();
            builder
                .write(&mut frame, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
                .expect("build");
            frame
        };
        let plain = udp4(9000, &[0; 64]);
        // Each one after the other into the same value: nothing of the one before may stay (the
        // HTTP request, a longer label, the label of a frame with metadata).
        let frames: [(&[u8], Option<SteerMeta>, bool); 6] = [
            (&http, Some(meta(2, 4)), true),
            (&plain, Some(meta(1, 5)), false),
            (&plain, Some(meta(9, 6)), true),
            (&http, Some(meta(2, 4)), true),
            (&plain, None, true),
            (&plain, Some(meta(1, 5)), true),
        ];
        let mut event = Event::blank("steer");
        for (frame, meta, ok) in frames {
            let names = meta.as_ref().map(|_| &names);
            fill_event(&mut event, frame, meta.as_ref(), 3, names, 5_000, 7, ok);
            let expected = fresh(
                frame,
                meta.as_ref(),
                names.unwrap_or(&LabelTable::default()),
                ok,
            );
            assert_eq!(event, expected);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_item(&event, &mut a).expect("encode");
            encode_item(&expected, &mut b).expect("encode");
            assert_eq!(a, b);
        }
        assert_eq!(event.label, "web");
    }
}
