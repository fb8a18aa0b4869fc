//! Batching: what the main loop does every interval. The counters are read, the events and
//! flow records gathered since the last batch are taken, and the outbox gets one batch, or as
//! many as keep each frame within the wire's maximum ([`split`]).

mod split;

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Result;
use log::warn;
use xdt_datapath::attached::AttachedProbe;
use xdt_wire::{AgentStats, Batch};

use crate::{
    flows::FlowStats,
    outbox::Entry,
    shared::Shared,
    source::{Snapshot, Source},
};

/// What batching keeps from one interval to the next.
#[derive(Default)]
pub(crate) struct Batcher {
    /// The sequence number of the last batch made.
    sequence: u64,
    runtime: RuntimeSampler,
}

impl Batcher {
    /// See [`make_batches`].
    pub(crate) fn batch(
        &mut self,
        source: &Source,
        shared: &Shared,
        steering: Option<&xdt_wire::SteeringStats>,
        flows: Option<&FlowStats>,
    ) -> Result<Snapshot> {
        make_batches(
            source,
            shared,
            &mut self.sequence,
            &mut self.runtime,
            steering,
            flows,
        )
    }

    /// How many batches were made.
    pub(crate) fn batches(&self) -> u64 {
        self.sequence
    }
}

/// Batches everything pending: one batch, or as many as the events and flow records need to
/// keep every frame within the wire's maximum (all with the same counter snapshot; see
/// [`split`]). `flows` are the flow thread's figures when it runs: the batches then carry
/// flow records. Returns the counters it read (for the status line).
fn make_batches(
    source: &Source,
    shared: &Shared,
    sequence: &mut u64,
    runtime: &mut RuntimeSampler,
    steering: Option<&xdt_wire::SteeringStats>,
    flows: Option<&FlowStats>,
) -> Result<Snapshot> {
    let snapshot = source.snapshot()?;
    let events = std::mem::take(&mut *shared.pending());
    let moved = events.len();
    let records = std::mem::take(&mut *shared.pending_flows());
    let probe_ns_per_packet = source.probe().and_then(|p| runtime.sample(p));
    let taken_at_unix_ns = crate::clock::unix_ns();
    let agent = |dropped_events, unacked_batches| AgentStats {
        dropped_events,
        unacked_batches,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        probe_ns_per_packet,
        steering: steering.cloned(),
    };
    // The widest numbers any of these batches can carry: varints grow with the value.
    let template = Batch {
        sequence: u64::MAX,
        taken_at_unix_ns,
        counters: snapshot.counters.clone(),
        labels: snapshot.labels.clone(),
        events: Vec::new(),
        agent: agent(u64::MAX, u32::MAX),
    };
    let widest = flows.map(|_| widest_flow_stats());
    let groups = split::split(
        &template,
        widest.as_ref(),
        events,
        records,
        xdt_wire::MAX_FRAME,
    )?;
    if groups.unfit_events + groups.unfit_flows > 0 {
        warn!(
            "{} events and {} flow records do not fit in a frame even alone: dropped",
            groups.unfit_events, groups.unfit_flows
        );
        shared
            .pending_dropped
            .fetch_add(groups.unfit_events as u64, Ordering::Relaxed);
        shared.flows_dropped(groups.unfit_flows);
    }
    let dropped_events = shared.dropped_events();
    let flow_stats = flows.map(|f| f.wire(shared.dropped_flows()));
    shared.change_outbox_taking(moved, |outbox| {
        for piece in groups.pieces {
            *sequence += 1;
            let unacked_batches = u32::try_from(outbox.len()).unwrap_or(u32::MAX);
            outbox.push(Entry {
                batch: Batch {
                    sequence: *sequence,
                    agent: agent(dropped_events, unacked_batches),
                    ..template.clone()
                },
                events: piece.events,
                flows: flow_stats.clone().map(|stats| (piece.flows, stats)),
            });
        }
    });
    shared.new_batch.notify_one();
    Ok(snapshot)
}

/// Flow figures with the widest encoding any batch's can have (varints grow with the value).
pub(crate) fn widest_flow_stats() -> xdt_wire::FlowStats {
    xdt_wire::FlowStats {
        active: u64::MAX,
        records: u64::MAX,
        state_full: u64::MAX,
        dropped_records: u64::MAX,
        ipfix_messages: u64::MAX,
        ipfix_records: u64::MAX,
        ipfix_send_failures: u64::MAX,
    }
}

/// The probe's mean cost per packet over the last interval, from the program's run time and
/// count (which the kernel keeps only while kernel.bpf_stats_enabled=1).
#[derive(Default)]
struct RuntimeSampler {
    last: Option<(Duration, u64)>,
}

impl RuntimeSampler {
    fn sample(&mut self, probe: &AttachedProbe) -> Option<f64> {
        let now = probe.program_runtime().ok()?;
        let last = self.last.replace(now)?;
        let runs = now.1.checked_sub(last.1).filter(|r| *r > 0)?;
        let time = now.0.checked_sub(last.0)?;
        #[expect(clippy::cast_precision_loss, reason = "a mean for display")]
        Some(time.as_nanos() as f64 / runs as f64)
    }
}
