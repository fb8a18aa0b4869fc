//! Central's own loss and refusal counters: everything central drops, refuses or fails to do
//! is counted here, logged where it happens, and exported as `xdt_central_*_total` on
//! `/metrics`, under `central` in `/metrics.json` and as OTLP `xdt.central.*`
//! (docs/reliability.md lists them).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Cumulative since central started.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)+
        }

        impl Counters {
            /// (name, help, value) of every counter, in a fixed order.
            #[must_use]
            pub fn all(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((
                    stringify!($name),
                    concat!($($doc),+).trim_start(),
                    self.$name.load(Ordering::Relaxed),
                ),)+]
            }
        }
    };
}

counters! {
    /// Telemetry connections whose accept failed (usually out of file descriptors); central
    /// backs off and keeps serving.
    telemetry_accept_errors,
    /// Authenticated telemetry connections refused with Busy at --max-connections.
    connections_refused,
    /// Unauthenticated telemetry connections closed: refused at once (--max-handshakes all
    /// younger than a second), or pushed out by a newer one after a second without Hello.
    handshakes_refused,
    /// Telemetry connections closed because the peer sent no preamble and Hello in time.
    handshake_timeouts,
    /// HTTP connections whose accept failed (usually out of file descriptors).
    http_accept_errors,
    /// HTTP connections refused with 503 at the HTTP connection limit.
    http_refused,
    /// HTTP requests refused as too large, too slow, or carrying a body.
    http_rejected,
    /// Failed journal writes or syncs (each retried in a new segment; Acks wait meanwhile).
    journal_failures,
    /// Failed state.json snapshots (nothing is lost: the journal keeps the batches).
    state_save_failures,
    /// Agents removed after --agent-expiry without a connection.
    agents_expired,
    /// Disconnected agents removed to make room for a new one in a full table.
    agents_evicted,
    /// New agents refused: the table is full of connected agents, or too many new agents
    /// arrived at once.
    agents_refused,
    /// Sampled and steered events not exported as OTLP logs: the export queue was full, or
    /// their export failed.
    otlp_logs_dropped,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
