//! The reader of the probe's ring buffer: sampled events, decoded with the label names, into
//! the events the next batch takes.

use std::{sync::Arc, time::Duration};

use log::warn;
use tokio::io::unix::AsyncFd;
use xdt_datapath::{
    attached::AttachedProbe,
    events::{Event as ProbeEvent, EventReader},
};
use xdt_wire::Event;

use crate::{
    labels,
    shared::{Shared, push_pending},
};

/// Opens the probe's ring buffer and label names (before capabilities go); `None`, with a
/// warning, if the ring buffer cannot be read.
pub(crate) fn open_events(
    probe: &AttachedProbe,
) -> Option<(AsyncFd<EventReader>, labels::LabelNames)> {
    let iface = probe.interface();
    let opened = probe
        .events()
        .and_then(|r| Ok((r, probe.label_names()?)))
        .map_err(anyhow::Error::from)
        .and_then(|(r, names)| {
            // SAFETY: the reader owns the ring buffer's descriptor and keeps it open, unchanged,
            // for as long as it lives, and the AsyncFd owns the reader.
            unsafe { AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE) }
                .map(|ring| (ring, labels::LabelNames::new(names)))
                .map_err(|e| anyhow::Error::from(e.into_parts().1))
        });
    match opened {
        Ok(opened) => Some(opened),
        Err(e) => {
            warn!("sampled events unavailable on {iface}: {e:#}");
            None
        }
    }
}

/// Reads sampled events from the probe's ring buffer into `shared.pending` until aborted.
pub(crate) async fn read_events(
    mut ring: AsyncFd<EventReader>,
    mut names: labels::LabelNames,
    shared: Arc<Shared>,
    max_pending: usize,
) {
    let offset = crate::clock::monotonic_to_unix_offset();
    let mut fresh = Vec::new();
    loop {
        // A wake-up lost between draining and re-arming costs at most 200 ms.
        if let Ok(Ok(mut guard)) =
            tokio::time::timeout(Duration::from_millis(200), ring.readable_mut()).await
        {
            guard.clear_ready();
        }
        let reader = ring.get_mut();
        reader.drain(&mut |raw| {
            let e = ProbeEvent::decode(raw, names.covering(raw.label));
            fresh.push(Event {
                timestamp_unix_ns: e.timestamp_ns.wrapping_add(offset),
                label: e.label,
                rule: e.rule,
                action: e.action.to_owned(),
                rx_queue: e.rx_queue,
                headers: e.headers,
                inspection: None,
            });
        });
        if fresh.is_empty() {
            continue;
        }
        push_pending(&shared, std::mem::take(&mut fresh), max_pending);
    }
}
