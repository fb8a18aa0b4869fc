//! One agent's live flows: the flow records (deltas) it reported in the last minute, summed per
//! flow, for the top talkers by bytes and by packets, and the totals they are a part of.
//!
//! The minute is six slots of ten seconds by central's clock when a record arrived; a slot that
//! falls out of the minute is cleared, and a flow with nothing left in the minute is forgotten.
//! Memory is fixed: at most [`MAX_FLOWS_KEPT`] flows per agent. When that many are kept, a new
//! flow takes the place of the kept flow with the fewest bytes in the minute if its record has
//! more (the heavy hitters stay), else it is not kept. Either way its counts stay in the
//! totals, so `other` (the totals minus the top [`TOP_FLOWS`]) is exact; only which flows are
//! named can be wrong once more than [`MAX_FLOWS_KEPT`] flows are active in a minute, and the
//! flows not kept and pushed out are counted (`untracked_records`, `evicted_flows`).

use std::collections::HashMap;

use serde::Serialize;
pub use xdt_wire::FlowKey;
use xdt_wire::{Flow, FlowEnd};

use super::{MAX_SHORT, clip::clipped, time::to_f64};

/// Flows kept per agent for the top talkers.
pub const MAX_FLOWS_KEPT: usize = 1024;
/// Flows named in each ranking (by bytes, by packets): in `/metrics.json`, Prometheus and the
/// dashboard alike.
pub const TOP_FLOWS: usize = 10;
/// The window of the top talkers, seconds.
pub const FLOW_WINDOW_SECONDS: u64 = 60;
const SLOT_SECONDS: u64 = 10;
const SLOTS: usize = 6;
const _: () = assert!(SLOT_SECONDS * SLOTS as u64 == FLOW_WINDOW_SECONDS);

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, packets: u64, bytes: u64) {
        self.packets = self.packets.saturating_add(packets);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn minus(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_sub(other.packets),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

/// A kept flow: its counts per slot and what its newest record said.
#[derive(Debug, Clone)]
struct Kept {
    slots: [Count; SLOTS],
    /// Its bytes in the minute: the sum of `slots`.
    bytes: u64,
    label: Option<String>,
    handshake_ns: Option<u64>,
    tcp_flags: u8,
    last_seen_unix_ns: u64,
    end: FlowEnd,
}

/// One agent's flow records of the last minute (see the module).
#[derive(Debug, Clone)]
pub struct FlowWindow {
    /// The slot number (`unix seconds / SLOT_SECONDS`) each slot holds.
    slot_numbers: [u64; SLOTS],
    flows: HashMap<FlowKey, Kept>,
    /// Every record's counts per slot, kept or not.
    totals: [Count; SLOTS],
    records: [u64; SLOTS],
    /// When the first record came (unix seconds): the rate's span until a minute has passed.
    since_unix: f64,
    /// Records received, cumulative.
    pub received_records: u64,
    /// Records of flows not kept (the kept ones all had more bytes), cumulative.
    pub untracked_records: u64,
    /// Kept flows pushed out by a flow with more bytes, cumulative.
    pub evicted_flows: u64,
    /// At most the fewest bytes of a kept flow, while the map is full: a record with no more
    /// is not kept without looking at every flow (kept flows only grow until a slot is
    /// cleared, which forgets it).
    floor: Option<u64>,
}

/// A named flow of a ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopFlow {
    #[serde(flatten)]
    pub key: FlowKey,
    /// Its packets and bytes in the minute.
    pub packets: u64,
    pub bytes: u64,
    pub label: Option<String>,
    pub handshake_ns: Option<u64>,
    /// The OR of the TCP flags of its records since it is kept.
    pub tcp_flags: u8,
    pub last_seen_unix_ns: u64,
    /// Why its newest record was sent (`idle`, `active`, `end`, `forced`, `resources`).
    pub end: &'static str,
}

/// The top talkers of one agent and the totals they are a part of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowSummary {
    /// Seconds the figures cover: the minute, or less since the first record.
    pub window_seconds: f64,
    /// Flow records per second over the window.
    pub records_per_second: f64,
    /// Every record of the window, kept or not.
    pub total: Count,
    pub records: u64,
    /// Flows kept now (at most `max_flows_kept`).
    pub flows_kept: usize,
    pub max_flows_kept: usize,
    /// The largest flows by bytes, then what the rest of the window adds up to.
    pub top_bytes: Vec<TopFlow>,
    pub other_by_bytes: Count,
    /// The largest flows by packets, then the rest.
    pub top_packets: Vec<TopFlow>,
    pub other_by_packets: Count,
    pub received_records: u64,
    pub untracked_records: u64,
    pub evicted_flows: u64,
}

