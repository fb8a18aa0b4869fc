//! Every way the state leaves central: `/metrics.json` ([`json`]), Prometheus' `/metrics`
//! ([`prom`]), OTLP metrics ([`otlp`]) and OTLP logs of the events ([`otlp_logs`]). What each
//! exports is read from `xdt_common::counters::CATALOGUE` and [`crate::catalogue`].

pub(crate) mod json;
pub(crate) mod otlp;
pub(crate) mod otlp_logs;
pub(crate) mod prom;
