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
pub use frame::{FrameError, MAX_FRAME, MAX_NAME, MAX_TEXT, Preamble};
pub use message::{
    Ack, AgentStats, Batch, DnsQuery, ErrorCode, ErrorMessage, Event, Hello, HttpRequest,
    Inspection, LabelCount, Message, SteeringStats, Welcome,
};

/// The protocol version this build speaks; both sides must speak the same one.
/// 2: steered-packet inspection in `Event`, AF_XDP figures in `AgentStats`.
pub const PROTOCOL_VERSION: u16 = 2;
/// The default telemetry port.
pub const DEFAULT_PORT: u16 = 50051;
