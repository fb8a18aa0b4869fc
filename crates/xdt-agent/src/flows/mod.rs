//! Flows: the agent drains the probe's flow tables every interval, keeps the flows in its own
//! bounded state, ends them (idle, active timeout, FIN or RST) and exports their deltas to
//! central (in the agent's batches) and as IPFIX (docs/flows.md).
//!
//! A thread of its own does the work: each drain waits for an RCU grace period (milliseconds),
//! which the main loop's runtime must not wait for. The order that loses no count is
//! `xdt_datapath::flows`': switch the generation, wait, drain the old table. `state` is pure,
//! `ipfix` encodes, `export` sends; this file runs them.

pub mod export;
pub mod ipfix;
pub mod state;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use xdt_common::flows::{FlowKey, FlowRecord};
use xdt_datapath::{
    attached::AttachedProbe,
    flows::{FlowTables, GracePeriod},
};

use crate::labels::LabelNames;
pub use export::{IpfixExporter, IpfixStats};
pub use state::{FlowDelta, FlowEnd, FlowState, Limits};

/// The flow options of the agent's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowConfig {
    /// A flow without packets for this long ends.
    pub idle: Duration,
    /// A flow this long exports a delta and goes on.
    pub active: Duration,
    /// Flows the agent's state holds at most; a new flow beyond is exported at once
    /// (flowEndReason 5, lack of resources) and counted.
    pub max_flows: usize,
    /// IPFIX collectors, `HOST:PORT`.
    pub ipfix: Vec<String>,
    /// How often templates are sent again.
    pub template_refresh: Duration,
    /// The observation domain id; the interface's index when `None`.
    pub domain: Option<u32>,
    /// Flow records for central kept unacknowledged or not yet batched, together (oldest
    /// dropped first, counted).
    pub buffer: usize,
}

impl Default for FlowConfig {
    /// The agent's defaults (`--flow-idle 15 --flow-active 60 --flow-max 262144`, templates
    /// every 60 s, no collector, `--buffer-flows 100000`).
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(15),
            active: Duration::from_mins(1),
            max_flows: 262_144,
            ipfix: Vec::new(),
            template_refresh: Duration::from_mins(1),
            domain: None,
            buffer: 100_000,
        }
    }
}

/// What the flow thread counted, cumulative since the agent started.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Records drained from the probe's tables.
    pub drained: AtomicU64,
    /// Flows held in the agent's state now.
    pub active: AtomicU64,
    /// Deltas exported (each ended flow, each active timeout).
    pub deltas: AtomicU64,
    /// New flows that found the state full, exported at once instead of kept.
    pub overflowed: AtomicU64,
    /// Drains or switches that failed (logged).
    pub errors: AtomicU64,
    pub ipfix: IpfixStats,
}

impl FlowStats {
    /// The figures as central gets them, with the records the agent dropped on their way.
    #[must_use]
    pub fn wire(&self, dropped_records: u64) -> xdt_wire::FlowStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        xdt_wire::FlowStats {
            active: get(&self.active),
            records: get(&self.deltas),
            state_full: get(&self.overflowed),
            dropped_records,
            ipfix_messages: get(&self.ipfix.messages),
            ipfix_records: get(&self.ipfix.records),
            ipfix_send_failures: get(&self.ipfix.failed_messages),
        }
    }
}

/// Where the flow thread hands each round's records for central.
pub type FlowSink = Box<dyn FnMut(Vec<xdt_wire::Flow>) + Send>;

/// What the flow thread needs, opened while the agent still has its capabilities, and the
/// buffers it reuses from one round to the next.
pub struct Opened {
    tables: FlowTables,
    grace: GracePeriod,
    labels: LabelNames,
    ifindex: u32,
    ipfix: Option<IpfixExporter>,
    state: FlowState,
    drained: Vec<(FlowKey, FlowRecord)>,
    deltas: Vec<FlowDelta>,
    sink: Option<FlowSink>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("tables", &self.tables)
            .field("ifindex", &self.ifindex)
            .finish_non_exhaustive()
    }
}

