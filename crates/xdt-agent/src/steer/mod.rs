//! AF_XDP steering: the agent takes the packets of `steer` rules off one socket per receive
//! queue, records what it sees in each (see [`inspect`]) and re-injects it, into the host stack
//! through a re-entry veth pair it manages ([`reentry`]) or out of a named egress interface.
//!
//! Fail-open: the probe passes instead of redirecting unless the agent's lease in `XDT_STEER` is
//! fresh and a socket is bound at the packet's queue. The lease is renewed from this module's
//! loop, so a hung loop stops steering within one lease; a killed agent's sockets leave the
//! socket map as the kernel closes them.

mod checksum;
pub mod inspect;
mod packet;
pub mod reentry;
pub mod xsk;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::{error, info, warn};
use xdt_common::steer::SteerMeta;
use xdt_datapath::{
    attached::AttachedProbe,
    labels::LabelTable,
    steer::{SteerMaps, meta_before},
};
use xdt_wire::{Event, Inspection, SteeringStats};

pub use self::xsk::BindMode;
use self::{
    packet::PacketTx,
    reentry::ReentryPair,
    xsk::{RxQueue, TxPort},
};

/// Where the worker re-injects: the re-entry pair's AF_XDP socket, or an egress interface's
/// packet socket (see [`packet`]).
enum Tx {
    Xsk(Box<TxPort>),
    Packet(PacketTx),
}

impl Tx {
    fn mode(&self) -> &'static str {
        match self {
            Self::Xsk(t) if t.zerocopy => "AF_XDP zerocopy",
            Self::Xsk(_) => "AF_XDP copy",
            Self::Packet(_) => "AF_PACKET",
        }
    }

    fn queue(&mut self, frame: &[u8], dst_mac: Option<[u8; 6]>) -> bool {
        match self {
            Self::Xsk(t) => t.queue(frame, dst_mac),
            Self::Packet(t) => t.send(frame),
        }
    }

    /// Frames that could not be handed to the kernel.
    fn flush(&mut self) -> usize {
        match self {
            Self::Xsk(t) => t.flush(),
            Self::Packet(_) => 0,
        }
    }

    fn transmitted(&self) -> u64 {
        match self {
            Self::Xsk(t) => t.transmitted(),
            Self::Packet(t) => t.sent(),
        }
    }

    /// Frames the kernel took and dropped (a packet socket's refusals are `queue`'s `false`).
    fn dropped(&self) -> u64 {
        match self {
            Self::Xsk(t) => t.dropped(),
            Self::Packet(_) => 0,
        }
    }

    fn in_flight(&self) -> u32 {
        match self {
            Self::Xsk(t) => t.in_flight(),
            Self::Packet(_) => 0,
        }
    }

    /// Frames on the TX ring the kernel has not taken.
    fn on_ring(&self) -> u32 {
        match self {
            Self::Xsk(t) => t.on_ring(),
            Self::Packet(_) => 0,
        }
    }

    fn invalid_descs(&self) -> Option<u64> {
        match self {
            Self::Xsk(t) => t.statistics().map(|s| s.tx_invalid_descs),
            Self::Packet(_) => None,
        }
    }
}

