//! Batches waiting for central's acknowledgement, bounded in batches and in events.
//!
//! Counters and label counts in a batch are cumulative, so a newer batch supersedes an older
//! one's; only events are deltas. When a bound is hit, the oldest events go first (counted in
//! `dropped_events`), then the oldest batches, whose counters the newer ones carry anyway.

use std::collections::VecDeque;

use xdt_wire::Batch;

#[derive(Debug)]
pub struct Outbox {
    batches: VecDeque<Batch>,
    max_batches: usize,
    max_events: usize,
    events: usize,
    /// Events dropped because a bound was hit, since the agent started.
    pub dropped_events: u64,
}

impl Outbox {
    #[must_use]
    pub fn new(max_batches: usize, max_events: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            max_batches: max_batches.max(1),
            max_events,
            events: 0,
            dropped_events: 0,
        }
    }

    /// New bounds (a reload); they apply from the next [`Outbox::push`].
    pub fn set_limits(&mut self, max_batches: usize, max_events: usize) {
        self.max_batches = max_batches.max(1);
        self.max_events = max_events;
    }

    /// Adds a batch, making room first.
    pub fn push(&mut self, batch: Batch) {
        self.events += batch.events.len();
        self.batches.push_back(batch);
        while self.batches.len() > self.max_batches {
            if let Some(old) = self.batches.pop_front() {
                self.events -= old.events.len();
                self.dropped_events += old.events.len() as u64;
            }
        }
        // Strip events from the oldest batches until the total fits.
        for batch in &mut self.batches {
            if self.events <= self.max_events {
                break;
            }
            let excess = (self.events - self.max_events).min(batch.events.len());
            batch.events.drain(..excess);
            self.events -= excess;
            self.dropped_events += excess as u64;
        }
    }

    /// Forgets every batch up to and including `sequence`.
    pub fn acknowledge(&mut self, sequence: u64) {
        while self.batches.front().is_some_and(|b| b.sequence <= sequence) {
            if let Some(b) = self.batches.pop_front() {
                self.events -= b.events.len();
            }
        }
    }

    /// Makes batch `sequence` sendable after its frame was refused as too large: drops its
    /// events (counted), or the batch itself if it had none (its counters are cumulative: the
    /// next batch carries them). Returns how many events went.
    pub fn shed(&mut self, sequence: u64) -> usize {
        let Some(at) = self.batches.iter().position(|b| b.sequence == sequence) else {
            return 0;
        };
        let dropped = self.batches[at].events.len();
        if dropped == 0 {
            self.batches.remove(at);
        } else {
            self.batches[at].events = Vec::new();
        }
        self.events -= dropped;
        self.dropped_events += dropped as u64;
        dropped
    }

    /// The batches after `sequence`, oldest first.
    pub fn after(&self, sequence: u64) -> impl Iterator<Item = &Batch> {
        self.batches.iter().filter(move |b| b.sequence > sequence)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    #[must_use]
    pub fn events(&self) -> usize {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdt_wire::{AgentStats, Event};

    fn batch(sequence: u64, events: usize) -> Batch {
        let event = Event {
            timestamp_unix_ns: sequence,
            label: "l".into(),
            rule: 1,
            action: "sample".into(),
            rx_queue: 0,
            protocol: 6,
            src: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.2".parse().expect("ip"),
            src_port: 1,
            dst_port: 2,
            ip_len: 40,
            payload_len: 0,
            tcp_flags: 0,
            inspection: None,
        };
        Batch {
            sequence,
            taken_at_unix_ns: sequence,
            counters: vec![("total_packets".into(), sequence)],
            labels: Vec::new(),
            events: vec![event; events],
            agent: AgentStats::default(),
        }
    }

    #[test]
    fn acknowledged_batches_leave() {
        let mut o = Outbox::new(10, 100);
        for s in 1..=5 {
            o.push(batch(s, 2));
        }
        o.acknowledge(3);
        assert_eq!(o.after(0).map(|b| b.sequence).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(o.events(), 4);
        assert_eq!(o.after(4).count(), 1);
        assert_eq!(o.dropped_events, 0);
    }

    #[test]
    fn too_many_events_drops_the_oldest_and_counts_them() {
        let mut o = Outbox::new(10, 5);
        o.push(batch(1, 3));
        o.push(batch(2, 3));
        assert_eq!(o.events(), 5);
        assert_eq!(o.dropped_events, 1);
        let first: Vec<_> = o.after(0).map(|b| b.events.len()).collect();
        assert_eq!(first, [2, 3], "the oldest batch lost its oldest event");
        o.push(batch(3, 7));
        assert_eq!(o.events(), 5);
        assert_eq!(o.dropped_events, 1 + 2 + 3 + 2);
        assert_eq!(o.len(), 3, "batches stay: their counters still count");
    }

    #[test]
    fn shedding_drops_events_then_the_batch() {
        let mut o = Outbox::new(10, 100);
        o.push(batch(1, 3));
        o.push(batch(2, 0));
        assert_eq!(o.shed(1), 3);
        assert_eq!((o.len(), o.events(), o.dropped_events), (2, 0, 3));
        assert_eq!(o.shed(2), 0);
        assert_eq!(o.after(0).map(|b| b.sequence).collect::<Vec<_>>(), [1]);
        assert_eq!(o.shed(9), 0);
    }

    #[test]
    fn too_many_batches_drops_the_oldest() {
        let mut o = Outbox::new(2, 100);
        o.push(batch(1, 1));
        o.push(batch(2, 1));
        o.push(batch(3, 1));
        assert_eq!(o.after(0).map(|b| b.sequence).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(o.dropped_events, 1);
    }
}
