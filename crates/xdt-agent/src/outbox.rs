//! Batches waiting for central's acknowledgement, bounded in batches, in events and in flow
//! records. Events and flow records wait encoded ([`Encoded`]), and a batch's frame is made
//! from them when it is sent, by the connection's protocol version.
//!
//! Counters and label counts in a batch are cumulative, so a newer batch supersedes an older
//! one's; only events and flow records are deltas. When a bound is hit, the oldest events or
//! flow records go first (counted in `dropped_events`, `dropped_flows`), then the oldest
//! batches, whose counters the newer ones carry anyway.

mod encoded;

use std::collections::VecDeque;

pub use encoded::Encoded;
use xdt_wire::{Batch, Event, Flow, FlowStats, FrameError, frame::encode_batch};

/// A batch waiting for its acknowledgement, with the events and flow records it carries.
#[derive(Debug)]
pub struct Entry {
    /// The counters, labels and agent figures; its own `events` stay empty.
    pub batch: Batch,
    pub events: Encoded<Event>,
    /// Flow records and the agent's flow figures (protocol version 3); `None` for an agent
    /// without flows.
    pub flows: Option<(Encoded<Flow>, FlowStats)>,
}

impl Entry {
    fn flow_count(&self) -> usize {
        self.flows.as_ref().map_or(0, |(flows, _)| flows.len())
    }

    /// Drops this entry's oldest flow records (not its figures); how many went.
    fn drop_flows(&mut self, at_most: usize) -> usize {
        self.flows
            .as_mut()
            .map_or(0, |(flows, _)| flows.drop_oldest(at_most))
    }

    /// Appends this batch's frame for a connection of protocol `version` to `out`
    /// ([`Message::batch`](xdt_wire::Message::batch) picks the message; a version-2 one has no
    /// flow records).
    pub fn encode(&self, version: u16, out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode_batch(
            &self.batch,
            self.events.items(),
            self.flows
                .as_ref()
                .map(|(flows, stats)| (flows.items(), stats)),
            version,
            out,
        )
    }
}

#[derive(Debug)]
pub struct Outbox {
    batches: VecDeque<Entry>,
    max_batches: usize,
    max_events: usize,
    max_flows: usize,
    events: usize,
    flows: usize,
    /// Events dropped because a bound was hit, since the agent started.
    pub dropped_events: u64,
    /// Flow records dropped because a bound was hit, or because central speaks a protocol
    /// without them, since the agent started.
    pub dropped_flows: u64,
}

