//! OTLP logs (`--otlp-logs`): every sampled event, steered-packet inspection and flow record
//! central stores becomes one log record, pushed as HTTP/protobuf by the official SDK's exporter, with
//! OpenTelemetry semantic-convention attribute names where one exists (`network.transport`,
//! `source.address`, `url.path`, `dns.question.name`, ...) and `xdt.*` for the rest.
//!
//! Ingest hands events over a bounded channel and never waits: when the channel is full the
//! events are dropped and counted (`otlp_logs_dropped`), as are the records of a failed export.
//! One thread of its own (the exporter's blocking HTTP client must stay off the async runtime)
//! turns them into records and exports them in batches of at most [`BATCH`], at least once a
//! second. Only batches central applies for the first time are recorded, and a journal replay
//! records nothing, so each event is exported once.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    task::{Context, Poll, Wake, Waker},
    thread::{JoinHandle, Thread},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{error, info, warn};
use opentelemetry::{
    InstrumentationScope,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_otlp::{LogExporter, Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLoggerProvider},
};
use xdt_wire::{Event, Flow, Hello};

use crate::{
    counters::Counters,
    error::{Error, Result},
};

/// Events waiting for the export thread; more are dropped and counted.
pub const QUEUE: usize = 16_384;
/// Most records in one export request.
pub const BATCH: usize = 1024;
/// Longest a record waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);

/// The agent an event came from, shared by its batch's events.
#[derive(Debug)]
struct Origin {
    agent_id: String,
    hostname: String,
    interface: String,
}

#[derive(Debug)]
enum Item {
    Events(Arc<Origin>, Vec<Event>, Vec<Flow>),
    Stop,
}

/// Where ingest puts the events of the batches it stores.
#[derive(Debug, Clone)]
pub(crate) struct EventLogs {
    queue: SyncSender<Item>,
    /// Events in the channel or being exported, to bound it by events, not batches.
    queued: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl EventLogs {
    /// Hands the events and flow records of a newly stored batch to the exporter, or counts
    /// them as dropped.
    pub(crate) fn record(&self, hello: &Hello, events: Vec<Event>, flows: Vec<Flow>) {
        if events.is_empty() && flows.is_empty() {
            return;
        }
        let n = (events.len() + flows.len()) as u64;
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > QUEUE as u64 {
            self.drop_events(n);
            return;
        }
        let origin = Arc::new(Origin {
            agent_id: hello.agent_id.clone(),
            hostname: hello.hostname.clone(),
            interface: hello.interface.clone(),
        });
        match self.queue.try_send(Item::Events(origin, events, flows)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.drop_events(n),
        }
    }

    fn drop_events(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.counters
            .otlp_logs_dropped
            .fetch_add(n, Ordering::Relaxed);
    }
}

/// The export thread; [`EventLogExport::stop`] exports what is queued and ends it.
#[derive(Debug)]
pub(crate) struct EventLogExport {
    logs: EventLogs,
    thread: JoinHandle<()>,
}

impl EventLogExport {
    /// `endpoint` is the collector's logs URL (`http://host:4318/v1/logs`).
    pub(crate) fn start(endpoint: &str, counters: Arc<Counters>) -> Result<Self> {
        let exporter = LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| Error::Otlp {
                endpoint: endpoint.to_owned(),
                source: e.into(),
            })?;
        let (queue, items) = mpsc::sync_channel(QUEUE);
        let logs = EventLogs {
            queue,
            queued: Arc::new(AtomicU64::new(0)),
            counters,
        };
        let worker = logs.clone();
        let endpoint = endpoint.to_owned();
        let thread = std::thread::Builder::new()
            .name("xdt-otlp-logs".into())
            .spawn(move || export_loop(exporter, &items, &worker, &endpoint))
            .map_err(|source| Error::Thread {
                name: "OTLP logs",
                source,
            })?;
        Ok(Self { logs, thread })
    }

    pub(crate) fn logs(&self) -> EventLogs {
        self.logs.clone()
    }

    pub(crate) fn stop(self) {
        // A blocking send: the thread drains the channel, so there is room soon.
        let _ = self.logs.queue.send(Item::Stop);
        if self.thread.join().is_err() {
            error!("the OTLP logs thread panicked");
        }
    }
}

