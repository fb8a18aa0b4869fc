//! `xdt-agent`: reads the counters and sampled events of the probe attached to one interface
//! (or a foreign `pkt_stats` map), batches them every interval and streams them to central with
//! at-least-once delivery (docs/telemetry-protocol.md).
//!
//! Three tasks share the [`outbox::Outbox`] (through `shared`): the event reader (`ring`, the
//! ring buffer via `AsyncFd`), the main loop (`run`: one batch per interval, `batch`) and the
//! uplink (connect, handshake, send, take acks, reconnect with backoff); steering (`steer`) adds
//! the events of steered packets from a thread of its own. The binary parses arguments, turns
//! signals into [`Control`]s and calls [`run`], which opens everything, drops every capability
//! (unless told not to), tells systemd it is ready and keeps its watchdog fed from its loop.
//!
//! Modules depend downwards only: `clock`, `host` and `labels` are leaves; `config`, `outbox`,
//! `source`, `steer` and `flows` use them; `shared` the outbox; `batch`, `ring`, `status` and `uplink`
//! the shared state; `run` all of them. This file only declares and re-exports.

mod batch;
mod clock;
mod config;
pub mod flows;
pub mod heartbeat;
mod host;
mod labels;
pub mod outbox;
pub mod privileges;
mod ring;
mod run;
mod shared;
pub mod source;
mod status;
pub mod steer;
mod uplink;

pub use config::{Config, Control, default_agent_id, read_token};
pub use run::run;
