//! `xdt-central`: receives agents' telemetry over TCP (docs/telemetry-protocol.md), keeps
//! per-agent statistics ([`state`]), serves the dashboard, `/metrics.json` and `/metrics` over
//! HTTP, and pushes OTLP ([`export`]); what survives a restart is in [`persist`].
//! docs/central.md is the operator's page.
//!
//! [`Central::bind`] opens both listeners and loads the saved state; [`Central::run`] serves
//! until the `shutdown` future completes ([`server`]).

pub mod catalogue;
pub mod config;
pub mod counters;
pub mod error;
mod export;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
#[cfg(test)]
mod golden_tests;
mod http;
mod ingest;
pub mod persist;
mod server;
pub mod state;
pub mod ui;

pub use crate::{
    config::{Config, OtlpConfig, Token},
    error::{Error, Result},
    http::HttpHealth,
    server::{Central, run},
};
