//! The messages. Field order is the encoding (postcard is positional): never reorder or remove
//! fields within a protocol version; a change of layout is a new [`crate::PROTOCOL_VERSION`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use xdt_common::packet::Headers;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Agent -> central, first message: who is talking, and the shared token.
    Hello(Hello),
    /// Central -> agent: accepted; where this agent instance's stream stands.
    Welcome(Welcome),
    /// Agent -> central: one interval's snapshot and events.
    Batch(Batch),
    /// Central -> agent: every batch up to and including `sequence` is stored.
    Ack(Ack),
    /// Either side, then it closes the connection.
    Error(ErrorMessage),
    /// Agent -> central, protocol version 3: a batch with the flow records of its interval and
    /// the agent's flow figures. Central applies, acknowledges and deduplicates it as the
    /// `Batch` it carries. Appended last, so every message of version 2 keeps its encoding.
    FlowBatch(FlowBatch),
}

impl Message {
    /// The first protocol version that has this message: a peer may send it only on a
    /// connection that agreed on that version or a later one.
    #[must_use]
    pub const fn since(&self) -> u16 {
        match self {
            Self::FlowBatch(_) => 3,
            Self::Hello(_) | Self::Welcome(_) | Self::Batch(_) | Self::Ack(_) | Self::Error(_) => 1,
        }
    }

    /// The batch a `Batch` or `FlowBatch` carries, with the flow records and figures of the
    /// latter (the inverse of [`Message::batch`]); any other message is given back.
    #[expect(
        clippy::result_large_err,
        reason = "the message given back is the one taken, moved as it came"
    )]
    pub fn into_batch(self) -> Result<(Batch, Option<Flows>), Self> {
        match self {
            Self::Batch(batch) => Ok((batch, None)),
            Self::FlowBatch(FlowBatch {
                batch,
                flows,
                stats,
            }) => Ok((batch, Some((flows, stats)))),
            other @ (Self::Hello(_) | Self::Welcome(_) | Self::Ack(_) | Self::Error(_)) => {
                Err(other)
            }
        }
    }

    /// The message's name, for logs and errors.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Welcome(_) => "Welcome",
            Self::Batch(_) => "Batch",
            Self::Ack(_) => "Ack",
            Self::Error(_) => "Error",
            Self::FlowBatch(_) => "FlowBatch",
        }
    }

    /// The message for `batch`: a `FlowBatch` when the connection speaks version 3 or later
    /// and there are flow figures to send, else the plain `Batch` (a version-2 central knows
    /// only that one; the flows are then not delivered, which the caller counts).
    #[must_use]
    pub fn batch(batch: Batch, flows: Option<Flows>, version: u16) -> Self {
        match flows {
            Some((flows, stats)) if version >= 3 => Self::FlowBatch(FlowBatch {
                batch,
                flows,
                stats,
            }),
            _ => Self::Batch(batch),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub agent_id: String,
    pub hostname: String,
    pub interface: String,
    pub probe_version: String,
    /// Random per agent process: sequences restart with every instance.
    pub instance: u64,
    /// The shared token (from `--token-file`); never logged.
    pub token: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("agent_id", &self.agent_id)
            .field("hostname", &self.hostname)
            .field("interface", &self.interface)
            .field("probe_version", &self.probe_version)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub central_version: String,
    /// The highest sequence central holds for this (agent id, instance); 0 for none.
    pub last_sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// 1, 2, 3, ... per agent instance.
    pub sequence: u64,
    /// When the counters were read, nanoseconds since the Unix epoch.
    pub taken_at_unix_ns: u64,
    /// Cumulative counters by name (`total_packets`, `tcp_packets`, ...), as read from the probe.
    pub counters: Vec<(String, u64)>,
    /// Cumulative per-label counts.
    pub labels: Vec<LabelCount>,
    /// Sampled events since the previous batch.
    pub events: Vec<Event>,
    pub agent: AgentStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A packet the probe reported: sampled (`action` "sample") or steered to the agent through
/// AF_XDP (`action` "steer", with `inspection`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub timestamp_unix_ns: u64,
    pub label: String,
    pub rule: u32,
    pub action: String,
    pub rx_queue: u32,
    /// What the packet's headers say. Its fields go on the wire in its place, as when they were
    /// the event's own: postcard writes a nested struct as its fields (tests/event_layout.rs).
    pub headers: Headers,
    /// What the agent read of a steered packet's bytes; `None` for sampled events. Boxed so
    /// that the sampled events, most of those buffered, do not carry its room (postcard encodes
    /// a box as its content: the wire format is the same).
    pub inspection: Option<Box<Inspection>>,
}

impl Event {
    /// An event of `action` with nothing else yet: the agent's readers fill one in place for
    /// each packet, its strings reused, and encode it.
    #[must_use]
    pub fn blank(action: &str) -> Self {
        Self {
            timestamp_unix_ns: 0,
            label: String::new(),
            rule: 0,
            action: action.to_owned(),
            rx_queue: 0,
            headers: Headers::default(),
            inspection: None,
        }
    }
}

/// The agent's inspection of one steered packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// The whole frame as received, Ethernet header included.
    pub frame_len: u32,
    /// From the XDP hook to the agent reading the frame off its RX ring, nanoseconds.
    pub agent_latency_ns: u64,
    /// The frame was queued for re-injection; `false` means it was lost (counted in
    /// [`SteeringStats::reinject_dropped`]).
    pub reinjected: bool,
    /// The request line and Host of an HTTP/1.x request starting in this packet.
    pub http: Option<HttpRequest>,
    /// The first question of a DNS query (UDP or TCP port 53).
    pub dns: Option<DnsQuery>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuery {
    /// Dotted, without the trailing dot ("example.com"); "." for the root.
    pub name: String,
    /// QTYPE (1 A, 28 AAAA, ...).
    pub qtype: u16,
}

/// The agent's own health and losses, cumulative for the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Events dropped because the unacknowledged-batch buffer was full (oldest first).
    pub dropped_events: u64,
    /// Batches waiting for an acknowledgement when this one was made.
    pub unacked_batches: u32,
    /// Reconnections to central since the agent started.
    pub reconnects: u64,
    /// The probe's mean run time per packet (kernel.bpf_stats_enabled=1), if known.
    pub probe_ns_per_packet: Option<f64>,
    /// AF_XDP steering, when the agent owns sockets.
    pub steering: Option<SteeringStats>,
}

