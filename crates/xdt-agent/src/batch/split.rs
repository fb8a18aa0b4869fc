//! Cutting one interval's events and flow records into batches whose frames fit the wire's
//! maximum ([`xdt_wire::MAX_FRAME`]). A count of events is no bound on bytes: a steered DNS
//! query carries a name of up to 255 bytes and an HTTP request its path, so a burst of 8,000 such
//! packets in one interval once made a single 2 MB batch that no connection could carry, and
//! the agent retried it until it left the buffer, an hour later. Flow records add their labels
//! and are also bounded in count per message ([`xdt_wire::MAX_FLOWS`]).
//!
//! Sizes are exact, not estimated: postcard is concatenative, so a message is its fields without
//! the events and flows, the varint of each list's count, then each item's own encoding (which
//! the agent holds: [`Encoded`]).

use xdt_wire::{
    Batch, Event, Flow, FlowBatch, FlowStats, FrameError, MAX_FLOWS, Message, frame::encoded_len,
};

use crate::outbox::Encoded;

/// Room for the varint of a list's count (a u64 varint takes at most 10 bytes).
const COUNT_ROOM: usize = 10;

/// The events and flow records of one batch.
#[derive(Debug, Default)]
pub(crate) struct Piece {
    pub events: Encoded<Event>,
    pub flows: Encoded<Flow>,
}

impl Piece {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.flows.is_empty()
    }
}

/// One interval's events and flow records cut into batches, in order.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    /// At least one piece (possibly empty), so counters always go.
    pub pieces: Vec<Piece>,
    /// Events and flow records that do not fit in a frame even alone (with the batch's
    /// counters and labels): dropped, for the caller to count.
    pub unfit_events: usize,
    pub unfit_flows: usize,
}

