//! Frames without I/O: the connection preamble, and `length (u32 BE) | postcard payload`.
//! [`check`] is cheap and allocates nothing; [`decode`] parses a complete frame.

use crate::{Batch, FlowStats, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION};

/// Largest frame payload accepted or sent (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
pub const HEADER_LEN: usize = 4;
const MAGIC: [u8; 4] = *b"XDT\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The preamble's magic is wrong: not an xdt peer.
    #[error("not an xdt telemetry peer (preamble {found:02x?})")]
    BadMagic { found: [u8; 4] },
    /// The length prefix announces more than `MAX_FRAME`.
    #[error("frame of {len} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLarge { len: usize },
    /// The payload is not a valid message.
    #[error("malformed frame: {reason}")]
    Malformed { reason: postcard::Error },
    /// A valid message followed by more bytes inside its frame.
    #[error("malformed frame: {len} bytes after the message")]
    Trailing { len: usize },
    /// More flow records in one message than the protocol allows.
    #[error("malformed frame: {count} flow records, more than the {MAX_FLOWS} allowed")]
    TooManyFlows { count: usize },
    /// A string longer than the protocol allows.
    #[error("malformed frame: {field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Longest agent id, hostname, interface name or probe version in a `Hello`, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest token in a `Hello`, and longest message of an `Error`, in bytes.
pub const MAX_TEXT: usize = 4096;

/// Most flow records in one `FlowBatch`. The smallest record encodes in about 30 bytes, so a
/// frame of [`MAX_FRAME`] alone would let a batch carry some 35,000; an IPv6 record with a
/// short label takes about 75, so this many fit a frame. A sender splits by this count and by
/// the frame size ([`encoded_len`]).
pub const MAX_FLOWS: usize = 8_192;

/// The version a connection speaks, given the version the peer's preamble announced: the
/// lower of the two, when this build still speaks it. `Err` carries the peer's version when
/// there is none in common (it is older than [`MIN_PROTOCOL_VERSION`]).
///
/// The side that accepts (central) answers with a preamble of the agreed version; the side that
/// connects (the agent) offers [`PROTOCOL_VERSION`] and speaks what the answer says.
pub fn negotiate(theirs: u16) -> Result<u16, u16> {
    let agreed = theirs.min(PROTOCOL_VERSION);
    if agreed < MIN_PROTOCOL_VERSION {
        return Err(theirs);
    }
    Ok(agreed)
}

/// The 8 bytes each side sends first: magic `XDT\0`, protocol version (u16 BE), 2 reserved bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub version: u16,
}

impl Preamble {
    pub const LEN: usize = 8;

    #[must_use]
    pub const fn ours() -> Self {
        Self {
            version: PROTOCOL_VERSION,
        }
    }

    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let v = self.version.to_be_bytes();
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 0, 0]
    }

    pub fn decode(bytes: &[u8; Self::LEN]) -> Result<Self, FrameError> {
        let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
        Ok(Self {
            version: u16::from_be_bytes([bytes[4], bytes[5]]),
        })
    }
}

/// The length of the complete frame at the start of `buf` (header included), `None` if more
/// bytes are needed, or `TooLarge` as soon as the header is there.
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
}

/// Parses the payload of a complete frame: exactly one message, its strings within the
/// protocol's bounds ([`MAX_NAME`], [`MAX_TEXT`]).
pub fn decode(payload: &[u8]) -> Result<Message, FrameError> {
    let (message, rest) = match postcard::take_from_bytes::<Message>(payload) {
        Ok(parsed) => parsed,
        Err(reason) => return Err(FrameError::Malformed { reason }),
    };
    if !rest.is_empty() {
        return Err(FrameError::Trailing { len: rest.len() });
    }
    check_bounds(&message)?;
    Ok(message)
}

