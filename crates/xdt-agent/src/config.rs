//! What the agent runs with: its configuration (from flags, a config file or the environment,
//! parsed by `main.rs`), the token, the default agent id, and what the binary asks of a running
//! agent.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::{flows::FlowConfig, host::hostname, source::MapSelector, steer::SteerConfig};

/// Everything the agent needs, from flags or environment (see `main.rs`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The interface whose pinned probe is read; also reported to central.
    pub interface: String,
    pub central: String,
    pub agent_id: String,
    /// The shared token (read from the token file).
    pub token: String,
    pub interval: Duration,
    /// Export this foreign map instead of xdt's probe.
    pub foreign_map: Option<MapSelector>,
    /// Unacknowledged batches kept (default: one hour at one per second).
    pub max_batches: usize,
    /// Events kept in unacknowledged batches and not yet batched, together.
    pub max_events: usize,
    /// AF_XDP steering of `steer` rules; `None` leaves them to the kernel path (fail-open).
    pub steer: Option<SteerConfig>,
    /// Drop every capability once the maps, ring buffer and sockets are open.
    pub drop_capabilities: bool,
    /// Where to write a heartbeat wherever the watchdog is fed (see [`crate::heartbeat`]).
    pub heartbeat: Option<std::path::PathBuf>,
    /// Flow expiry and export (when the probe has flow tables).
    pub flows: FlowConfig,
}

/// What the binary asks of a running agent (from signals).
#[derive(Debug)]
pub enum Control {
    /// Flush and stop (SIGTERM, SIGINT).
    Stop,
    /// Apply a re-read configuration (SIGHUP) without dropping the connection to central:
    /// interval and buffer bounds change in place, label names are read again; a change of
    /// anything else is reported as needing a restart.
    Reload(Box<Config>),
    /// Test-only fault (`XDT_TEST_FAULTS=hang-on-sigusr2`): the main loop stops for good, as a
    /// deadlock would, so systemd's watchdog has something to catch.
    Hang,
}

/// Reads and validates the token file: its content without surrounding whitespace.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    use xdt_systemd::input;
    let text = input::read_text(path, input::MAX_TOKEN_BYTES)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// The default agent id, `host/IF`: one interface, one agent at central (the agents of a
/// host's interfaces would collide under the host name alone).
#[must_use]
pub fn default_agent_id(interface: &str) -> String {
    format!("{}/{interface}", hostname())
}
