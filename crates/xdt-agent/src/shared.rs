//! What the agent's tasks share: the outbox, the events and flow records not batched yet, the figures
//! of the status line and of each batch, and the probe's ledger of events held (which a
//! successor counts as lost if this process dies).

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use log::warn;
use tokio::sync::Notify;
use xdt_datapath::attached::AttachedProbe;
use xdt_wire::{Event, Flow};

use crate::outbox::{Encoded, Outbox};

/// Pending events or flow records of this many encoded bytes make a batch before the next tick
/// (at most every `MIN_BATCH_GAP`, run.rs), as half their bound does: half a frame, so that
/// each such batch is one frame. Under a flood of events central then takes them a frame at a
/// time, a few milliseconds of work each, and the agent batches them so too, instead of
/// several frames at once; and fewer wait in the agent (docs/benchmarks.md: a node that ran
/// central too lost steered frames while central decoded three frames at once on the steering
/// thread's CPU).
pub(crate) const EARLY_BATCH_BYTES: usize = xdt_wire::MAX_FRAME / 2;

/// State the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    outbox: Mutex<Outbox>,
    /// Events read from the ring (or steered) and not batched yet, encoded.
    pending: Mutex<Encoded<Event>>,
    /// The bound of `pending` (`--buffer-events`; a reload changes it).
    max_pending: AtomicUsize,
    /// Events dropped from `pending` because it was full (or lost by a killed predecessor).
    pub(crate) pending_dropped: AtomicU64,
    /// Flow records from the flow thread, not batched yet, and their bound.
    pending_flows: Mutex<Encoded<Flow>>,
    max_flows: usize,
    /// Flow records dropped from `pending_flows` because it was full.
    pending_flows_dropped: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    /// Whether a session with central is up (for the status line).
    pub(crate) connected: AtomicBool,
    /// Woken when a batch is in the outbox.
    pub(crate) new_batch: Notify,
    /// Woken when a batch is due before the next tick ([`Shared::append_bounded`]): the main
    /// loop batches then, so a burst of more than a bound per interval reaches the outbox (and
    /// central) instead of being dropped, in pieces of at most [`EARLY_BATCH_BYTES`].
    pub(crate) batch_due: Notify,
    /// Events held (pending or in the outbox), as recorded in the probe's ledger.
    held: AtomicU64,
    /// The probe's `XDT_AGENT` (absent for a foreign map, or a probe attached without it).
    ledger: Mutex<Option<xdt_datapath::ledger::Ledger>>,
}

impl Shared {
    /// Bounds: `max_events` events and `max_flows` flow records held, pending and in the
    /// outbox alike.
    pub(crate) fn new(max_batches: usize, max_events: usize, max_flows: usize) -> Self {
        Self {
            outbox: Mutex::new(Outbox::new(max_batches, max_events, max_flows)),
            pending: Mutex::new(Encoded::default()),
            max_pending: AtomicUsize::new(max_events),
            pending_dropped: AtomicU64::new(0),
            pending_flows: Mutex::new(Encoded::default()),
            max_flows,
            pending_flows_dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            new_batch: Notify::new(),
            batch_due: Notify::new(),
            held: AtomicU64::new(0),
            ledger: Mutex::new(None),
        }
    }

    pub(crate) fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, Encoded<Event>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New bounds (a reload): `max_batches` batches in the outbox, `max_events` events pending
    /// and `max_events` in the outbox, as [`Shared::new`] sets them.
    pub(crate) fn set_limits(&self, max_batches: usize, max_events: usize) {
        self.change_outbox(|o| o.set_limits(max_batches, max_events));
        self.max_pending.store(max_events, Ordering::Relaxed);
    }

    pub(crate) fn dropped_events(&self) -> u64 {
        self.outbox().dropped_events + self.pending_dropped.load(Ordering::Relaxed)
    }