fn slot_number(now_unix: f64) -> u64 {
    if now_unix.is_finite() && now_unix > 0.0 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "positive and finite, seconds since 1970 fit a u64"
        )]
        let seconds = now_unix as u64;
        seconds / SLOT_SECONDS
    } else {
        0
    }
}

impl FlowWindow {
    #[must_use]
    pub fn new(now_unix: f64) -> Self {
        Self {
            slot_numbers: [0; SLOTS],
            flows: HashMap::new(),
            totals: [Count::default(); SLOTS],
            records: [0; SLOTS],
            since_unix: now_unix,
            received_records: 0,
            untracked_records: 0,
            evicted_flows: 0,
            floor: None,
        }
    }

    /// Whether slot `i` belongs to the minute ending in slot number `current`.
    fn live(&self, i: usize, current: u64) -> bool {
        let n = self.slot_numbers[i];
        n != 0 && n <= current && current - n < SLOTS as u64
    }

    /// Makes slot number `current` the newest: clears the slots that left the minute and
    /// forgets the flows with nothing left in it. Returns the index of `current`'s slot.
    fn advance(&mut self, current: u64) -> usize {
        #[expect(clippy::cast_possible_truncation, reason = "an index below SLOTS")]
        let index = (current % SLOTS as u64) as usize;
        if self.slot_numbers[index] == current {
            return index;
        }
        let stale: Vec<usize> = (0..SLOTS)
            .filter(|&i| i == index || !self.live(i, current))
            .collect();
        for &i in &stale {
            self.slot_numbers[i] = 0;
            self.totals[i] = Count::default();
            self.records[i] = 0;
        }
        self.slot_numbers[index] = current;
        self.floor = None;
        self.flows.retain(|_, kept| {
            for &i in &stale {
                kept.slots[i] = Count::default();
            }
            kept.bytes = kept.slots.iter().map(|c| c.bytes).sum();
            kept.slots.iter().any(|c| c.packets != 0 || c.bytes != 0)
        });
        index
    }

    /// Adds the records of one batch, received at `now_unix`.
    pub fn add(&mut self, flows: Vec<Flow>, now_unix: f64) {
        let current = slot_number(now_unix);
        // A clock that went back puts its records in the newest slot.
        let newest = self.slot_numbers.iter().copied().max().unwrap_or(0);
        let index = self.advance(current.max(newest));
        for flow in flows {
            self.received_records += 1;
            self.totals[index].add(flow.packets, flow.bytes);
            self.records[index] += 1;
            let key = flow.key;
            if !self.flows.contains_key(&key) && !self.make_room(flow.bytes) {
                self.untracked_records += 1;
                continue;
            }
            let kept = self.flows.entry(key).or_insert_with(|| Kept {
                slots: [Count::default(); SLOTS],
                bytes: 0,
                label: None,
                handshake_ns: None,
                tcp_flags: 0,
                last_seen_unix_ns: 0,
                end: flow.end,
            });
            kept.slots[index].add(flow.packets, flow.bytes);
            kept.bytes = kept.bytes.saturating_add(flow.bytes);
            if let Some(label) = flow.label {
                kept.label = Some(clipped(&label, MAX_SHORT).to_owned());
            }
            kept.handshake_ns = flow.handshake_ns.or(kept.handshake_ns);
            kept.tcp_flags |= flow.tcp_flags;
            kept.last_seen_unix_ns = kept.last_seen_unix_ns.max(flow.last_seen_unix_ns);
            kept.end = flow.end;
        }
    }