fn check_bounds(message: &Message) -> Result<(), FrameError> {
    let fields: &[(&'static str, &str, usize)] = match message {
        Message::Hello(h) => &[
            ("agent_id", &h.agent_id, MAX_NAME),
            ("hostname", &h.hostname, MAX_NAME),
            ("interface", &h.interface, MAX_NAME),
            ("probe_version", &h.probe_version, MAX_NAME),
            ("token", &h.token, MAX_TEXT),
        ],
        Message::Welcome(w) => &[("central_version", &w.central_version, MAX_NAME)],
        Message::Error(e) => &[("message", &e.message, MAX_TEXT)],
        Message::FlowBatch(b) => {
            if b.flows.len() > MAX_FLOWS {
                return Err(FrameError::TooManyFlows {
                    count: b.flows.len(),
                });
            }
            for label in b.flows.iter().filter_map(|f| f.label.as_deref()) {
                if label.len() > MAX_NAME {
                    return Err(FrameError::TooLong {
                        field: "flow label",
                        len: label.len(),
                        max: MAX_NAME,
                    });
                }
            }
            &[]
        }
        Message::Batch(_) | Message::Ack(_) => &[],
    };
    for &(field, value, max) in fields {
        if value.len() > max {
            return Err(FrameError::TooLong {
                field,
                len: value.len(),
                max,
            });
        }
    }
    Ok(())
}

/// The length of `value`'s postcard encoding, computed without encoding it. Postcard is
/// concatenative (a struct is its fields one after the other, a sequence its length as a varint
/// and then its items), so a sender can add up the parts of a message to keep its frame within
/// [`MAX_FRAME`].
pub fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> Result<usize, FrameError> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|reason| FrameError::Malformed { reason })
}

/// Appends the frame of `message` to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = encode_item(message, out) {
        out.truncate(start);
        return Err(e);
    }
    finish(out, start)
}

/// Writes the length of the frame that starts at `start` and ends `out` into its header, or
/// takes the frame back out of `out` if it is over the maximum.
fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), FrameError> {
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge { len });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends `value`'s postcard encoding to `out` and returns its length: an item of a list that
/// a sender keeps encoded until it sends it ([`encode_batch`]). On an error `out` is unchanged.
pub fn encode_item<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let before = out.len();
    match postcard::to_io(value, &mut *out) {
        Ok(_) => Ok(out.len() - before),
        Err(reason) => {
            out.truncate(before);
            Err(FrameError::Malformed { reason })
        }
    }
}

/// The items of a list that a sender keeps encoded: how many, and their encodings
/// ([`encode_item`]) one after the other.
#[derive(Clone, Copy, Debug, Default)]
pub struct EncodedItems<'a> {
    pub count: usize,
    pub bytes: &'a [u8],
}

