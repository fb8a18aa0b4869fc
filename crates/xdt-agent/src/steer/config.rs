//! How steering is configured, what it reports events to, and how it fails.

use std::{sync::Arc, time::Duration};

use xdt_wire::Event;

use super::{reentry, xsk, xsk::BindMode};
use crate::outbox::Encoded;

/// Where steered frames go after inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reinject {
    /// Into the host stack through the agent's re-entry veth pair.
    Host,
    /// Out of this interface, unchanged (bump in the wire).
    Egress(String),
}

/// The default of [`SteerConfig::spin`], in microseconds.
pub const DEFAULT_SPIN_MICROS: u64 = 50;

#[derive(Clone, Debug, PartialEq)]
pub struct SteerConfig {
    pub reinject: Reinject,
    pub mode: BindMode,
    /// UMEM frames per socket (a power of two): the RX socket's fill and RX rings hold as many,
    /// the TX socket's TX and completion rings half as many.
    pub frames: u32,
    /// How long the probe keeps steering without hearing from the agent.
    pub lease: Duration,
    /// Drop every capability of the sockets' thread once they are open (the agent's default;
    /// the re-entry pair is then left for `xdt-agent --cleanup` at a stop).
    pub drop_capabilities: bool,
    /// How long the sockets' thread keeps checking the rings after the last frame before it
    /// sleeps in poll(): a frame that comes within it finds the thread running, without a
    /// wake-up (tens of microseconds in a VM when it is on another CPU). Zero: always sleep.
    pub spin: Duration,
    /// The CPU the sockets' thread runs on; `None` leaves it to the scheduler.
    pub cpu: Option<usize>,
}

impl Default for SteerConfig {
    fn default() -> Self {
        Self {
            reinject: Reinject::Host,
            mode: BindMode::Auto,
            frames: 2048,
            lease: Duration::from_secs(1),
            drop_capabilities: false,
            spin: Duration::from_micros(DEFAULT_SPIN_MICROS),
            cpu: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    #[error("--xsk-frames {0} must be a power of two from 64 to 65536")]
    Frames(u32),
    #[error("the egress interface must differ from the monitored one ({0})")]
    EgressIsMonitored(String),
    #[error(transparent)]
    Maps(#[from] xdt_datapath::Error),
    #[error("re-entry pair: {0}")]
    Reentry(#[from] reentry::ReentryError),
    #[error(transparent)]
    Xsk(#[from] xsk::XskError),
    #[error("opening a packet socket on the egress interface {iface} failed")]
    Egress {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the steering thread failed")]
    Thread(#[source] std::io::Error),
    #[error("pinning the steering thread to CPU {cpu} failed")]
    Pin {
        cpu: usize,
        #[source]
        source: nix::Error,
    },
    #[error("dropping the steering thread's capabilities failed")]
    DropCapabilities(#[source] crate::privileges::Error),
}

/// Receives the events of steered packets, encoded (the agent's pending batch takes them and
/// leaves the list empty, its room kept), and how many more did not encode (dropped, to be
/// counted with the events dropped).
pub type EventSink = Arc<dyn Fn(&mut Encoded<Event>, u64) + Send + Sync>;