    /// Room for a new flow whose record has `bytes`: free, or made by pushing out the kept
    /// flow with the fewest bytes in the minute if that is fewer (ties: the smallest key, so
    /// the choice does not depend on the map's order).
    fn make_room(&mut self, bytes: u64) -> bool {
        if self.flows.len() < MAX_FLOWS_KEPT {
            return true;
        }
        if self.floor.is_some_and(|floor| bytes <= floor) {
            return false;
        }
        let smallest = self
            .flows
            .iter()
            .map(|(key, kept)| (kept.bytes, *key))
            .min();
        match smallest {
            Some((least, key)) if least < bytes => {
                self.flows.remove(&key);
                self.evicted_flows += 1;
                // The rest had at least `least`, and the newcomer more.
                self.floor = Some(least);
                true
            }
            Some((least, _)) => {
                self.floor = Some(least);
                false
            }
            None => true,
        }
    }

    /// The window as of `now_unix` (slots that left the minute since the last record are left
    /// out).
    #[must_use]
    pub fn summary(&self, now_unix: f64) -> FlowSummary {
        let current =
            slot_number(now_unix).max(self.slot_numbers.iter().copied().max().unwrap_or(0));
        let live: Vec<usize> = (0..SLOTS).filter(|&i| self.live(i, current)).collect();
        let mut total = Count::default();
        let mut records = 0;
        for &i in &live {
            total.add(self.totals[i].packets, self.totals[i].bytes);
            records += self.records[i];
        }
        let mut flows: Vec<TopFlow> = self
            .flows
            .iter()
            .filter_map(|(key, kept)| {
                let mut count = Count::default();
                for &i in &live {
                    count.add(kept.slots[i].packets, kept.slots[i].bytes);
                }
                (count != Count::default()).then(|| TopFlow {
                    key: *key,
                    packets: count.packets,
                    bytes: count.bytes,
                    label: kept.label.clone(),
                    handshake_ns: kept.handshake_ns,
                    tcp_flags: kept.tcp_flags,
                    last_seen_unix_ns: kept.last_seen_unix_ns,
                    end: kept.end.name(),
                })
            })
            .collect();
        let flows_kept = flows.len();
        let top = |flows: &mut Vec<TopFlow>, by: fn(&TopFlow) -> (u64, u64)| {
            flows.sort_by(|a, b| by(b).cmp(&by(a)).then(a.key.cmp(&b.key)));
            let top: Vec<TopFlow> = flows.iter().take(TOP_FLOWS).cloned().collect();
            let named = top.iter().fold(Count::default(), |mut sum, f| {
                sum.add(f.packets, f.bytes);
                sum
            });
            (top, total.minus(named))
        };
        let (top_bytes, other_by_bytes) = top(&mut flows, |f| (f.bytes, f.packets));
        let (top_packets, other_by_packets) = top(&mut flows, |f| (f.packets, f.bytes));
        let span = (now_unix - self.since_unix).clamp(1.0, to_f64(FLOW_WINDOW_SECONDS));
        FlowSummary {
            window_seconds: span,
            records_per_second: to_f64(records) / span,
            total,
            records,
            flows_kept,
            max_flows_kept: MAX_FLOWS_KEPT,
            top_bytes,
            other_by_bytes,
            top_packets,
            other_by_packets,
            received_records: self.received_records,
            untracked_records: self.untracked_records,
            evicted_flows: self.evicted_flows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::flow;

    const T0: f64 = 1_700_000_000.0;

    #[test]
    fn top_and_other_are_exact() {
        let mut window = FlowWindow::new(T0);
        // Flow i has i packets and 1000 - i bytes: the two rankings are opposite.
        window.add(
            (1..=30)
                .map(|i| flow(i, u64::from(i), 1000 - u64::from(i)))
                .collect(),
            T0,
        );
        // A second record of flow 1 adds up.
        window.add(vec![flow(1, 100, 5)], T0 + 5.0);
        let s = window.summary(T0 + 6.0);
        assert_eq!(s.records, 31);
        let total_packets: u64 = (1..=30).sum::<u64>() + 100;
        let total_bytes: u64 = (1..=30).map(|i| 1000 - i).sum::<u64>() + 5;
        assert_eq!(
            s.total,
            Count {
                packets: total_packets,
                bytes: total_bytes
            }
        );
        let by_bytes: Vec<_> = s.top_bytes.iter().map(|f| (f.packets, f.bytes)).collect();
        assert_eq!(by_bytes[0], (101, 1004));
        assert_eq!(
            by_bytes[1..],
            (2..=10).map(|i| (i, 1000 - i)).collect::<Vec<_>>()[..]
        );
        let named: u64 = by_bytes.iter().map(|(_, b)| b).sum();
        assert_eq!(s.other_by_bytes.bytes, total_bytes - named);
        let by_packets: Vec<_> = s.top_packets.iter().map(|f| f.packets).collect();
        assert_eq!(by_packets, [101, 30, 29, 28, 27, 26, 25, 24, 23, 22]);
        let named: u64 = by_packets.iter().sum();
        assert_eq!(s.other_by_packets.packets, total_packets - named);
        assert_eq!(
            (s.flows_kept, s.untracked_records, s.evicted_flows),
            (30, 0, 0)
        );
    }

    #[test]
    fn the_minute_slides() {
        let mut window = FlowWindow::new(T0);
        window.add(vec![flow(1, 1, 100)], T0);
        window.add(vec![flow(2, 2, 200)], T0 + 30.0);
        assert_eq!(window.summary(T0 + 59.0).total.bytes, 300);
        // The first slot (T0..T0+10) has left the minute at T0+60: read without a record...
        assert_eq!(window.summary(T0 + 61.0).total.bytes, 200);
        assert_eq!(window.summary(T0 + 61.0).top_bytes.len(), 1);
        // ...and forgotten with the next one.
        window.add(vec![flow(3, 3, 300)], T0 + 95.0);
        let s = window.summary(T0 + 95.0);
        assert_eq!((s.total.bytes, s.flows_kept), (300, 1));
        assert_eq!(window.flows.len(), 1);
    }

    #[test]
    fn memory_is_bounded_and_heavy_flows_stay() {
        let mut window = FlowWindow::new(T0);
        let n = u32::try_from(MAX_FLOWS_KEPT).expect("small") * 4;
        window.add((0..n).map(|i| flow(i, 1, 10)).collect(), T0);
        assert_eq!(window.flows.len(), MAX_FLOWS_KEPT);
        assert_eq!(
            window.untracked_records,
            u64::from(n) - MAX_FLOWS_KEPT as u64
        );
        // A heavy flow pushes out a light one.
        window.add(vec![flow(n, 1, 1_000_000)], T0 + 1.0);
        assert_eq!(window.flows.len(), MAX_FLOWS_KEPT);
        assert_eq!(window.evicted_flows, 1);
        let s = window.summary(T0 + 2.0);
        assert_eq!(s.top_bytes[0].bytes, 1_000_000);
        assert_eq!(s.total.bytes, u64::from(n) * 10 + 1_000_000);
        let named: u64 = s.top_bytes.iter().map(|f| f.bytes).sum();
        assert_eq!(s.other_by_bytes.bytes, s.total.bytes - named);
    }
}
