//! AF_XDP steering: the agent takes the packets of `steer` rules off one socket per receive
//! queue, records what it sees in each (see [`inspect`]) and re-injects it, into the host stack
//! through a re-entry veth pair it manages ([`reentry`]) or out of a named egress interface.
//!
//! Fail-open: the probe passes instead of redirecting unless the agent's lease in `XDT_STEER` is
//! fresh and a socket is bound at the packet's queue. The lease is renewed from this module's
//! loop, so a hung loop stops steering within one lease; a killed agent's sockets leave the
//! socket map as the kernel closes them.

mod checksum;
mod config;
pub mod inspect;
mod packet;
pub mod reentry;
mod tx;
mod worker;
pub mod xsk;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use log::{info, warn};
use xdt_datapath::attached::AttachedProbe;
use xdt_wire::SteeringStats;

pub use self::{
    config::{DEFAULT_SPIN_MICROS, EventSink, Reinject, SteerConfig, SteerError},
    xsk::BindMode,
};
use self::{
    reentry::ReentryPair,
    worker::{Counters, Setup, Worker},
};

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
                if let Some(cpu) = setup.config.cpu
                    && let Err(e) = pin_to_cpu(cpu)
                {
                    let _ = ready.send(Err(e));
                    return;
                }
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
                    spin: setup.config.spin,
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
        let cpu = config
            .cpu
            .map_or_else(|| "any CPU".to_owned(), |cpu| format!("CPU {cpu}"));
        info!(
            "steering on {iface}: {queues} AF_XDP socket(s) in {mode} mode, re-injecting {reinject} \
             ({tx_mode}), lease {:?}, thread on {cpu}, spinning {:?} after a frame",
            config.lease, config.spin
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

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<(), SteerError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .map_err(|source| SteerError::Pin { cpu, source })
}