/// Collects the records the logger emits, for the loop to export in one request.
#[derive(Debug, Default, Clone)]
struct Collect(Arc<Mutex<Vec<(SdkLogRecord, InstrumentationScope)>>>);

impl LogProcessor for Collect {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn export_loop(
    mut exporter: LogExporter,
    items: &mpsc::Receiver<Item>,
    logs: &EventLogs,
    endpoint: &str,
) {
    let resource = Resource::builder().with_service_name("xdt-central").build();
    exporter.set_resource(&resource);
    let collect = Collect::default();
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(collect.clone())
        .build();
    let logger = provider.logger("xdt-central");
    info!(endpoint:% = endpoint; "pushing sampled and steered events as OTLP logs");
    let mut failing = false;
    let mut stopping = false;
    while !stopping {
        // One batch: up to BATCH records, or what arrived within LINGER of the first.
        let mut count = 0;
        let mut deadline = None::<Instant>;
        while count < BATCH {
            let item = match deadline {
                None => items.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => items.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match item {
                Ok(Item::Events(origin, events, flows)) => {
                    let now = SystemTime::now();
                    for event in &events {
                        let mut record = logger.create_log_record();
                        fill(&mut record, &origin, event, now);
                        logger.emit(record);
                    }
                    for flow in &flows {
                        let mut record = logger.create_log_record();
                        fill_flow(&mut record, &origin, flow, now);
                        logger.emit(record);
                    }
                    count += events.len() + flows.len();
                    deadline.get_or_insert_with(|| Instant::now() + LINGER);
                }
                Ok(Item::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        let records =
            std::mem::take(&mut *collect.0.lock().unwrap_or_else(PoisonError::into_inner));
        if records.is_empty() {
            continue;
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            records.iter().map(|(r, s)| (r, s)).collect();
        let n = records.len() as u64;
        match block_on(exporter.export(LogBatch::new(&refs))) {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!(endpoint:% = endpoint; "OTLP log export works again");
                }
            }
            Err(e) => {
                logs.counters
                    .otlp_logs_dropped
                    .fetch_add(n, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    warn!(endpoint:% = endpoint, cause:% = e; "OTLP log export failed; its records are dropped and counted");
                }
            }
        }
        logs.queued
            .fetch_sub(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    let _ = provider.shutdown();
}

fn transport(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

fn int(value: u64) -> AnyValue {
    i64::try_from(value).unwrap_or(i64::MAX).into()
}

/// One flow record as a log record (event name `xdt.flow`): the time of its latest packet, a
/// one-line body, and its fields as attributes, with the semantic conventions' names where
/// the events use them.
fn fill_flow(record: &mut SdkLogRecord, origin: &Origin, flow: &Flow, observed: SystemTime) {
    record.set_timestamp(UNIX_EPOCH + Duration::from_nanos(flow.last_seen_unix_ns));
    record.set_observed_timestamp(observed);
    record.set_severity_number(Severity::Info);
    record.set_severity_text("INFO");
    record.set_event_name("xdt.flow");
    let transport = transport(flow.key.protocol);
    let mut body = format!(
        "flow {transport} {}:{} -> {}:{} {} packets {} bytes ({})",
        flow.key.src,
        flow.key.src_port,
        flow.key.dst,
        flow.key.dst_port,
        flow.packets,
        flow.bytes,
        flow.end.name()
    );
    let mut attributes: Vec<(&'static str, AnyValue)> = vec![
        ("xdt.agent.id", origin.agent_id.clone().into()),
        ("host.name", origin.hostname.clone().into()),
        ("network.interface.name", origin.interface.clone().into()),
        (
            "network.type",
            if flow.key.src.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            }
            .into(),
        ),
        ("network.transport", transport.into()),
        ("xdt.ip.protocol", i64::from(flow.key.protocol).into()),
        ("source.address", flow.key.src.to_string().into()),
        ("source.port", i64::from(flow.key.src_port).into()),
        ("destination.address", flow.key.dst.to_string().into()),
        ("destination.port", i64::from(flow.key.dst_port).into()),
        ("xdt.vlan.outer", i64::from(flow.key.vlans[0]).into()),
        ("xdt.vlan.inner", i64::from(flow.key.vlans[1]).into()),
        ("xdt.flow.packets", int(flow.packets)),
        ("xdt.flow.bytes", int(flow.bytes)),
        ("xdt.flow.start_unix_ns", int(flow.first_seen_unix_ns)),
        ("xdt.flow.end_unix_ns", int(flow.last_seen_unix_ns)),
        ("xdt.tcp.flags", i64::from(flow.tcp_flags).into()),
        ("xdt.flow.end_reason", flow.end.name().into()),
    ];
    if let Some(label) = &flow.label {
        attributes.push(("xdt.rule.label", label.clone().into()));
        let _ = write!(body, " label {label}");
    }
    if let Some(handshake) = flow.handshake_ns {
        attributes.push(("xdt.tcp.handshake_ns", int(handshake)));
    }
    record.set_body(body.into());
    record.add_attributes(attributes);
}

/// One event as a log record: the packet's time, a one-line body, and its fields as attributes.
fn fill(record: &mut SdkLogRecord, origin: &Origin, event: &Event, observed: SystemTime) {
    record.set_timestamp(UNIX_EPOCH + Duration::from_nanos(event.timestamp_unix_ns));
    record.set_observed_timestamp(observed);
    record.set_severity_number(Severity::Info);
    record.set_severity_text("INFO");
    let steered = event.inspection.is_some();
    record.set_event_name(if steered {
        "xdt.packet.steered"
    } else {
        "xdt.packet.sampled"
    });
    let h = &event.headers;
    let transport = transport(h.protocol);
    let mut body = format!(
        "{} {transport} {}:{} -> {}:{} label {}",
        event.action, h.src, h.src_port, h.dst, h.dst_port, event.label
    );
    let attributes: &mut Vec<(&'static str, AnyValue)> = &mut vec![
        ("xdt.agent.id", origin.agent_id.clone().into()),
        ("host.name", origin.hostname.clone().into()),
        ("network.interface.name", origin.interface.clone().into()),
        ("xdt.rule.label", event.label.clone().into()),
        ("xdt.rule.id", i64::from(event.rule).into()),
        ("xdt.rule.action", event.action.clone().into()),
        ("xdt.rx_queue", i64::from(event.rx_queue).into()),
        (
            "network.type",
            if h.src.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        ),
        ("network.transport", transport.into()),
        ("xdt.ip.protocol", i64::from(h.protocol).into()),
        ("source.address", h.src.to_string().into()),
        ("source.port", i64::from(h.src_port).into()),
        ("destination.address", h.dst.to_string().into()),
        ("destination.port", i64::from(h.dst_port).into()),
        ("xdt.ip.length", i64::from(h.ip_len).into()),
        ("xdt.payload.length", i64::from(h.payload_len).into()),
        ("xdt.tcp.flags", i64::from(h.tcp_flags).into()),
    ];
    if let Some(inspection) = &event.inspection {
        attributes.push(("xdt.frame.length", i64::from(inspection.frame_len).into()));
        attributes.push((
            "xdt.agent.latency_ns",
            i64::try_from(inspection.agent_latency_ns)
                .unwrap_or(i64::MAX)
                .into(),
        ));
        attributes.push(("xdt.reinjected", inspection.reinjected.into()));
        if let Some(http) = &inspection.http {
            attributes.push(("http.request.method", http.method.clone().into()));
            attributes.push(("url.path", http.path.clone().into()));
            if let Some(host) = &http.host {
                attributes.push(("server.address", host.clone().into()));
            }
            let _ = write!(body, " {} {}", http.method, http.path);
        }
        if let Some(dns) = &inspection.dns {
            attributes.push(("dns.question.name", dns.name.clone().into()));
            attributes.push(("xdt.dns.question.type", i64::from(dns.qtype).into()));
            let _ = write!(body, " dns {}", dns.name);
        }
    }
    record.set_body(body.into());
    record.add_attributes(attributes.drain(..));
}

/// Runs the exporter's future to completion on this thread. The OTLP exporter's HTTP client is
/// blocking (the call completes inside the first poll), so no async runtime is involved.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
