//! Central's errors: those that stop it (configuration, binding, state file) and the reasons a
//! single agent connection is closed (which never stop the server).

use std::{io, net::SocketAddr, path::PathBuf};

use xdt_wire::{ErrorCode, FrameError, MIN_PROTOCOL_VERSION};

/// Errors that keep central from starting or stop it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file cannot be read.
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the token file {} is empty: put the shared agent token in it", path.display())]
    EmptyToken { path: PathBuf },
    /// An option out of range or malformed.
    #[error("invalid {option}: {reason}")]
    Config {
        option: &'static str,
        reason: String,
    },
    /// A listening socket cannot be opened.
    #[error("cannot listen for {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// tiny_http cannot listen (its error type is boxed).
    #[error("cannot listen for HTTP on {addr}: {reason}")]
    HttpBind { addr: SocketAddr, reason: String },
    /// The state file exists but cannot be read or parsed; central refuses to start rather than
    /// forget which batches it holds (that would count replayed batches twice).
    #[error(
        "cannot load the state file {}; fix or move it away (central then starts empty)",
        path.display()
    )]
    LoadState {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the state file failed.
    #[error("cannot write the state file {}", path.display())]
    SaveState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The OTLP exporter cannot be built.
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A thread of central's own could not be started.
    #[error("cannot start the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why central closed one agent connection. Logged with the peer address; only this
/// connection is affected.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// The first 8 bytes are not an xdt preamble (an HTTP client, a port scanner, ...).
    #[error("not an xdt peer (preamble {found:02x?})")]
    NotXdt { found: [u8; 4] },
    #[error(
        "the peer speaks protocol version {theirs}, central speaks {MIN_PROTOCOL_VERSION} to {ours}"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    /// No complete preamble and `Hello` within the handshake deadline.
    #[error("no Hello within {seconds:.1} s")]
    HelloTimeout { seconds: f64 },
    /// A frame was started but not finished within the frame deadline.
    #[error("frame not completed within {seconds:.1} s ({buffered} bytes buffered)")]
    FrameTimeout { seconds: f64, buffered: usize },
    /// A wrong or missing token. The token itself is never logged.
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: &'static str },
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A well-formed message in the wrong place.
    #[error("unexpected {got} {when}")]
    Unexpected {
        got: &'static str,
        when: &'static str,
    },
    /// The peer closed the connection before the handshake was complete.
    #[error("closed by the peer during the handshake ({buffered} bytes buffered)")]
    HandshakeClosed { buffered: usize },
    /// The peer closed the connection inside a frame.
    #[error("connection closed inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The agent is new and central already holds `--max-agents` agents, all connected.
    #[error("agent table full ({max} agents, all connected): new agent refused")]
    AgentTableFull { max: usize },
    /// The agent is new and too many new agents came at once.
    #[error("too many new agents at once: new agent refused, retry later")]
    TooManyNewAgents,
    /// The agent reported an error and closed.
    #[error("the agent sent an error: {code:?}: {message}")]
    PeerError { code: ErrorCode, message: String },
    /// Central is shutting down.
    #[error("central is shutting down")]
    Shutdown,
    #[error("i/o error")]
    Io(#[from] io::Error),
}

impl CloseReason {
    /// The error code to send the peer before closing, if it is told at all.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::VersionMismatch { .. } => Some(ErrorCode::VersionMismatch),
            Self::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            Self::Frame(FrameError::TooLarge { .. }) => Some(ErrorCode::TooLarge),
            Self::Frame(
                FrameError::Malformed { .. }
                | FrameError::Trailing { .. }
                | FrameError::TooLong { .. }
                | FrameError::TooManyFlows { .. },
            )
            | Self::Unexpected { .. } => Some(ErrorCode::Malformed),
            Self::AgentTableFull { .. } | Self::TooManyNewAgents => Some(ErrorCode::Busy),
            Self::Frame(FrameError::BadMagic { .. })
            | Self::NotXdt { .. }
            | Self::HelloTimeout { .. }
            | Self::FrameTimeout { .. }
            | Self::Truncated { .. }
            | Self::HandshakeClosed { .. }
            | Self::PeerError { .. }
            | Self::Shutdown
            | Self::Io(_) => None,
        }
    }
}