/// The agent's AF_XDP sockets: what went through them and every place a frame was lost.
/// Cumulative for the agent instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteeringStats {
    /// "zerocopy" or "copy": what the driver granted.
    pub mode: String,
    /// Where frames go back: "host via DEV" (re-entry veth pair) or "egress DEV".
    pub reinject: String,
    /// RX sockets, one per receive queue.
    pub sockets: u32,
    /// Frames read off the RX rings.
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Frames handed to the kernel for re-injection and completed.
    pub reinjected_packets: u64,
    /// Frames the agent could not re-inject (TX ring full, frame rejected).
    pub reinject_dropped: u64,
    /// Kernel XDP_STATISTICS summed over the sockets: frames dropped because the RX ring was
    /// full, because no fill buffer was free, and descriptors the kernel rejected.
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub tx_invalid_descs: u64,
}

/// The flow part of a `FlowBatch`: its records and the agent's flow figures.
pub type Flows = (Vec<Flow>, FlowStats);

/// A batch with flow records (protocol version 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowBatch {
    pub batch: Batch,
    /// Flow records ended or timed out since the previous batch: deltas, each counted once
    /// (at most [`crate::MAX_FLOWS`] in one message).
    pub flows: Vec<Flow>,
    /// The agent's flow figures, cumulative for the instance unless said otherwise.
    pub stats: FlowStats,
}

