//! OTLP push with the official SDK: observable instruments named as in the otel demo
//! (`xdp.packets.total`, ...) read the state whenever the periodic reader collects, and the
//! exporter posts them as HTTP/protobuf. Everything runs on one thread of its own (the SDK's
//! blocking HTTP client must stay off the async runtime), which does a last export at stop.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use log::{error, info, warn};
use opentelemetry::{KeyValue, metrics::MeterProvider as _};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};

use crate::{
    catalogue::{AGENT, Kind, Number, RATES, STEERING},
    config::OtlpConfig,
    error::{Error, Result},
    state::{AgentState, Shared},
};
use xdt_common::counters::CATALOGUE as PROBE;

#[expect(
    clippy::cast_precision_loss,
    reason = "a gauge for display: 53 bits of precision are plenty"
)]
fn real(value: Number) -> f64 {
    match value {
        Number::Count(v) => v as f64,
        Number::Int(v) => v as f64,
        Number::Real(v) => v,
    }
}

fn attributes(agent: &AgentState) -> [KeyValue; 3] {
    [
        KeyValue::new("agent_id", agent.agent_id.clone()),
        KeyValue::new("interface", agent.interface.clone()),
        KeyValue::new("hostname", agent.hostname.clone()),
    ]
}

/// The OTLP thread; [`Otlp::stop`] exports once more and ends it.
#[derive(Debug)]
pub(crate) struct Otlp {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Otlp {
    /// Builds the exporter (a bad endpoint fails here, at startup) and starts pushing.
    pub(crate) fn start(config: &OtlpConfig, state: Shared) -> Result<Self> {
        let exporter = MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .build()
            .map_err(|e| Error::Otlp {
                endpoint: config.endpoint.clone(),
                source: e.into(),
            })?;
        let interval = config.interval;
        let endpoint = config.endpoint.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("xdt-otlp".into())
            .spawn(move || {
                let exporter = Logged {
                    inner: exporter,
                    endpoint: endpoint.clone(),
                    failing: AtomicBool::new(false),
                };
                let reader = PeriodicReader::builder(exporter)
                    .with_interval(interval)
                    .build();
                let provider = SdkMeterProvider::builder()
                    .with_reader(reader)
                    .with_resource(Resource::builder().with_service_name("xdt-central").build())
                    .build();
                let meter = provider.meter("xdt-central");
                let mut counters = Vec::new();
                for counter in &PROBE {
                    let Some(export) = counter.otlp else {
                        continue;
                    };
                    let state = state.clone();
                    counters.push(
                        meter
                            .u64_observable_counter(export.name)
                            .with_unit(counter.unit)
                            .with_description(export.help)
                            .with_callback(move |observer| {
                                for agent in &state.figures().0 {
                                    if let Some(value) = agent.counter(counter.name) {
                                        observer.observe(value, &attributes(agent));
                                    }
                                }
                            })
                            .build(),
                    );
                }
                // AF_XDP steering, for the agents that report it: `xdt.steering.<counter>`.
                for counter in STEERING {
                    let state = state.clone();
                    counters.push(
                        meter
                            .u64_observable_counter(format!("xdt.steering.{}", counter.name))
                            .with_unit(counter.unit)
                            .with_description(counter.help)
                            .with_callback(move |observer| {
                                for agent in &state.figures().0 {
                                    if let Some(stats) = &agent.agent_stats.steering {
                                        observer.observe((counter.value)(stats), &attributes(agent));
                                    }
                                }
                            })
                            .build(),
                    );
                }
                let sockets_state = state.clone();
                let sockets = meter
                    .u64_observable_gauge("xdt.steering.sockets")
                    .with_unit("{socket}")
                    .with_description("AF_XDP sockets of the agent (one per receive queue)")
                    .with_callback(move |observer| {
                        for agent in &sockets_state.figures().0 {
                            if let Some(stats) = &agent.agent_stats.steering {
                                observer.observe(u64::from(stats.sockets), &attributes(agent));
                            }
                        }
                    })
                    .build();
                // Per-agent figures with an OTLP name, for the agents that have sent counters.
                let mut gauges = Vec::new();
                for figure in RATES.into_iter().chain(AGENT) {
                    let Some((export, unit)) = figure.otlp else {
                        continue;
                    };
                    let state = state.clone();
                    let observe = move |agent: &AgentState| {
                        (agent.taken_at_unix_ns != 0).then(|| (figure.value)(agent)).flatten()
                    };
                    match figure.kind {
                        Kind::Gauge => gauges.push(
                            meter
                                .f64_observable_gauge(export.name)
                                .with_unit(unit)
                                .with_description(export.help)
                                .with_callback(move |observer| {
                                    for agent in &state.figures().0 {
                                        if let Some(value) = observe(agent) {
                                            observer.observe(real(value), &attributes(agent));
                                        }
                                    }
                                })
                                .build(),
                        ),
                        Kind::Counter => counters.push(
                            meter
                                .u64_observable_counter(export.name)
                                .with_unit(unit)
                                .with_description(export.help)
                                .with_callback(move |observer| {
                                    for agent in &state.figures().0 {
                                        if let Some(Number::Count(value)) = observe(agent) {
                                            observer.observe(value, &attributes(agent));
                                        }
                                    }
                                })
                                .build(),
                        ),
                    }
                }
                info!(endpoint:% = endpoint, interval_seconds = interval.as_secs_f64(); "pushing OTLP metrics");
                // Until central stops (or drops the sender).
                let _ = stopped.recv();
                if let Err(e) = provider.shutdown() {
                    error!(endpoint:% = endpoint, cause:% = e; "the last OTLP export failed");
                }
                drop((counters, sockets, gauges));
            })
            .map_err(|source| Error::Thread {
                name: "OTLP",
                source,
            })?;
        Ok(Self { stop, thread })
    }

    /// Exports once more and ends the thread (blocks: call off the async runtime).
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            error!("the OTLP thread panicked");
        }
    }
}

/// Logs failed exports (the SDK's own diagnostics are compiled out): the first failure and
/// every one after at warn level, and the recovery.
#[derive(Debug)]
struct Logged {
    inner: MetricExporter,
    endpoint: String,
    failing: AtomicBool,
}

impl PushMetricExporter for Logged {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(endpoint:% = self.endpoint; "OTLP export works again");
                }
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                warn!(endpoint:% = self.endpoint, cause:% = e; "OTLP export failed");
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