impl Outbox {
    #[must_use]
    pub fn new(max_batches: usize, max_events: usize, max_flows: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            max_batches: max_batches.max(1),
            max_events,
            max_flows,
            events: 0,
            flows: 0,
            dropped_events: 0,
            dropped_flows: 0,
        }
    }

    /// New bounds (a reload); they apply from the next [`Outbox::push`].
    pub fn set_limits(&mut self, max_batches: usize, max_events: usize) {
        self.max_batches = max_batches.max(1);
        self.max_events = max_events;
    }

    /// Adds a batch, making room first.
    pub fn push(&mut self, entry: Entry) {
        self.events += entry.events.len();
        self.flows += entry.flow_count();
        self.batches.push_back(entry);
        while self.batches.len() > self.max_batches {
            if let Some(old) = self.batches.pop_front() {
                self.forget(&old, true);
            }
        }
        // Strip events and flow records from the oldest batches until the totals fit.
        for entry in &mut self.batches {
            if self.events <= self.max_events && self.flows <= self.max_flows {
                break;
            }
            let excess = entry
                .events
                .drop_oldest(self.events.saturating_sub(self.max_events));
            self.events -= excess;
            self.dropped_events += excess as u64;
            let excess = entry.drop_flows(self.flows.saturating_sub(self.max_flows));
            self.flows -= excess;
            self.dropped_flows += excess as u64;
        }
    }

    /// Takes `entry`'s events and flow records off the totals, counting them as dropped when
    /// `lost`.
    fn forget(&mut self, entry: &Entry, lost: bool) {
        let (events, flows) = (entry.events.len(), entry.flow_count());
        self.events -= events;
        self.flows -= flows;
        if lost {
            self.dropped_events += events as u64;
            self.dropped_flows += flows as u64;
        }
    }

    /// Forgets every batch up to and including `sequence`.
    pub fn acknowledge(&mut self, sequence: u64) {
        while self
            .batches
            .front()
            .is_some_and(|e| e.batch.sequence <= sequence)
        {
            if let Some(e) = self.batches.pop_front() {
                self.forget(&e, false);
            }
        }
    }

    /// Makes batch `sequence` sendable after its frame was refused as too large: drops its
    /// events and flow records (counted), or the batch itself if it had none (its counters are
    /// cumulative: the next batch carries them). Returns how many events and records went.
    pub fn shed(&mut self, sequence: u64) -> usize {
        let Some(at) = self.position(sequence) else {
            return 0;
        };
        let entry = &mut self.batches[at];
        let (events, flows) = (entry.events.len(), entry.flow_count());
        if events + flows == 0 {
            self.batches.remove(at);
        } else {
            entry.events = Encoded::default();
            entry.drop_flows(flows);
        }
        self.events -= events;
        self.flows -= flows;
        self.dropped_events += events as u64;
        self.dropped_flows += flows as u64;
        events + flows
    }

    /// Drops the flow records and figures of batch `sequence` (counted): for a central of a
    /// protocol version without them. Returns how many records went.
    pub fn drop_flows(&mut self, sequence: u64) -> usize {
        let Some(at) = self.position(sequence) else {
            return 0;
        };
        let flows = self.batches[at].flow_count();
        self.batches[at].flows = None;
        self.flows -= flows;
        self.dropped_flows += flows as u64;
        flows
    }

    fn position(&self, sequence: u64) -> Option<usize> {
        self.batches
            .iter()
            .position(|e| e.batch.sequence == sequence)
    }

    /// The batches after `sequence`, oldest first.
    pub fn after(&self, sequence: u64) -> impl Iterator<Item = &Entry> {
        self.batches
            .iter()
            .filter(move |e| e.batch.sequence > sequence)
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

    /// Flow records held.
    #[must_use]
    pub fn flows(&self) -> usize {
        self.flows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdt_wire::{AgentStats, Event, Headers};

    pub(crate) fn event(timestamp_unix_ns: u64) -> Event {
        Event {
            timestamp_unix_ns,
            label: "l".into(),
            rule: 1,
            action: "sample".into(),
            rx_queue: 0,
            headers: Headers {
                protocol: 6,
                src: "10.0.0.1".parse().expect("ip"),
                dst: "10.0.0.2".parse().expect("ip"),
                src_port: 1,
                dst_port: 2,
                ip_len: 40,
                payload_len: 0,
                tcp_flags: 0,
            },
            inspection: None,
        }
    }

    fn batch(sequence: u64, events: usize) -> Entry {
        let mut encoded = Encoded::default();
        for n in 0..events {
            encoded
                .push(&event(sequence * 100 + n as u64))
                .expect("encode");
        }
        Entry {
            batch: Batch {
                sequence,
                taken_at_unix_ns: sequence,
                counters: vec![("total_packets".into(), sequence)],
                labels: Vec::new(),
                events: Vec::new(),
                agent: AgentStats::default(),
            },
            events: encoded,
            flows: None,
        }
    }

    /// The message `entry` sends on a connection of `version`, read back as central reads it.
    fn sent(entry: &Entry, version: u16) -> (Batch, Option<Vec<Flow>>) {
        let mut frame = Vec::new();
        entry.encode(version, &mut frame).expect("encode");
        match xdt_wire::frame::decode(&frame[xdt_wire::frame::HEADER_LEN..]).expect("decode") {
            xdt_wire::Message::Batch(batch) => (batch, None),
            xdt_wire::Message::FlowBatch(b) => (b.batch, Some(b.flows)),
            other => panic!("sent {other:?}"),
        }
    }

    fn timestamps(entry: &Entry) -> Vec<u64> {
        sent(entry, 3)
            .0
            .events
            .iter()
            .map(|e| e.timestamp_unix_ns)
            .collect()
    }

    #[test]
    fn acknowledged_batches_leave() {
        let mut o = Outbox::new(10, 100, 100);
        for s in 1..=5 {
            o.push(batch(s, 2));
        }
        o.acknowledge(3);
        assert_eq!(
            o.after(0).map(|e| e.batch.sequence).collect::<Vec<_>>(),
            [4, 5]
        );
        assert_eq!(o.events(), 4);
        assert_eq!(o.after(4).count(), 1);
        assert_eq!(o.dropped_events, 0);
    }

    #[test]
    fn too_many_events_drops_the_oldest_and_counts_them() {
        let mut o = Outbox::new(10, 5, 100);
        o.push(batch(1, 3));
        o.push(batch(2, 3));
        assert_eq!(o.events(), 5);
        assert_eq!(o.dropped_events, 1);
        let first: Vec<_> = o.after(0).map(timestamps).collect();
        assert_eq!(
            first,
            [vec![101, 102], vec![200, 201, 202]],
            "the oldest batch lost its oldest event"
        );
        o.push(batch(3, 7));
        assert_eq!(o.events(), 5);
        assert_eq!(o.dropped_events, 1 + 2 + 3 + 2);
        assert_eq!(o.len(), 3, "batches stay: their counters still count");
    }

    #[test]
    fn shedding_drops_events_then_the_batch() {
        let mut o = Outbox::new(10, 100, 100);
        o.push(batch(1, 3));
        o.push(batch(2, 0));
        assert_eq!(o.shed(1), 3);
        assert_eq!((o.len(), o.events(), o.dropped_events), (2, 0, 3));
        assert_eq!(o.shed(2), 0);
        assert_eq!(
            o.after(0).map(|e| e.batch.sequence).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(o.shed(9), 0);
    }

    #[test]
    fn too_many_batches_drops_the_oldest() {
        let mut o = Outbox::new(2, 100, 100);
        o.push(batch(1, 1));
        o.push(batch(2, 1));
        o.push(batch(3, 1));
        assert_eq!(
            o.after(0).map(|e| e.batch.sequence).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(o.dropped_events, 1);
    }

    fn with_flows(sequence: u64, events: usize, flows: u64) -> Entry {
        let flow = |i: u64| xdt_wire::Flow {
            key: xdt_wire::FlowKey {
                src: "10.0.0.1".parse().expect("ip"),
                dst: "10.0.0.2".parse().expect("ip"),
                src_port: 1,
                dst_port: 2,
                protocol: 17,
                vlans: [0, 0],
            },
            packets: sequence * 100 + i,
            bytes: 100,
            first_seen_unix_ns: 1,
            last_seen_unix_ns: 2,
            tcp_flags: 0,
            label: None,
            handshake_ns: None,
            end: xdt_wire::FlowEnd::Idle,
        };
        let mut records = Encoded::default();
        for i in 0..flows {
            records.push(&flow(i)).expect("encode");
        }
        Entry {
            flows: Some((records, xdt_wire::FlowStats::default())),
            ..batch(sequence, events)
        }
    }

    fn packets(o: &Outbox) -> Vec<Vec<u64>> {
        o.after(0)
            .map(|e| {
                sent(e, 3)
                    .1
                    .map_or(Vec::new(), |f| f.iter().map(|f| f.packets).collect())
            })
            .collect()
    }

    #[test]
    fn flow_records_are_bounded_like_events_and_every_loss_is_counted() {
        let mut o = Outbox::new(3, 100, 4);
        o.push(with_flows(1, 1, 3));
        o.push(with_flows(2, 1, 3));
        assert_eq!((o.flows(), o.dropped_flows), (4, 2));
        assert_eq!(
            packets(&o),
            [vec![102], vec![200, 201, 202]],
            "oldest first"
        );
        o.push(with_flows(3, 0, 1));
        o.push(with_flows(4, 0, 0));
        // Batch 1 left with its record: 2 + 1 more dropped; the bound holds 4.
        assert_eq!((o.len(), o.flows(), o.dropped_flows), (3, 4, 3));
        assert_eq!(
            o.drop_flows(2),
            3,
            "a version-2 central: the records go, counted"
        );
        assert_eq!((o.flows(), o.dropped_flows), (1, 6));
        assert!(o.after(1).next().is_some_and(|e| e.flows.is_none()));
        assert_eq!(o.shed(3), 1);
        assert_eq!((o.flows(), o.dropped_flows), (0, 7));
        o.acknowledge(4);
        assert_eq!((o.len(), o.flows(), o.events()), (0, 0, 0));
        assert_eq!(o.dropped_events, 1, "batch 1's event went with it");
    }
}
