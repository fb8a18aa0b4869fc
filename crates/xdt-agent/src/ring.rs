//! The reader of the probe's ring buffer: sampled events, decoded with the label names and
//! encoded for the wire, into the events the next batch takes.

use std::{sync::Arc, time::Duration};

use log::warn;
use tokio::io::unix::AsyncFd;
use xdt_common::events::{RING_BYTES, SampledEvent};
use xdt_datapath::{
    attached::AttachedProbe,
    events::{Event as ProbeEvent, EventReader},
};
use xdt_wire::Event;

use crate::{
    labels,
    outbox::Encoded,
    shared::{Shared, push_events},
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

/// How long the reader waits after a drain before it reads again, unless that drain found the
/// ring half full. The probe wakes a reader that has caught up on every event it writes, so a
/// reader that drains as soon as it is woken pays a wake-up (an epoll round, a timer, a ledger
/// update) for every event or few: at 50,000 events/s that was 1,800 wake-ups a second and most
/// of the agent's CPU. After a pause the ring holds what arrived meanwhile, one wake-up's work.
/// 5 ms of events fill half the ring only above some 300,000 events/s, where the reader stops
/// pausing.
const PAUSE: Duration = Duration::from_millis(5);
/// Events a full ring holds: each record is a `SampledEvent` behind the kernel's 8-byte header.
const RING_EVENTS: usize = RING_BYTES as usize / (size_of::<SampledEvent>() + 8);

/// Reads sampled events from the probe's ring buffer into `shared.pending` until aborted.
pub(crate) async fn read_events(
    mut ring: AsyncFd<EventReader>,
    mut names: labels::LabelNames,
    shared: Arc<Shared>,
) {
    let offset = crate::clock::monotonic_to_unix_offset();
    let mut fresh = Encoded::default();
    // One event value, its strings reused: the events are kept encoded, not as values.
    let mut event = Event::blank("");
    loop {
        // A wake-up lost between draining and re-arming costs at most 200 ms.
        if let Ok(Ok(mut guard)) =
            tokio::time::timeout(Duration::from_millis(200), ring.readable_mut()).await
        {
            guard.clear_ready();
        }
        let mut unfit = 0;
        let read = ring.get_mut().drain(&mut |raw| {
            let e = ProbeEvent::decode(raw, names.covering(raw.label));
            event.timestamp_unix_ns = e.timestamp_ns.wrapping_add(offset);
            event.label = e.label;
            event.rule = e.rule;
            if event.action != e.action {
                event.action.clear();
                event.action.push_str(e.action);
            }
            event.rx_queue = e.rx_queue;
            event.headers = e.headers;
            if fresh.push(&event).is_err() {
                unfit += 1;
            }
        });
        push_events(&shared, &mut fresh, unfit, "sampled");
        if read > 0 && read < RING_EVENTS / 2 {
            tokio::time::sleep(PAUSE).await;
        }
    }
}