/// Opens the flow tables, the grace-period map and the IPFIX sockets; `None` when the probe
/// was attached without flows (nothing to drain).
pub fn open(probe: &AttachedProbe, config: &FlowConfig) -> Result<Option<Opened>> {
    let tables = match probe.flows() {
        Ok(tables) => tables,
        Err(xdt_datapath::Error::FlowsOff { .. }) => {
            if !config.ipfix.is_empty() {
                warn!(
                    "--ipfix is set but the probe on {} has no flow tables: nothing to \
                     export until it is attached with --flows N",
                    probe.interface()
                );
            }
            return Ok(None);
        }
        Err(e) => return Err(e).context("opening the flow tables"),
    };
    let ifindex = probe.maps().config()?.attachment.ifindex;
    Opened::new(tables, probe.label_names()?, ifindex, config).map(Some)
}

impl Opened {
    /// From the flow tables and label names of a probe on interface `ifindex`: creates the
    /// grace-period map (CAP_BPF) and the IPFIX sockets of `config`.
    pub fn new(
        tables: FlowTables,
        labels: xdt_datapath::labels::LabelNames,
        ifindex: u32,
        config: &FlowConfig,
    ) -> Result<Self> {
        let grace =
            GracePeriod::new().context("creating the grace-period map of the flow drain")?;
        let ipfix = if config.ipfix.is_empty() {
            None
        } else {
            Some(IpfixExporter::new(
                &config.ipfix,
                config.domain.unwrap_or(ifindex),
                config.template_refresh,
                Duration::from_secs(1),
            )?)
        };
        Ok(Self {
            tables,
            grace,
            labels: LabelNames::new(labels),
            ifindex,
            ipfix,
            state: FlowState::new(Limits {
                idle_ns: nanos(config.idle),
                active_ns: nanos(config.active),
                max_flows: config.max_flows,
            }),
            drained: Vec::new(),
            deltas: Vec::new(),
            sink: None,
        })
    }

    /// Hands each round's records to `sink` too (for central), as wire records.
    #[must_use]
    pub fn with_sink(mut self, sink: FlowSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Drains the table nobody writes (left full by an agent killed between its switch and
    /// its drain), as the first thing an agent does.
    pub fn drain_left_behind(&mut self, stats: &FlowStats) {
        self.drained.clear();
        match self.tables.generation() {
            Ok(current) => {
                drain(&self.tables, current ^ 1, &mut self.drained, stats);
                self.settle(stats, false);
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!("reading the flow generation: {e}");
            }
        }
    }

    /// One interval: switch, wait, drain, merge, expire (or, when `last`, end everything),
    /// export.
    pub fn round(&mut self, stats: &FlowStats, last: bool) {
        self.drained.clear();
        match self.tables.switch() {
            Ok(old) => {
                if let Err(e) = self.grace.wait() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "waiting for the flow table's grace period: {e}; draining one round \
                         later"
                    );
                } else {
                    drain(&self.tables, old, &mut self.drained, stats);
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!("switching the flow generation: {e}");
            }
        }
        self.settle(stats, last);
    }

    /// The deltas the latest round exported.
    #[must_use]
    pub fn deltas(&self) -> &[FlowDelta] {
        &self.deltas
    }

    /// Merges what was drained, ends what is due (everything when `last`) and exports it.
    fn settle(&mut self, stats: &FlowStats, last: bool) {
        self.deltas.clear();
        self.state.merge(&self.drained, &mut self.deltas);
        if last {
            self.state.end_all(&mut self.deltas);
        } else if let Ok(now) = xdt_datapath::sys::monotonic_ns() {
            self.state.expire(now, &mut self.deltas);
        }
        stats
            .active
            .store(self.state.len() as u64, Ordering::Relaxed);
        let overflowed = self
            .deltas
            .iter()
            .filter(|d| d.reason == FlowEnd::LackOfResources)
            .count();
        stats
            .overflowed
            .fetch_add(overflowed as u64, Ordering::Relaxed);
        stats
            .deltas
            .fetch_add(self.deltas.len() as u64, Ordering::Relaxed);
        if self.ipfix.is_none() && self.sink.is_none() {
            return;
        }
        let unix_offset_ns = crate::clock::monotonic_to_unix_offset();
        // Each delta's label name, once for both exports: IPFIX reads them, central's records
        // take them.
        let names: Vec<String> = self
            .deltas
            .iter()
            .map(|d| match d.label {
                0 => String::new(),
                id => self.labels.covering(id).name(id),
            })
            .collect();
        if let Some(ipfix) = &mut self.ipfix {
            let context = ipfix::Context {
                unix_offset_ns,
                ingress_interface: self.ifindex,
            };
            ipfix.export(&self.deltas, &names, &context, &stats.ipfix);
        }
        if let Some(sink) = &mut self.sink {
            sink(
                self.deltas
                    .iter()
                    .zip(names)
                    .map(|(d, name)| d.to_wire(name, unix_offset_ns))
                    .collect(),
            );
        }
    }
}

/// The running flow thread.
#[derive(Debug)]
pub struct Flows {
    thread: JoinHandle<()>,
    stop: mpsc::Sender<()>,
    stats: Arc<FlowStats>,
}

impl Flows {
    /// Starts the thread: a drain every `interval`.
    pub fn start(opened: Opened, interval: Duration) -> Result<Self> {
        let stats = Arc::new(FlowStats::default());
        let (stop, stopped) = mpsc::channel();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("xdt-flows".into())
            .spawn(move || run(opened, interval, &stopped, &thread_stats))
            .context("starting the flow thread")?;
        Ok(Self {
            thread,
            stop,
            stats,
        })
    }