/// Where steered frames go after inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reinject {
    /// Into the host stack through the agent's re-entry veth pair.
    Host,
    /// Out of this interface, unchanged (bump in the wire).
    Egress(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SteerConfig {
    pub reinject: Reinject,
    pub mode: BindMode,
    /// UMEM frames per socket (a power of two; half fill the fill ring, half the RX/TX ring).
    pub frames: u32,
    /// How long the probe keeps steering without hearing from the agent.
    pub lease: Duration,
    /// Drop every capability of the sockets' thread once they are open (the agent's default;
    /// the re-entry pair is then left for `xdt-agent --cleanup` at a stop).
    pub drop_capabilities: bool,
}

impl Default for SteerConfig {
    fn default() -> Self {
        Self {
            reinject: Reinject::Host,
            mode: BindMode::Auto,
            frames: 2048,
            lease: Duration::from_secs(1),
            drop_capabilities: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    #[error("--xsk-frames {0} must be a power of two from 64 to 65536")]
    Frames(u32),
    #[error("the egress interface must differ from the monitored one ({0})")]
    EgressIsMonitored(String),
    #[error(transparent)]
    Maps(#[from] xdt_datapath::Error),
    #[error("re-entry pair: {0}")]
    Reentry(#[from] reentry::ReentryError),
    #[error(transparent)]
    Xsk(#[from] xsk::XskError),
    #[error("opening a packet socket on the egress interface {iface} failed")]
    Egress {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the steering thread failed")]
    Thread(#[source] std::io::Error),
    #[error("dropping the steering thread's capabilities failed")]
    DropCapabilities(#[source] crate::privileges::Error),
}

/// Receives the events of steered packets (the agent's pending batch).
pub type EventSink = Arc<dyn Fn(Vec<Event>) + Send + Sync>;

/// Counters the loop updates and batches read.
#[derive(Debug, Default)]
struct Counters {
    received_packets: AtomicU64,
    received_bytes: AtomicU64,
    reinjected_packets: AtomicU64,
    reinject_dropped: AtomicU64,
    rx_dropped: AtomicU64,
    rx_ring_full: AtomicU64,
    rx_fill_ring_empty: AtomicU64,
    tx_invalid_descs: AtomicU64,
    /// When the sockets' loop last went round (CLOCK_MONOTONIC ns): its liveness for the
    /// watchdog.
    heartbeat_ns: AtomicU64,
}

/// Running steering: the sockets' thread and what it reports.
pub struct Steering {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    pair: Option<ReentryPair>,
    mode: &'static str,
    reinject: String,
    sockets: u32,
    /// The pair stays at a stop: the agent no longer has the capability to delete it.
    keep_pair: bool,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("mode", &self.mode)
            .field("reinject", &self.reinject)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Opens the sockets on every receive queue of the probe's interface, sets up re-injection
    /// and starts steering. Needs CAP_NET_RAW (sockets) and CAP_NET_ADMIN (the re-entry pair);
    /// once it returns, the agent needs no capability for steering.
    pub async fn start(
        probe: &AttachedProbe,
        config: &SteerConfig,
        sink: EventSink,
    ) -> Result<Self, SteerError> {
        let iface = probe.interface();
        if !config.frames.is_power_of_two() || !(64..=65536).contains(&config.frames) {
            return Err(SteerError::Frames(config.frames));
        }
        let monitored = reentry::link(iface)
            .await?
            .ok_or_else(|| SteerError::UnknownInterface(iface.to_owned()))?;
        let ifindex = monitored.index;
        let mut maps = probe.steer_maps()?;
        let names = probe.label_names()?;
        let queues = monitored.rx_queues;
        let (pair, tx_iface, dst_mac) = match &config.reinject {
            Reinject::Host => {
                let pair = ReentryPair::create(ifindex, monitored.mtu).await?;
                let tx = pair.agent_end.clone();
                let mac = pair.host_mac;
                (Some(pair), tx, Some(mac))
            }
            Reinject::Egress(dev) if dev == iface => {
                return Err(SteerError::EgressIsMonitored(dev.clone()));
            }
            Reinject::Egress(dev) => (None, dev.clone(), None),
        };
        // The sockets live on the thread that drives them (a UMEM is not `Send`): it opens
        // them, reports back, then runs.
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready, opened) = tokio::sync::oneshot::channel();
        let setup = Setup {
            iface: iface.to_owned(),
            ifindex,
            queues,
            tx_iface: tx_iface.clone(),
            config: config.clone(),
        };
        let worker_stop = stop.clone();
        let worker_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("xdt-steer".into())
            .spawn(move || {
                let (rx, tx) = match setup.open(&mut maps) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let names = crate::labels::LabelNames::new(names);
                if setup.config.drop_capabilities
                    && let Err(e) = crate::privileges::drop_all()
                {
                    let _ = ready.send(Err(SteerError::DropCapabilities(e)));
                    return;
                }
                let zerocopy = (rx.iter().all(|q| q.zerocopy), tx.mode());
                if ready.send(Ok(zerocopy)).is_err() {
                    return;
                }
                Worker {
                    names,
                    rx,
                    tx,
                    maps,
                    dst_mac,
                    lease: setup.config.lease,
                    stop: worker_stop,
                    counters: worker_counters,
                    sink,
                    tx_dropped: 0,
                }
                .run();
            });
        let started = match thread {
            Err(e) => Err(SteerError::Thread(e)),
            Ok(thread) => match opened.await {
                Ok(Ok(zerocopy)) => Ok((thread, zerocopy)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SteerError::Thread(std::io::Error::other(
                    "the steering thread ended during setup",
                ))),
            },
        };
        let (thread, (rx_zerocopy, tx_mode)) = match started {
            Ok(v) => v,
            Err(e) => {
                if let Some(pair) = pair {
                    let _ = pair.remove().await;
                }
                return Err(e);
            }
        };
        let mode = if rx_zerocopy { "zerocopy" } else { "copy" };
        if config.mode == BindMode::Auto && !rx_zerocopy {
            info!("{iface}: the driver has no zero-copy AF_XDP; using copy mode");
        }
        let reinject = match &config.reinject {
            Reinject::Host => format!("host via {tx_iface}"),
            Reinject::Egress(dev) => format!("egress {dev}"),
        };
        info!(
            "steering on {iface}: {queues} AF_XDP socket(s) in {mode} mode, re-injecting {reinject} \
             ({tx_mode}), lease {:?}",
            config.lease
        );
        Ok(Self {
            stop,
            thread: Some(thread),
            counters,
            pair,
            mode,
            reinject,
            sockets: queues,
            keep_pair: config.drop_capabilities,
        })
    }

    #[must_use]
    pub fn stats(&self) -> SteeringStats {
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        SteeringStats {
            mode: self.mode.to_owned(),
            reinject: self.reinject.clone(),
            sockets: self.sockets,
            received_packets: get(&c.received_packets),
            received_bytes: get(&c.received_bytes),
            reinjected_packets: get(&c.reinjected_packets),
            reinject_dropped: get(&c.reinject_dropped),
            rx_dropped: get(&c.rx_dropped),
            rx_ring_full: get(&c.rx_ring_full),
            rx_fill_ring_empty: get(&c.rx_fill_ring_empty),
            tx_invalid_descs: get(&c.tx_invalid_descs),
        }
    }

    /// Stops steering (the probe passes matching packets from now on), closes the sockets and
    /// deletes the re-entry pair. Returns the final figures.
    pub async fn stop(mut self) -> SteeringStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(pair) = self.pair.take() {
            let name = pair.agent_end.clone();
            if self.keep_pair {
                info!(
                    "leaving the re-entry pair {name} to `xdt-agent --cleanup` (no capabilities)"
                );
            } else if let Err(e) = pair.remove().await {
                warn!("removing the re-entry pair {name} failed: {e}");
            }
        }
        self.stats()
    }

    /// Whether the sockets' loop went round within `max_age` (it does at least every 100 ms).
    #[must_use]
    pub fn alive(&self, max_age: Duration) -> bool {
        let beat = self.counters.heartbeat_ns.load(Ordering::Relaxed);
        let age = xdt_datapath::sys::monotonic_ns()
            .unwrap_or(0)
            .saturating_sub(beat);
        u128::from(age) <= max_age.as_nanos()
    }
}

/// What the steering thread opens.
struct Setup {
    iface: String,
    ifindex: u32,
    queues: u32,
    tx_iface: String,
    config: SteerConfig,
}

impl Setup {
    fn open(&self, maps: &mut SteerMaps) -> Result<(Vec<RxQueue>, Tx), SteerError> {
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

struct Worker {
    names: crate::labels::LabelNames,
    rx: Vec<RxQueue>,
    tx: Tx,
    maps: SteerMaps,
    dst_mac: Option<[u8; 6]>,
    lease: Duration,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    sink: EventSink,
    /// `tx.dropped()` as last counted.
    tx_dropped: u64,
}

impl Worker {
    fn run(mut self) {
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
        let mut events = Vec::new();
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
                for i in 0..n {
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
                    let empty = LabelTable::default();
                    let known = match &meta {
                        Some(m) => self.names.covering(m.label),
                        None => &empty,
                    };
                    events.push(event(
                        rx.frame,
                        meta.as_ref(),
                        q.queue,
                        known,
                        now,
                        offset,
                        ok,
                    ));
                }
                q.release();
            }
            if received > 0 {
                self.counters
                    .received_packets
                    .fetch_add(received as u64, Ordering::Relaxed);
            }
            self.flush_tx();
            if !events.is_empty() {
                (self.sink)(std::mem::take(&mut events));
            }
            if received == 0 {
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

fn event(
    frame: &[u8],
    meta: Option<&SteerMeta>,
    queue: u32,
    names: &LabelTable,
    now_ns: u64,
    offset: u64,
    reinjected: bool,
) -> Event {
    let seen = inspect::inspect(frame);
    let (timestamp_ns, label, rule) = match meta {
        Some(m) => (m.timestamp_ns, names.name(m.label), m.rule),
        None => (now_ns, String::new(), 0),
    };
    Event {
        timestamp_unix_ns: timestamp_ns.wrapping_add(offset),
        label,
        rule,
        action: "steer".to_owned(),
        rx_queue: queue,
        protocol: seen.protocol,
        src: seen.src,
        dst: seen.dst,
        src_port: seen.src_port,
        dst_port: seen.dst_port,
        ip_len: seen.ip_len,
        payload_len: seen.payload_len,
        tcp_flags: seen.tcp_flags,
        inspection: Some(Box::new(Inspection {
            frame_len: frame.len() as u32,
            agent_latency_ns: now_ns.saturating_sub(timestamp_ns),
            reinjected,
            http: seen.http,
            dns: seen.dns,
        })),
    }
}
