//! The agent's main loop: [`run`] opens the source, the ledger, steering and the ring reader,
//! drops every capability, starts the uplink, then batches every interval, feeds systemd's
//! watchdog (and the heartbeat) and applies reloads until it is told to stop; then it flushes.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use log::{info, warn};
use xdt_systemd::notify::Notifier;
use xdt_wire::Hello;

use crate::{
    batch::Batcher,
    config::{Config, Control},
    flows, heartbeat, host, labels, privileges,
    ring::{open_events, read_events},
    shared::{Shared, push_events, take_over_ledger},
    source::Source,
    status::StatusLine,
    steer, uplink,
};

/// How long a stop waits for central to acknowledge what is left.
const FLUSH: Duration = Duration::from_secs(5);
/// The least time between a batch and one made early because pending events or flow records
/// reached half their bound.
const MIN_BATCH_GAP: Duration = Duration::from_millis(20);

/// Runs until [`Control::Stop`] (or the sender is dropped), then flushes unacknowledged
/// batches for up to 5 s.
pub async fn run(
    mut config: Config,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
) -> Result<()> {
    let notifier = Notifier::new();
    let source = match &config.foreign_map {
        Some(selector) => Source::pkt_stats(selector)?,
        None => Source::xdt_probe(&config.interface)?,
    };
    info!(
        "xdt-agent {} starting: interface {}, central {}, agent id {}, source {source:?}",
        env!("CARGO_PKG_VERSION"),
        config.interface,
        config.central,
        config.agent_id
    );
    let shared = Arc::new(Shared::new(
        config.max_batches,
        config.max_events,
        config.flows.buffer,
    ));
    if let Some(probe) = source.probe() {
        take_over_ledger(probe, &shared);
    }
    let hello = Hello {
        agent_id: config.agent_id.clone(),
        hostname: host::hostname(),
        interface: config.interface.clone(),
        probe_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance: host::random_u64(),
        token: config.token.clone(),
    };

    let steering = match (&config.steer, source.probe()) {
        (Some(steer_config), Some(probe)) => {
            let steer_config = &steer::SteerConfig {
                drop_capabilities: config.drop_capabilities,
                ..steer_config.clone()
            };
            let sink_shared = shared.clone();
            let sink: steer::EventSink =
                Arc::new(move |events, unfit| push_events(&sink_shared, events, unfit, "steered"));
            Some(
                steer::Steering::start(probe, steer_config, sink)
                    .await
                    .with_context(|| format!("AF_XDP steering on {}", config.interface))?,
            )
        }
        _ => None,
    };

    let ring = source.probe().map(open_events);
    let flow_tables = match source.probe() {
        Some(probe) => flows::open(probe, &config.flows)?,
        None => None,
    };
    // Everything is open: from here on no capability is needed, and no thread has been started
    // yet by this one (the uplink's name lookups run on threads the runtime starts later).
    if config.drop_capabilities {
        privileges::drop_all().context("dropping capabilities")?;
        info!("capabilities dropped");
    }
    let heartbeat = match &config.heartbeat {
        Some(path) => Some(
            heartbeat::Heartbeat::start(path)
                .with_context(|| format!("starting the heartbeat {}", path.display()))?,
        ),
        None => None,
    };
    let flow_thread = flow_tables
        .map(|opened| {
            let to_central = shared.clone();
            let sink: flows::FlowSink = Box::new(move |records| to_central.push_flows(records));
            flows::Flows::start(opened.with_sink(sink), config.interval)
        })
        .transpose()?;
    let events = ring
        .flatten()
        .map(|(ring, names)| tokio::spawn(read_events(ring, names, shared.clone())));
    let (stop_uplink, uplink_stop) = tokio::sync::watch::channel(false);
    let mut uplink = tokio::spawn(uplink::run(
        config.central.clone(),
        hello,
        shared.clone(),
        uplink_stop,
    ));

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog_period = notifier.watchdog_period();
    // Without systemd the heartbeat alone sets the pace; with both, the faster one.
    let health_period = match (watchdog_period, &heartbeat) {
        (Some(w), Some(_)) => Some(w.min(heartbeat::PERIOD)),
        (None, Some(_)) => Some(heartbeat::PERIOD),
        (period, None) => period,
    };
    let mut watchdog = tokio::time::interval(health_period.unwrap_or(Duration::from_hours(1)));
    let mut batcher = Batcher::default();
    let mut status = StatusLine::new(&config, steering.as_ref(), flow_thread.as_ref());
    notifier.ready(&status.line(None, &shared));
    let mut last_batch = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.batch_due.notified() => {
                // A burst: batch now, but not more often than MIN_BATCH_GAP, which bounds the
                // batches a flood makes (with a small `--buffer-events`, or of large events).
                tokio::time::sleep_until(last_batch + MIN_BATCH_GAP).await;
            }
            _ = watchdog.tick() => {
                // The loop is alive if it got here; steering's and the flows' threads must be
                // too.
                let period = health_period.unwrap_or(Duration::MAX);
                if steering.as_ref().is_none_or(|s| s.alive(period))
                    && flow_thread.as_ref().is_none_or(flows::Flows::alive)
                {
                    notifier.watchdog();
                    if let Some(heartbeat) = &heartbeat {
                        heartbeat.beat();
                    }
                } else {
                    warn!(
                        "the steering thread has not run for {period:?} or the flow thread \
                         ended: not feeding the watchdog or the heartbeat"
                    );
                }
                continue;
            }
            command = control.recv() => match command {
                None | Some(Control::Stop) => break,
                Some(Control::Reload(new)) => {
                    notifier.reloading();
                    reload(&mut config, &new, &shared, &mut ticker);
                    status = StatusLine::new(&config, steering.as_ref(), flow_thread.as_ref());
                    notifier.reloaded(&status.line(None, &shared));
                    continue;
                }
                Some(Control::Hang) => {
                    warn!("test fault: the main loop hangs now (XDT_TEST_FAULTS=hang-on-sigusr2)");
                    loop {
                        std::thread::park();
                    }
                }
            },
        }
        let steer_stats = steering.as_ref().map(steer::Steering::stats);
        let flow_stats = flow_thread.as_ref().map(flows::Flows::stats);
        let snapshot = batcher.batch(&source, &shared, steer_stats.as_ref(), flow_stats)?;
        last_batch = tokio::time::Instant::now();
        notifier.status(&status.line(Some(&snapshot), &shared));
    }
    notifier.stopping("flushing unacknowledged batches");
    // Steering off first (the probe passes steered packets from here on), then a last batch
    // with what is pending, then what is left of FLUSH to deliver everything. Nothing in here
    // waits on central beyond it: the uplink drops its connection when told to stop, even in
    // the middle of a write to a central that stopped reading.
    let deadline = tokio::time::Instant::now() + FLUSH;
    let steer_stats = match steering {
        Some(steering) => Some(steering.stop().await),
        None => None,
    };
    // The flow thread's last round ends every flow: its records go in the last batch.
    let flow_stats = flow_thread.map(|flow_thread| {
        let stats = flow_thread.stop();
        info!("flows: {}", flows::summary(&stats));
        stats
    });
    batcher.batch(
        &source,
        &shared,
        steer_stats.as_ref(),
        flow_stats.as_deref(),
    )?;
    if let Some(events) = events {
        events.abort();
    }
    while !shared.outbox().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_uplink.send(true);
    if tokio::time::timeout(Duration::from_millis(500), &mut uplink)
        .await
        .is_err()
    {
        uplink.abort();
    }
    let (left, events, records) = {
        let outbox = shared.outbox();
        (outbox.len(), outbox.events(), outbox.flows())
    };
    if left > 0 {
        warn!(
            "stopping with {left} batches central did not acknowledge within {FLUSH:?}: \
             {events} sampled or steered events and {records} flow records in them are lost \
             (counters are not: they are cumulative)"
        );
    }
    info!("xdt-agent stopped after {} batches", batcher.batches());
    Ok(())
}

