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
pub use frame::{FrameError, MAX_FRAME, Preamble};
pub use message::{
    Ack, AgentStats, Batch, ErrorCode, ErrorMessage, Event, Hello, LabelCount, Message, Welcome,
};

/// The protocol version this build speaks; both sides must speak the same one.
pub const PROTOCOL_VERSION: u16 = 1;
/// The default telemetry port.
pub const DEFAULT_PORT: u16 = 50051;