/// Appends the frame of [`Message::batch`]`(batch, flows, version)` whose events are `events`
/// and whose flow records (in a `FlowBatch`) are the items of `flows`; `batch`'s own events are
/// not sent. For a sender that keeps events and records encoded from the moment it has them:
/// nothing is decoded or encoded again. Postcard is concatenative, so this is the frame of the
/// message holding those items: the message is encoded with empty lists, whose counts (one
/// zero byte each, right before the batch's `agent` and the `FlowBatch`'s `stats`, the fields
/// that end each struct) are then replaced by the lists.
pub fn encode_batch(
    batch: &Batch,
    events: EncodedItems<'_>,
    flows: Option<(EncodedItems<'_>, &FlowStats)>,
    version: u16,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let shell = Batch {
        sequence: batch.sequence,
        taken_at_unix_ns: batch.taken_at_unix_ns,
        counters: batch.counters.clone(),
        labels: batch.labels.clone(),
        events: Vec::new(),
        agent: batch.agent.clone(),
    };
    let agent_len = encoded_len(&batch.agent)?;
    let message = Message::batch(
        shell,
        flows.map(|(_, stats)| (Vec::new(), stats.clone())),
        version,
    );
    // The flow list and the length of what follows it, when the message carries one.
    let flows = match (&message, flows) {
        (Message::FlowBatch(_), Some((items, stats))) => Some((items, encoded_len(stats)?)),
        _ => None,
    };
    let start = out.len();
    encode(&message, out)?;
    let end = out.len();
    let flows_at = flows.map(|(_, stats_len)| end - stats_len - 1);
    let events_at = flows_at.unwrap_or(end) - agent_len - 1;
    let tail = out.split_off(events_at);
    debug_assert_eq!(tail[0], 0, "the empty event list's count");
    let spliced = (|| -> Result<(), FrameError> {
        encode_item(&events.count, out)?;
        out.extend_from_slice(events.bytes);
        match (flows, flows_at) {
            (Some((items, _)), Some(at)) => {
                let at = at - events_at;
                debug_assert_eq!(tail[at], 0, "the empty flow list's count");
                out.extend_from_slice(&tail[1..at]);
                encode_item(&items.count, out)?;
                out.extend_from_slice(items.bytes);
                out.extend_from_slice(&tail[at + 1..]);
            }
            _ => out.extend_from_slice(&tail[1..]),
        }
        Ok(())
    })();
    if let Err(e) = spliced {
        out.truncate(start);
        return Err(e);
    }
    finish(out, start)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        Ack, AgentStats, Batch, ErrorCode, ErrorMessage, Event, Flow, FlowBatch, FlowEnd,
        FlowStats, Headers, Hello, LabelCount, Welcome,
    };

    pub(crate) fn flow() -> Flow {
        Flow {
            key: crate::FlowKey {
                src: "2001:db8::2".parse().expect("ip"),
                dst: "2001:db8::1".parse().expect("ip"),
                src_port: 40000,
                dst_port: 443,
                protocol: 6,
                vlans: [100, 0],
            },
            packets: 12,
            bytes: 4_000,
            first_seen_unix_ns: 1_700_000_000_000_000_000,
            last_seen_unix_ns: 1_700_000_000_500_000_000,
            tcp_flags: 0x1b,
            label: Some("web".into()),
            handshake_ns: Some(250_000),
            end: FlowEnd::EndOfFlow,
        }
    }

    pub(crate) fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                agent_id: "node-1".into(),
                hostname: "node-1.example".into(),
                interface: "eth0".into(),
                probe_version: "0.1.0".into(),
                instance: 42,
                token: "secret".into(),
            }),
            Message::Welcome(Welcome {
                central_version: "0.1.0".into(),
                last_sequence: 7,
            }),
            Message::Batch(Batch {
                sequence: 8,
                taken_at_unix_ns: 1_700_000_000_000_000_000,
                counters: vec![("total_packets".into(), 10), ("tcp_packets".into(), 4)],
                labels: vec![LabelCount {
                    label: "web".into(),
                    packets: 4,
                    bytes: 400,
                }],
                events: vec![Event {
                    timestamp_unix_ns: 1,
                    label: "web".into(),
                    rule: 1,
                    action: "sample".into(),
                    rx_queue: 0,
                    headers: Headers {
                        protocol: 6,
                        src: "10.0.0.1".parse().expect("ip"),
                        dst: "2001:db8::1".parse().expect("ip"),
                        src_port: 40000,
                        dst_port: 80,
                        ip_len: 60,
                        payload_len: 0,
                        tcp_flags: 2,
                    },
                    inspection: None,
                }],
                agent: AgentStats {
                    dropped_events: 1,
                    unacked_batches: 2,
                    reconnects: 3,
                    probe_ns_per_packet: Some(21.5),
                    steering: None,
                },
            }),
            Message::Ack(Ack { sequence: 8 }),
            Message::Error(ErrorMessage {
                code: ErrorCode::Unauthorized,
                message: "wrong token".into(),
            }),
            Message::FlowBatch(FlowBatch {
                batch: Batch {
                    sequence: 9,
                    taken_at_unix_ns: 1_700_000_001_000_000_000,
                    counters: vec![("total_packets".into(), 12)],
                    labels: Vec::new(),
                    events: Vec::new(),
                    agent: AgentStats::default(),
                },
                flows: vec![
                    flow(),
                    Flow {
                        key: crate::FlowKey {
                            src: "10.0.0.2".parse().expect("ip"),
                            dst: "10.0.0.1".parse().expect("ip"),
                            protocol: 1,
                            src_port: 0,
                            dst_port: 8 << 8,
                            vlans: [0, 0],
                        },
                        tcp_flags: 0,
                        label: None,
                        handshake_ns: None,
                        end: FlowEnd::Idle,
                        ..flow()
                    },
                ],
                stats: FlowStats {
                    active: 3,
                    records: 2,
                    state_full: 1,
                    dropped_records: 0,
                    ipfix_messages: 5,
                    ipfix_records: 2,
                    ipfix_send_failures: 1,
                },
            }),
        ]
    }

    /// A batch whose events and flow records were kept encoded makes the frame of the message
    /// holding them, byte for byte, on either version (version 2 without the records), with
    /// lists of 0, 1 and 300 items (a count over one varint byte); the batch's own events are
    /// not sent, and a frame over the maximum is refused with `out` unchanged.
    #[test]
    fn a_batch_with_encoded_lists_is_the_frame_of_the_message_holding_them() {
        let Message::Batch(batch) = samples().remove(2) else {
            panic!("sample 2 is a Batch");
        };
        let Message::FlowBatch(flow_batch) = samples().remove(5) else {
            panic!("sample 5 is a FlowBatch");
        };
        let event = batch.events[0].clone();
        for (n_events, n_flows) in [(0, 0), (1, 0), (0, 2), (300, 1), (2, 300)] {
            let events = vec![event.clone(); n_events];
            let flows: Vec<Flow> = flow_batch
                .flows
                .iter()
                .cycle()
                .take(n_flows)
                .cloned()
                .collect();
            let (mut event_bytes, mut flow_bytes) = (Vec::new(), Vec::new());
            for e in &events {
                encode_item(e, &mut event_bytes).expect("event");
            }
            for f in &flows {
                encode_item(f, &mut flow_bytes).expect("flow");
            }
            let event_items = EncodedItems {
                count: n_events,
                bytes: &event_bytes,
            };
            let flow_items = EncodedItems {
                count: n_flows,
                bytes: &flow_bytes,
            };
            for version in [2, 3] {
                for with_flows in [false, true] {
                    let stats = with_flows.then_some(&flow_batch.stats);
                    let mut spliced = vec![9, 9];
                    encode_batch(
                        &batch,
                        event_items,
                        stats.map(|s| (flow_items, s)),
                        version,
                        &mut spliced,
                    )
                    .expect("spliced");
                    let whole = Message::batch(
                        Batch {
                            events: events.clone(),
                            ..batch.clone()
                        },
                        stats.map(|s| (flows.clone(), s.clone())),
                        version,
                    );
                    let mut expected = vec![9, 9];
                    encode(&whole, &mut expected).expect("whole");
                    assert_eq!(
                        spliced, expected,
                        "{n_events} events, {n_flows} flows, version {version}, flows {with_flows}"
                    );
                    let frame_len = check(&spliced[2..]).expect("check").expect("complete");
                    assert_eq!(
                        decode(&spliced[2 + HEADER_LEN..2 + frame_len]).expect("decode"),
                        whole
                    );
                }
            }
        }

        let big = vec![0; MAX_FRAME];
        let mut out = vec![1, 2, 3];
        let refused = encode_batch(
            &batch,
            EncodedItems {
                count: 1,
                bytes: &big,
            },
            None,
            3,
            &mut out,
        );
        assert!(
            matches!(refused, Err(FrameError::TooLarge { .. })),
            "{refused:?}"
        );
        assert_eq!(out, [1, 2, 3]);
    }

    /// Version 3 only appended a message: every message of version 2 has the bytes it had
    /// (hand-checked postcard: variant index, then the fields in order), so a version-2 peer
    /// and a version-3 one read each other's version-2 messages alike, and a journal written
    /// by a version-2 central replays.
    #[test]
    fn version_2_messages_keep_their_encoding() {
        let mut buf = Vec::new();
        encode(&Message::Ack(Ack { sequence: 300 }), &mut buf).expect("encode");
        assert_eq!(buf, [0, 0, 0, 3, 3, 0xac, 0x02]);
        let mut buf = Vec::new();
        encode(&samples()[2], &mut buf).expect("encode");
        assert_eq!(buf[HEADER_LEN], 2, "Batch is variant 2");
        assert_eq!(
            &buf[HEADER_LEN + 1..HEADER_LEN + 2 + 9],
            &[8, 0x80, 0x80, 0xa8, 0xb1, 0xe3, 0x9f, 0xe7, 0xcb, 0x17][..],
            "sequence, then taken_at_unix_ns as varints"
        );
        let mut buf = Vec::new();
        encode(&samples()[5], &mut buf).expect("encode");
        assert_eq!(buf[HEADER_LEN], 5, "FlowBatch is appended as variant 5");
    }

    #[test]
    fn negotiation_agrees_on_the_lower_version() {
        assert_eq!(negotiate(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate(2), Ok(2));
        assert_eq!(negotiate(PROTOCOL_VERSION + 1), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate(1), Err(1));
        assert_eq!(negotiate(0), Err(0));
        assert_eq!(samples()[5].since(), 3);
        assert!(samples()[..5].iter().all(|m| m.since() <= 2));
    }

    #[test]
    fn flow_batches_are_bounded() {
        let Message::FlowBatch(mut batch) = samples().remove(5) else {
            unreachable!()
        };
        batch.flows = vec![flow(); MAX_FLOWS];
        let mut buf = Vec::new();
        encode(&Message::FlowBatch(batch.clone()), &mut buf).expect("encode");
        assert!(
            buf.len() - HEADER_LEN <= MAX_FRAME,
            "MAX_FLOWS IPv6 records with a label fit a frame"
        );
        assert!(decode(&buf[HEADER_LEN..]).is_ok());
        batch.flows.push(flow());
        let mut buf = Vec::new();
        encode(&Message::FlowBatch(batch), &mut buf).expect("encode");
        assert_eq!(
            decode(&buf[HEADER_LEN..]),
            Err(FrameError::TooManyFlows {
                count: MAX_FLOWS + 1
            })
        );
        let mut long = flow();
        long.label = Some("l".repeat(MAX_NAME + 1));
        let Message::FlowBatch(mut batch) = samples().remove(5) else {
            unreachable!()
        };
        batch.flows = vec![long];
        let mut buf = Vec::new();
        encode(&Message::FlowBatch(batch), &mut buf).expect("encode");
        assert_eq!(
            decode(&buf[HEADER_LEN..]),
            Err(FrameError::TooLong {
                field: "flow label",
                len: MAX_NAME + 1,
                max: MAX_NAME
            })
        );
    }

    #[test]
    fn round_trips_every_message() {
        for message in samples() {
            let mut buf = Vec::new();
            encode(&message, &mut buf).expect("encode");
            let len = check(&buf).expect("check").expect("complete");
            assert_eq!(len, buf.len());
            assert_eq!(decode(&buf[HEADER_LEN..len]).expect("decode"), message);
        }
    }

    #[test]
    fn check_wants_more_until_complete() {
        let mut buf = Vec::new();
        encode(&samples()[2], &mut buf).expect("encode");
        for cut in 0..buf.len() {
            assert_eq!(check(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(check(&buf), Ok(Some(buf.len())));
    }

    #[test]
    fn oversized_length_is_refused_from_the_header() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            check(&header),
            Err(FrameError::TooLarge { len: MAX_FRAME + 1 })
        );
        assert_eq!(
            check(&[0xff; 4]),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize
            })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(decode(&[]), Err(FrameError::Malformed { .. })));
        // A valid message with bytes cut off.
        let mut buf = Vec::new();
        encode(&samples()[0], &mut buf).expect("encode");
        assert!(matches!(
            decode(&buf[HEADER_LEN..buf.len() - 1]),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_long_names_are_malformed() {
        let mut buf = Vec::new();
        encode(&samples()[2], &mut buf).expect("encode");
        buf.push(0);
        assert_eq!(
            decode(&buf[HEADER_LEN..]),
            Err(FrameError::Trailing { len: 1 })
        );
        let Message::Hello(mut hello) = samples().remove(0) else {
            unreachable!()
        };
        hello.agent_id = "a".repeat(MAX_NAME);
        let mut buf = Vec::new();
        encode(&Message::Hello(hello.clone()), &mut buf).expect("encode");
        assert!(decode(&buf[HEADER_LEN..]).is_ok());
        hello.agent_id.push('a');
        let mut buf = Vec::new();
        encode(&Message::Hello(hello), &mut buf).expect("encode");
        assert_eq!(
            decode(&buf[HEADER_LEN..]),
            Err(FrameError::TooLong {
                field: "agent_id",
                len: MAX_NAME + 1,
                max: MAX_NAME
            })
        );
    }

    #[test]
    fn preamble() {
        let ours = Preamble::ours();
        assert_eq!(Preamble::decode(&ours.encode()), Ok(ours));
        assert_eq!(
            Preamble::decode(b"GET / HT"),
            Err(FrameError::BadMagic { found: *b"GET " })
        );
        let mut other = ours.encode();
        other[5] = 9;
        assert_eq!(Preamble::decode(&other).expect("magic ok").version, 9);
    }

    #[test]
    fn encoded_len_is_the_payload_length() {
        for message in samples() {
            let mut buf = Vec::new();
            encode(&message, &mut buf).expect("encode");
            assert_eq!(encoded_len(&message), Ok(buf.len() - HEADER_LEN));
        }
    }

    #[test]
    fn encode_refuses_frames_over_the_maximum() {
        let Message::Batch(mut batch) = samples().remove(2) else {
            unreachable!()
        };
        let event = batch.events[0].clone();
        batch.events = vec![event; MAX_FRAME / 40];
        let mut buf = vec![1, 2, 3];
        assert!(matches!(
            encode(&Message::Batch(batch), &mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buf, [1, 2, 3], "nothing half-written");
    }
}