/// Applies what a reload can change in place and names what needs a restart.
fn reload(config: &mut Config, new: &Config, shared: &Shared, ticker: &mut tokio::time::Interval) {
    let restart: Vec<&str> = [
        (new.interface != config.interface, "interface"),
        (new.central != config.central, "central"),
        (new.agent_id != config.agent_id, "agent id"),
        (new.token != config.token, "token"),
        (new.foreign_map != config.foreign_map, "map"),
        (new.heartbeat != config.heartbeat, "heartbeat"),
        (new.steer != config.steer, "steering"),
        (new.flows != config.flows, "flows"),
        (
            new.drop_capabilities != config.drop_capabilities,
            "capabilities",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, name)| changed.then_some(name))
    .collect();
    if new.interval != config.interval {
        *ticker = tokio::time::interval(new.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        config.interval = new.interval;
    }
    config.max_batches = new.max_batches;
    config.max_events = new.max_events;
    shared.set_limits(config.max_batches, config.max_events);
    labels::reread_all();
    if restart.is_empty() {
        info!(
            "reloaded: interval {:?}, buffers {} batches / {} events; label names read again",
            config.interval, config.max_batches, config.max_events
        );
    } else {
        warn!(
            "reloaded interval, buffers and label names; changed {} take effect at the next restart",
            restart.join(", ")
        );
    }
}