    #[must_use]
    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    /// The counters, for a reader that outlives this handle (the status line).
    #[must_use]
    pub fn shared_stats(&self) -> Arc<FlowStats> {
        self.stats.clone()
    }

    /// Whether the thread still runs (it ends only when stopped or on a panic).
    #[must_use]
    pub fn alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Drains once more, ends every flow (flowEndReason 4) and exports it, then returns.
    #[must_use]
    pub fn stop(self) -> Arc<FlowStats> {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            warn!("the flow thread panicked");
        }
        self.stats
    }
}

/// The thread: drain, merge, expire and export every interval; the last round on stop.
fn run(mut opened: Opened, interval: Duration, stopped: &mpsc::Receiver<()>, stats: &FlowStats) {
    opened.drain_left_behind(stats);
    info!(
        "flows: draining every {interval:?}{}",
        opened.ipfix.as_ref().map_or(String::new(), |x| format!(
            ", IPFIX observation domain {}",
            x.domain()
        ))
    );
    loop {
        let stop = !matches!(
            stopped.recv_timeout(interval),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        opened.round(stats, stop);
        if stop {
            return;
        }
    }
}

fn drain(
    tables: &FlowTables,
    generation: u32,
    drained: &mut Vec<(FlowKey, FlowRecord)>,
    stats: &FlowStats,
) {
    let before = drained.len();
    if let Err(e) = tables.drain_table(generation, drained) {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        warn!("draining flow table {generation}: {e}; the rest is drained at its next turn");
    }
    stats
        .drained
        .fetch_add((drained.len() - before) as u64, Ordering::Relaxed);
}

/// `N active, M exported[, K overflowed][; IPFIX: S messages, F failed (L records lost)]`.
#[must_use]
pub fn summary(stats: &FlowStats) -> String {
    use std::fmt::Write as _;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut line = format!(
        "{} active, {} exported",
        get(&stats.active),
        get(&stats.deltas)
    );
    if get(&stats.overflowed) > 0 {
        let _ = write!(
            line,
            ", {} beyond the state's bound",
            get(&stats.overflowed)
        );
    }
    if get(&stats.errors) > 0 {
        let _ = write!(line, ", {} drain errors", get(&stats.errors));
    }
    let ipfix = &stats.ipfix;
    if get(&ipfix.messages) + get(&ipfix.failed_messages) > 0 {
        let _ = write!(line, "; IPFIX {} messages", get(&ipfix.messages));
        if get(&ipfix.failed_messages) + get(&ipfix.lost_records) > 0 {
            let _ = write!(
                line,
                ", {} failed ({} records lost)",
                get(&ipfix.failed_messages),
                get(&ipfix.lost_records)
            );
        }
    }
    line
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