    /// Flow records for the next batch, dropping (and counting) the oldest beyond the bound.
    pub(crate) fn push_flows(&self, fresh: impl IntoIterator<Item = Flow>) {
        let mut encoded = Encoded::default();
        let unfit = encode_all(fresh, &mut encoded, "flow record");
        let (_, _, excess) =
            self.append_bounded(&mut self.pending_flows(), &mut encoded, self.max_flows);
        self.pending_flows_dropped
            .fetch_add((excess + unfit) as u64, Ordering::Relaxed);
    }

    /// Moves `fresh` to the end of `pending` and drops the oldest beyond `bound`; wakes the main
    /// loop to batch when that made `pending` due (once per crossing: the batch empties it):
    /// half of `bound`, or [`EARLY_BATCH_BYTES`]. Returns `pending`'s length before and after,
    /// and how many were dropped.
    fn append_bounded<T>(
        &self,
        pending: &mut Encoded<T>,
        fresh: &mut Encoded<T>,
        bound: usize,
    ) -> (usize, usize, usize) {
        let due = |pending: &Encoded<T>| {
            pending.len() >= bound.div_ceil(2).max(1) || pending.byte_len() >= EARLY_BATCH_BYTES
        };
        let before = pending.len();
        let was_due = due(pending);
        pending.append(fresh);
        let excess = pending.len().saturating_sub(bound);
        pending.drop_oldest(excess);
        let after = pending.len();
        if !was_due && due(pending) {
            self.batch_due.notify_one();
        }
        (before, after, excess)
    }

    pub(crate) fn pending_flows(&self) -> std::sync::MutexGuard<'_, Encoded<Flow>> {
        self.pending_flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Flow records dropped for a bound (pending or in the outbox) or a central without flows.
    pub(crate) fn dropped_flows(&self) -> u64 {
        self.outbox().dropped_flows + self.pending_flows_dropped.load(Ordering::Relaxed)
    }

    /// Counts flow records dropped before they reached the outbox (too large for a frame).
    pub(crate) fn flows_dropped(&self, n: usize) {
        self.pending_flows_dropped
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Changes the outbox and records the change in events held.
    pub(crate) fn change_outbox<T>(&self, change: impl FnOnce(&mut Outbox) -> T) -> T {
        self.change_outbox_taking(0, change)
    }

    /// [`Shared::change_outbox`] with `taken` events that left `pending` for it, recorded in
    /// the same update.
    pub(crate) fn change_outbox_taking<T>(
        &self,
        taken: usize,
        change: impl FnOnce(&mut Outbox) -> T,
    ) -> T {
        let mut outbox = self.outbox();
        let before = outbox.events();
        let result = change(&mut outbox);
        let after = outbox.events();
        drop(outbox);
        self.held_changed(after, before + taken);
        result
    }

    /// Records `added` events more and `removed` fewer held, in the probe's ledger too: what a
    /// successor counts as lost if this process dies now. Written under the ledger's lock with the latest total, so
    /// the map never goes back to an older figure.
    fn held_changed(&self, added: usize, removed: usize) {
        if added == removed {
            return;
        }
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some((held + added as u64).saturating_sub(removed as u64))
            });
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ledger) = ledger.as_mut() {
            let held = self.held.load(Ordering::Relaxed);
            if let Err(e) = ledger.set_undelivered(held) {
                warn!("updating the agent ledger failed: {e}");
            }
        }
    }
}