/// What identifies a flow: one direction, the 5-tuple and the VLAN ids (docs/flows.md). The
/// probe keeps it in its own layout (`xdt_common::flows::FlowKey`); this is the one everything
/// after the agent uses: the wire, central's top talkers and their JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP and UDP ports; for ICMP and ICMPv6 `src_port` is 0 and `dst_port` is
    /// `type << 8 | code`; 0 for other protocols and later fragments.
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number; for IPv6 the one after the extension headers.
    pub protocol: u8,
    /// VLAN ids of the outer and the inner tag, 0 where there is none.
    pub vlans: [u16; 2],
}

/// One flow's delta: what the probe counted for it since the agent's previous record of the
/// flow. A flow is one direction of traffic arriving at the interface (docs/flows.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Its fields go on the wire in its place, as when they were the record's own: postcard
    /// writes a nested struct as its fields (tests/flow_layout.rs).
    pub key: FlowKey,
    /// Packets and IP octets (header included) of this delta.
    pub packets: u64,
    pub bytes: u64,
    /// The first and the latest packet counted in this delta, nanoseconds since the Unix
    /// epoch (the probe's monotonic times, moved to the wall clock by the agent).
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    /// The OR of the TCP flags of the delta's packets (0 for other protocols).
    pub tcp_flags: u8,
    /// The label of the rule the flow's first packet matched; `None`: no rule.
    pub label: Option<String>,
    /// Inbound TCP: SYN to the client's first ACK at the hook, nanoseconds; in every delta of
    /// the flow once measured, `None` before or when not measured.
    pub handshake_ns: Option<u64>,
    /// Why the agent sent this delta.
    pub end: FlowEnd,
}

/// Why a flow record was exported; the IPFIX flowEndReason values (RFC 5102) in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowEnd {
    /// No packet for the idle timeout: the flow is over.
    Idle,
    /// The active timeout: a delta of a flow that goes on.
    Active,
    /// TCP FIN or RST seen.
    EndOfFlow,
    /// The agent stopped (or its state was cleared) with the flow still active.
    Forced,
    /// The agent's flow state was full: the interval's record of a new flow went out at once,
    /// on its own, instead of being kept. Appended last: the others keep their encoding.
    LackOfResources,
}

impl FlowEnd {
    /// IPFIX flowEndReason (information element 136).
    #[must_use]
    pub const fn ipfix(self) -> u8 {
        match self {
            Self::Idle => 1,
            Self::Active => 2,
            Self::EndOfFlow => 3,
            Self::Forced => 4,
            Self::LackOfResources => 5,
        }
    }

    /// The name in JSON, metrics and logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Active => "active",
            Self::EndOfFlow => "end",
            Self::Forced => "forced",
            Self::LackOfResources => "resources",
        }
    }
}

/// The agent's flow figures. Counts are cumulative for the agent instance; `active` is a gauge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Flows in the agent's flow state when the batch was made.
    pub active: u64,
    /// Flow records the agent exported (to central and to IPFIX alike: one per delta).
    pub records: u64,
    /// New flows that found the agent's flow state full: each interval's record of such a flow
    /// is exported at once, on its own (end `LackOfResources`), so nothing is lost, but the
    /// flow is cut into pieces: a sign that the state's bound is too small.
    pub state_full: u64,
    /// Flow records dropped because the unacknowledged-batch buffer was full (oldest first),
    /// as `AgentStats::dropped_events` for events (a loss).
    pub dropped_records: u64,
    /// IPFIX messages sent to collectors and the records in them (over all collectors).
    pub ipfix_messages: u64,
    pub ipfix_records: u64,
    /// IPFIX messages whose send failed: their records did not reach that collector (a loss).
    pub ipfix_send_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub sequence: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// Missing or wrong token.
    Unauthorized,
    /// A frame that does not decode, or a message out of place.
    Malformed,
    /// A frame larger than `MAX_FRAME`.
    TooLarge,
    /// Central is at its connection limit.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
}
