//! The messages. Field order is the encoding (postcard is positional): never reorder or remove
//! fields within a protocol version; a change of layout is a new [`crate::PROTOCOL_VERSION`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ip_len: u16,
    pub payload_len: u16,
    pub tcp_flags: u8,
    /// What the agent read of a steered packet's bytes; `None` for sampled events. Boxed so
    /// that the sampled events, most of those buffered, do not carry its room (postcard encodes
    /// a box as its content: the wire format is the same).
    pub inspection: Option<Box<Inspection>>,
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