/// Cuts `events`, then `flows`, into pieces such that `template` (the batch's fields; its own
/// events are ignored) carrying any one piece encodes in at most `max_payload` bytes, with at
/// most [`MAX_FLOWS`] flow records: as a `FlowBatch` with `flow_stats` when given, else as a
/// `Batch`, where flow records have nowhere to go and are all unfit. Give `template` and
/// `flow_stats` the widest values their numbers can take in any of the batches (sequence,
/// dropped events, ...): varints grow with the value.
pub(crate) fn split(
    template: &Batch,
    flow_stats: Option<&FlowStats>,
    mut events: Encoded<Event>,
    mut flows: Encoded<Flow>,
    max_payload: usize,
) -> Result<Groups, FrameError> {
    let batch = Batch {
        events: Vec::new(),
        ..template.clone()
    };
    let (empty, lists) = match flow_stats {
        Some(stats) => (
            Message::FlowBatch(FlowBatch {
                batch,
                flows: Vec::new(),
                stats: stats.clone(),
            }),
            2,
        ),
        None => (Message::Batch(batch), 1),
    };
    let mut out = Groups::default();
    if lists == 1 {
        out.unfit_flows = flows.len();
    }
    if lists == 1 {
        flows.clear();
    }
    // Each empty list encodes as one byte, its count; COUNT_ROOM stands in for it.
    let fixed = encoded_len(&empty)? - lists + lists * COUNT_ROOM;
    let Some(budget) = max_payload.checked_sub(fixed) else {
        // Counters and labels alone exceed a frame (more labels than the probe can hold):
        // nothing can carry the events or flows.
        out.unfit_events = events.len();
        out.unfit_flows += flows.len();
        out.pieces.push(Piece::default());
        return Ok(out);
    };
    // Everything in one piece (below 24,000 sampled events a frame): the lists as they are.
    if events.byte_len() + flows.byte_len() <= budget && flows.len() <= MAX_FLOWS {
        out.pieces.push(Piece { events, flows });
        return Ok(out);
    }
    let mut current = Piece::default();
    let mut used = 0;
    let room = |left: usize| left.min(budget);
    current.events.reserve(room(events.byte_len()));
    while let Some(len) = events.first_len() {
        if len > budget {
            out.unfit_events += events.drop_oldest(1);
            continue;
        }
        if used + len > budget {
            out.pieces.push(std::mem::take(&mut current));
            current.events.reserve(room(events.byte_len()));
            used = 0;
        }
        used += len;
        events.move_first(&mut current.events);
    }
    while let Some(len) = flows.first_len() {
        if len > budget {
            out.unfit_flows += flows.drop_oldest(1);
            continue;
        }
        if used + len > budget || current.flows.len() == MAX_FLOWS {
            out.pieces.push(std::mem::take(&mut current));
            used = 0;
        }
        used += len;
        flows.move_first(&mut current.flows);
    }
    if !current.is_empty() || out.pieces.is_empty() {
        out.pieces.push(current);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use xdt_wire::{AgentStats, DnsQuery, FlowEnd, Headers, Inspection, MAX_FRAME, frame};

    use super::*;

    fn encoded<T: serde::Serialize>(items: &[T]) -> Encoded<T> {
        let mut list = Encoded::default();
        for item in items {
            list.push(item).expect("encode");
        }
        list
    }

    /// The frame of batch `n` carrying `piece` (a `FlowBatch` when given flow figures), as the
    /// uplink makes it, and its events and flow records as central reads them; panics if it is
    /// over the maximum.
    fn sent(n: usize, piece: &Piece, stats: Option<&FlowStats>) -> (usize, Vec<Event>, Vec<Flow>) {
        let mut out = Vec::new();
        frame::encode_batch(
            &template(),
            piece.events.items(),
            stats.map(|s| (piece.flows.items(), s)),
            xdt_wire::PROTOCOL_VERSION,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("batch {n} of {} events: {e}", piece.events.len()));
        match frame::decode(&out[frame::HEADER_LEN..]).expect("decode") {
            Message::Batch(b) => (out.len(), b.events, Vec::new()),
            Message::FlowBatch(f) => (out.len(), f.batch.events, f.flows),
            other => panic!("{other:?}"),
        }
    }

    fn dns_event(i: u64, name_len: usize) -> Event {
        Event {
            timestamp_unix_ns: 1_700_000_000_000_000_000 + i,
            label: "dns".into(),
            rule: 3,
            action: "steer".into(),
            rx_queue: 0,
            headers: Headers {
                protocol: 17,
                src: "10.0.0.1".parse().expect("ip"),
                dst: "10.0.0.2".parse().expect("ip"),
                src_port: 40000,
                dst_port: 53,
                ip_len: 300,
                payload_len: 272,
                tcp_flags: 0,
            },
            inspection: Some(Box::new(Inspection {
                frame_len: 314,
                agent_latency_ns: 12_345,
                reinjected: true,
                http: None,
                dns: Some(DnsQuery {
                    name: "a".repeat(name_len),
                    qtype: 1,
                }),
            })),
        }
    }

    fn template() -> Batch {
        Batch {
            sequence: u64::MAX,
            taken_at_unix_ns: 1_700_000_000_000_000_000,
            counters: vec![("total_packets".into(), u64::MAX); 30],
            labels: Vec::new(),
            events: Vec::new(),
            agent: AgentStats {
                dropped_events: u64::MAX,
                unacked_batches: u32::MAX,
                reconnects: u64::MAX,
                probe_ns_per_packet: Some(20.0),
                steering: None,
            },
        }
    }

    /// The burst of the report: 8,000 steered DNS queries with 250-byte names in one interval
    /// (about 2 MB of events). Every batch must encode within the maximum, and together they
    /// must carry every event once, in order.
    #[test]
    fn a_burst_of_long_dns_names_is_cut_into_frames_that_fit() {
        let events: Vec<Event> = (0..8000).map(|i| dns_event(i, 250)).collect();
        let total: usize = events.iter().map(|e| encoded_len(e).expect("len")).sum();
        assert!(total > 2 * MAX_FRAME - MAX_FRAME / 10, "{total} bytes");
        let groups = split(
            &template(),
            None,
            encoded(&events),
            Encoded::default(),
            MAX_FRAME,
        )
        .expect("split");
        assert_eq!(groups.unfit_events, 0);
        assert!(groups.pieces.len() >= 2, "{} batches", groups.pieces.len());
        let mut joined = Vec::new();
        for (n, piece) in groups.pieces.iter().enumerate() {
            let (len, events, _) = sent(n, piece, None);
            // Filled, not merely under the limit: within one event of the maximum.
            if n + 1 < groups.pieces.len() {
                assert!(len > MAX_FRAME - 400, "batch {n}: {len} bytes");
            }
            joined.extend(events);
        }
        assert_eq!(joined, events);
    }

    #[test]
    fn no_events_still_makes_one_batch_and_unfit_events_are_counted() {
        let groups = split(
            &template(),
            None,
            Encoded::default(),
            Encoded::default(),
            MAX_FRAME,
        )
        .expect("split");
        assert_eq!((groups.pieces.len(), groups.unfit_events), (1, 0));
        assert!(groups.pieces[0].is_empty());

        // A frame limit that holds the counters and one short event, not a long one.
        let fixed = encoded_len(&Message::Batch(template())).expect("len") - 1 + COUNT_ROOM;
        let short = dns_event(1, 10);
        let limit = fixed + encoded_len(&short).expect("len");
        let groups = split(
            &template(),
            None,
            encoded(&[short.clone(), dns_event(2, 200), short.clone()]),
            Encoded::default(),
            limit,
        )
        .expect("split");
        assert_eq!(groups.unfit_events, 1);
        let events: Vec<_> = groups
            .pieces
            .iter()
            .enumerate()
            .map(|(n, p)| sent(n, p, None).1)
            .collect();
        assert_eq!(events, vec![vec![short.clone()], vec![short]]);

        // Counters that do not fit at all: every event is unfit, the batch still goes.
        let groups = split(
            &template(),
            None,
            encoded(&[dns_event(3, 1)]),
            Encoded::default(),
            10,
        )
        .expect("split");
        assert_eq!((groups.pieces.len(), groups.unfit_events), (1, 1));
    }

    fn flow(i: u32, label_len: usize) -> Flow {
        Flow {
            key: xdt_wire::FlowKey {
                src: std::net::Ipv6Addr::from(u128::from(i)).into(),
                dst: "2001:db8::1".parse().expect("ip"),
                src_port: 40000,
                dst_port: 443,
                protocol: 6,
                vlans: [0, 0],
            },
            packets: u64::from(i),
            bytes: u64::from(i) * 1500,
            first_seen_unix_ns: 1_700_000_000_000_000_000,
            last_seen_unix_ns: 1_700_000_001_000_000_000,
            tcp_flags: 0x1b,
            label: Some("w".repeat(label_len)),
            handshake_ns: Some(120_000),
            end: FlowEnd::Idle,
        }
    }

    /// An interval's events and 20,000 flow records with long labels: every message is a
    /// `FlowBatch` within the frame maximum and the flow limit, events go first and share a
    /// message with the first flows, and together they carry everything once, in order.
    #[test]
    fn events_and_flows_are_cut_into_messages_that_fit() {
        let events: Vec<Event> = (0..100).map(|i| dns_event(i, 100)).collect();
        let flows: Vec<Flow> = (0..20_000).map(|i| flow(i, 60)).collect();
        let stats = crate::batch::widest_flow_stats();
        let groups = split(
            &template(),
            Some(&stats),
            encoded(&events),
            encoded(&flows),
            MAX_FRAME,
        )
        .expect("split");
        assert_eq!((groups.unfit_events, groups.unfit_flows), (0, 0));
        assert!(groups.pieces.len() >= 3, "{} batches", groups.pieces.len());
        assert!(
            !groups.pieces[0].flows.is_empty(),
            "events and flows share a message"
        );
        let (mut got_events, mut got_flows) = (Vec::new(), Vec::new());
        for (n, piece) in groups.pieces.iter().enumerate() {
            assert!(piece.flows.len() <= MAX_FLOWS);
            let (_, events, flows) = sent(n, piece, Some(&stats));
            got_events.extend(events);
            got_flows.extend(flows);
        }
        assert_eq!(got_events, events);
        assert_eq!(got_flows, flows);
    }

    /// More short flow records than one message may hold: cut at the flow limit, not the size.
    #[test]
    fn flows_are_cut_at_the_flow_limit() {
        let flows: Vec<Flow> = (0..(MAX_FLOWS as u32 * 2 + 5))
            .map(|i| flow(i, 0))
            .collect();
        let stats = crate::batch::widest_flow_stats();
        let groups = split(
            &template(),
            Some(&stats),
            Encoded::default(),
            encoded(&flows),
            usize::MAX / 2,
        )
        .expect("split");
        let sizes: Vec<usize> = groups.pieces.iter().map(|p| p.flows.len()).collect();
        assert_eq!(sizes, [MAX_FLOWS, MAX_FLOWS, 5]);
    }

    /// Without flow figures the message is a `Batch`, which has no place for flow records.
    #[test]
    fn flows_without_flow_figures_are_unfit() {
        let groups = split(
            &template(),
            None,
            Encoded::default(),
            encoded(&[flow(1, 0)]),
            MAX_FRAME,
        )
        .expect("split");
        assert_eq!((groups.pieces.len(), groups.unfit_flows), (1, 1));
    }
}
