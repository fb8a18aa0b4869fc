//! The telemetry protocol between `xdt-agent` and `xdt-central` (spec: docs/telemetry-protocol.md).
//!
//! A connection starts with an 8-byte [`Preamble`] from each side (magic and protocol version),
//! then carries [`Message`]s, each a postcard encoding behind a 4-byte big-endian length, at most
//! [`MAX_FRAME`] bytes. [`frame`] checks and parses frames without I/O; [`Connection`] reads and
//! writes them on a tokio stream.

mod connection;
pub mod frame;
mod message;

pub use connection::{Connection, WireError};
pub use frame::{FrameError, MAX_FLOWS, MAX_FRAME, MAX_NAME, MAX_TEXT, Preamble, negotiate};
pub use message::{
    Ack, AgentStats, Batch, DnsQuery, ErrorCode, ErrorMessage, Event, Flow, FlowBatch, FlowEnd,
    FlowKey, FlowStats, Flows, Hello, HttpRequest, Inspection, LabelCount, Message, SteeringStats,
    Welcome,
};
pub use xdt_common::packet::Headers;

/// The newest protocol version this build speaks, and the one it offers in its preamble.
/// 2: steered-packet inspection in `Event`, AF_XDP figures in `AgentStats`.
/// 3: `Message::FlowBatch` (flow records); every version-2 message is unchanged.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest version this build still speaks: a connection agrees on the lower of the two
/// sides' versions when both speak it ([`negotiate`]).
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// The default telemetry port.
pub const DEFAULT_PORT: u16 = 50051;
