//! Cutting one interval's events into batches whose frames fit the wire's maximum
//! ([`xdt_wire::MAX_FRAME`]). A count of events is no bound on bytes: a steered DNS query
//! carries a name of up to 255 bytes and an HTTP request its path, so a burst of 8,000 such
//! packets in one interval once made a single 2 MB batch that no connection could carry, and
//! the agent retried it until it left the buffer, an hour later.
//!
//! Sizes are exact, not estimated: postcard is concatenative, so a batch is its fields without
//! the events, the varint of the events' count, then each event's own encoding.

use xdt_wire::{Batch, Event, FrameError, Message, frame::encoded_len};

/// Room for the varint of the events' count (a u64 varint takes at most 10 bytes).
const COUNT_ROOM: usize = 10;

/// One interval's events cut into groups, in order.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    /// One batch's events each; at least one group (possibly empty), so counters always go.
    pub groups: Vec<Vec<Event>>,
    /// Events that do not fit in a frame even alone (with the batch's counters and labels):
    /// dropped, for the caller to count.
    pub unfit: usize,
}

/// Cuts `events` into groups such that `template` (the batch's fields; its own events are
/// ignored) carrying any one group encodes as a `Message::Batch` of at most `max_payload`
/// bytes. Give `template` the widest values its numbers can take in any of the batches
/// (sequence, dropped events, ...): varints grow with the value.
pub(crate) fn split(
    template: &Batch,
    events: Vec<Event>,
    max_payload: usize,
) -> Result<Groups, FrameError> {
    let empty = Batch {
        events: Vec::new(),
        ..template.clone()
    };
    // The empty vector encodes as one byte, its count; COUNT_ROOM stands in for it.
    let fixed = encoded_len(&Message::Batch(empty))? - 1 + COUNT_ROOM;
    let Some(budget) = max_payload.checked_sub(fixed) else {
        // Counters and labels alone exceed a frame (more labels than the probe can hold):
        // nothing can carry the events.
        let unfit = events.len();
        return Ok(Groups {
            groups: vec![Vec::new()],
            unfit,
        });
    };
    let mut out = Groups::default();
    let mut current = Vec::new();
    let mut used = 0;
    for event in events {
        let len = encoded_len(&event)?;
        if len > budget {
            out.unfit += 1;
            continue;
        }
        if used + len > budget {
            out.groups.push(std::mem::take(&mut current));
            used = 0;
        }
        used += len;
        current.push(event);
    }
    if !current.is_empty() || out.groups.is_empty() {
        out.groups.push(current);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use xdt_wire::{AgentStats, DnsQuery, Inspection, MAX_FRAME, frame};

    use super::*;

    fn dns_event(i: u64, name_len: usize) -> Event {
        Event {
            timestamp_unix_ns: 1_700_000_000_000_000_000 + i,
            label: "dns".into(),
            rule: 3,
            action: "steer".into(),
            rx_queue: 0,
            protocol: 17,
            src: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.2".parse().expect("ip"),
            src_port: 40000,
            dst_port: 53,
            ip_len: 300,
            payload_len: 272,
            tcp_flags: 0,
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
        let groups = split(&template(), events.clone(), MAX_FRAME).expect("split");
        assert_eq!(groups.unfit, 0);
        assert!(groups.groups.len() >= 2, "{} batches", groups.groups.len());
        for (n, group) in groups.groups.iter().enumerate() {
            let batch = Batch {
                events: group.clone(),
                sequence: n as u64 + 1,
                ..template()
            };
            let mut out = Vec::new();
            frame::encode(&Message::Batch(batch), &mut out)
                .unwrap_or_else(|e| panic!("batch {n} of {} events: {e}", group.len()));
            // Filled, not merely under the limit: within one event of the maximum.
            if n + 1 < groups.groups.len() {
                assert!(
                    out.len() > MAX_FRAME - 400,
                    "batch {n}: {} bytes",
                    out.len()
                );
            }
        }
        let joined: Vec<Event> = groups.groups.into_iter().flatten().collect();
        assert_eq!(joined, events);
    }

    #[test]
    fn no_events_still_makes_one_batch_and_unfit_events_are_counted() {
        let groups = split(&template(), Vec::new(), MAX_FRAME).expect("split");
        assert_eq!((groups.groups.len(), groups.unfit), (1, 0));
        assert!(groups.groups[0].is_empty());

        // A frame limit that holds the counters and one short event, not a long one.
        let fixed = encoded_len(&Message::Batch(template())).expect("len") - 1 + COUNT_ROOM;
        let short = dns_event(1, 10);
        let limit = fixed + encoded_len(&short).expect("len");
        let groups = split(
            &template(),
            vec![short.clone(), dns_event(2, 200), short.clone()],
            limit,
        )
        .expect("split");
        assert_eq!(groups.unfit, 1);
        assert_eq!(groups.groups, vec![vec![short.clone()], vec![short]]);

        // Counters that do not fit at all: every event is unfit, the batch still goes.
        let groups = split(&template(), vec![dns_event(3, 1)], 10).expect("split");
        assert_eq!((groups.groups.len(), groups.unfit), (1, 1));
    }
}