/// Opens the probe's ledger and takes over from the previous agent: the events it held
/// undelivered when it ended are lost, and counted here (`dropped_events`).
pub(crate) fn take_over_ledger(probe: &AttachedProbe, shared: &Shared) {
    let iface = probe.interface();
    match probe.ledger() {
        Ok(Some(mut ledger)) => {
            match ledger.undelivered() {
                Ok(0) => {}
                Ok(lost) => {
                    warn!(
                        "the previous agent of {iface} ended holding {lost} events central never \
                         acknowledged (killed, or stopped before central took them): lost, \
                         counted in dropped_events"
                    );
                    shared.pending_dropped.fetch_add(lost, Ordering::Relaxed);
                }
                Err(e) => warn!("reading the agent ledger failed: {e}"),
            }
            if let Err(e) = ledger.set_undelivered(0) {
                warn!("resetting the agent ledger failed: {e}");
            }
            *shared.ledger.lock().unwrap_or_else(PoisonError::into_inner) = Some(ledger);
        }
        Ok(None) => warn!(
            "the probe on {iface} was attached without an agent ledger (XDT_AGENT): events a \
             killed agent held cannot be counted; attach it again to have one"
        ),
        Err(e) => warn!("opening the agent ledger failed: {e}"),
    }
}

/// Moves `fresh` events to the next batch, dropping (and counting) the oldest beyond
/// `--buffer-events`; `fresh` is left empty.
pub(crate) fn push_pending(shared: &Shared, fresh: &mut Encoded<Event>) {
    let max_pending = shared.max_pending.load(Ordering::Relaxed);
    let (before, after, excess) = shared.append_bounded(&mut shared.pending(), fresh, max_pending);
    if excess > 0 {
        shared
            .pending_dropped
            .fetch_add(excess as u64, Ordering::Relaxed);
    }
    shared.held_changed(after, before);
}

/// [`push_pending`], with `unfit` more `what` events that did not encode: dropped, and counted
/// (none are seen: an event is some 50 to 500 bytes, a frame holds a MiB).
pub(crate) fn push_events(shared: &Shared, fresh: &mut Encoded<Event>, unfit: u64, what: &str) {
    if unfit > 0 {
        warn!("{unfit} {what} events did not encode: dropped (counted)");
        shared.pending_dropped.fetch_add(unfit, Ordering::Relaxed);
    }
    if !fresh.is_empty() {
        push_pending(shared, fresh);
    }
}

/// Encodes `items` into `into`; returns how many could not be (each more than a frame holds),
/// with a warning.
pub(crate) fn encode_all<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    into: &mut Encoded<T>,
    what: &str,
) -> usize {
    let mut unfit = 0;
    for item in items {
        if let Err(e) = into.push(&item) {
            if unfit == 0 {
                warn!("a {what} cannot be sent, dropped (counted): {e}");
            }
            unfit += 1;
        }
    }
    unfit
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// `n` encoded events with labels of `label_len` bytes.
    fn events(n: usize, label_len: usize) -> Encoded<Event> {
        let mut event = Event::blank("sample");
        event.label = "x".repeat(label_len);
        let mut encoded = Encoded::default();
        for _ in 0..n {
            encoded.push(&event).expect("an event encodes");
        }
        encoded
    }

    /// Whether the main loop was woken to batch (and takes that wake-up).
    fn woken(shared: &Shared) -> bool {
        shared.batch_due.notified().now_or_never().is_some()
    }

    #[test]
    fn half_the_bound_pending_wakes_the_main_loop_once() {
        let shared = Shared::new(10, 1000, 10);
        push_pending(&shared, &mut events(499, 1));
        assert!(!woken(&shared));
        push_pending(&shared, &mut events(1, 1));
        assert!(woken(&shared));
        push_pending(&shared, &mut events(100, 1));
        assert!(!woken(&shared), "woken again before a batch took them");
    }

    #[test]
    fn half_a_frame_pending_wakes_the_main_loop_below_half_the_bound() {
        let shared = Shared::new(10, 100_000, 10);
        // Events of about a KiB: some 500 of them make half a frame, far below 50,000.
        let each = events(1, 1000).byte_len();
        let below = (EARLY_BATCH_BYTES - 1) / each;
        push_pending(&shared, &mut events(below, 1000));
        assert!(!woken(&shared));
        push_pending(&shared, &mut events(1, 1000));
        assert!(woken(&shared));
        assert!(shared.pending().len() < 1000, "{}", shared.pending().len());
    }
}
