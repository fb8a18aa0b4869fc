//! The agent's flow state: the records drained from the probe's tables each interval, merged
//! per flow key, and the end of flows (idle, active timeout, FIN or RST, the agent stopping, or
//! no room left) as deltas to export. Pure: no kernel, no clock of its own, unit-tested.

use std::collections::hash_map::Entry;

use foldhash::HashMap;
use foldhash::HashMapExt as _;

use xdt_common::flows::{FlowKey, FlowRecord};
/// Why a delta was exported: the wire's end reasons are IPFIX's flowEndReason values.
pub use xdt_wire::FlowEnd;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// One exported piece of a flow: what the probe counted for it since the previous export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowDelta {
    pub key: FlowKey,
    /// CLOCK_MONOTONIC ns of the delta's first and last packet.
    pub start_ns: u64,
    pub end_ns: u64,
    pub packets: u64,
    /// IP octets.
    pub bytes: u64,
    /// The OR of the delta's TCP flags.
    pub tcp_flags: u8,
    /// Label id of the flow's first packet.
    pub label: u32,
    /// Inbound TCP handshake, once measured; 0 when not.
    pub handshake_ns: u64,
    pub reason: FlowEnd,
}

impl FlowDelta {
    /// The record as central gets it: times moved to the wall clock by `unix_offset_ns` (Unix
    /// time minus the probe's CLOCK_MONOTONIC), `label` the name of its label id (none for id
    /// 0, no rule).
    #[must_use]
    pub fn to_wire(&self, label: String, unix_offset_ns: u64) -> xdt_wire::Flow {
        let key = &self.key;
        xdt_wire::Flow {
            key: xdt_wire::FlowKey {
                src: key.src_addr(),
                dst: key.dst_addr(),
                src_port: key.src_port,
                dst_port: key.dst_port,
                protocol: key.protocol,
                vlans: key.vlans,
            },
            packets: self.packets,
            bytes: self.bytes,
            first_seen_unix_ns: self.start_ns.saturating_add(unix_offset_ns),
            last_seen_unix_ns: self.end_ns.saturating_add(unix_offset_ns),
            tcp_flags: self.tcp_flags,
            label: (self.label != 0).then_some(label),
            handshake_ns: (self.handshake_ns != 0).then_some(self.handshake_ns),
            end: self.reason,
        }
    }
}

/// The timeouts and the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub idle_ns: u64,
    pub active_ns: u64,
    /// Flows the state holds at most.
    pub max_flows: usize,
}

/// What the state keeps of one flow between exports.
#[derive(Clone, Copy, Debug)]
struct Flow {
    label: u32,
    /// First packet of the pending delta; meaningless while `packets` is 0.
    start_ns: u64,
    /// Latest packet of the flow.
    last_ns: u64,
    packets: u64,
    bytes: u64,
    flags: u8,
    handshake_ns: u64,
    /// A SYN drained without its handshake, kept for the next interval's merge (the probe
    /// cannot carry it over once the agent drained it).
    open_syn_ns: u64,
    open_syn_round: u64,
}

/// The flows of one interface, merged from drained records.
#[derive(Debug)]
pub struct FlowState {
    flows: HashMap<FlowKey, Flow>,
    limits: Limits,
    /// Drains merged so far.
    round: u64,
}

impl FlowState {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            flows: HashMap::new(),
            limits,
            round: 0,
        }
    }

    /// Flows held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Merges one interval's drained records (the deltas of that interval: each record's
    /// counts are final, and no flow is in the list twice). A flow that ends here (FIN or RST
    /// in its flags) and a new flow that finds the state full go to `out` at once.
    pub fn merge(&mut self, drained: &[(FlowKey, FlowRecord)], out: &mut Vec<FlowDelta>) {
        self.round += 1;
        let round = self.round;
        for (key, record) in drained {
            if record.packets == 0 {
                continue;
            }
            let flags = record.tcp_flags();
            let full = self.flows.len() >= self.limits.max_flows;
            // One hash of the key per record: the entry, not a lookup and then an insert.
            let flow = match self.flows.entry(*key) {
                Entry::Occupied(flow) => flow.into_mut(),
                Entry::Vacant(_) if full => {
                    out.push(delta_of(key, record, flags, FlowEnd::LackOfResources));
                    continue;
                }
                Entry::Vacant(slot) => slot.insert(Flow {
                    label: record.label,
                    start_ns: record.first_seen_ns,
                    last_ns: record.last_seen_ns,
                    packets: 0,
                    bytes: 0,
                    flags: 0,
                    handshake_ns: 0,
                    open_syn_ns: 0,
                    open_syn_round: 0,
                }),
            };
            if flow.packets == 0 {
                flow.start_ns = record.first_seen_ns;
            }
            flow.packets += record.packets;
            flow.bytes += record.bytes;
            flow.flags |= flags;
            flow.last_ns = flow.last_ns.max(record.last_seen_ns);
            if record.handshake_ns != 0 {
                flow.handshake_ns = record.handshake_ns;
                flow.open_syn_ns = 0;
            } else if record.syn_ns != 0 {
                flow.open_syn_ns = record.syn_ns;
                flow.open_syn_round = round;
            } else if flow.open_syn_ns != 0
                && flow.open_syn_round + 1 == round
                && flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK
                && record.first_seen_ns > flow.open_syn_ns
            {
                // The probe drained the SYN's record before the ACK came, so it found no SYN
                // to carry over. A client sends nothing between its SYN and its ACK: this
                // record's first packet is the ACK.
                flow.handshake_ns = record.first_seen_ns - flow.open_syn_ns;
                flow.open_syn_ns = 0;
            }
            if flags & (TCP_FIN | TCP_RST) != 0 {
                let flow = *flow;
                self.flows.remove(key);
                out.push(take(key, &flow, FlowEnd::EndOfFlow));
            }
        }
    }

    /// Ends idle flows and cuts a delta of flows that reached the active timeout, at
    /// CLOCK_MONOTONIC `now_ns`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<FlowDelta>) {
        let Limits {
            idle_ns, active_ns, ..
        } = self.limits;
        let round = self.round;
        self.flows.retain(|key, flow| {
            if flow.open_syn_round < round {
                flow.open_syn_ns = 0;
            }
            if now_ns.saturating_sub(flow.last_ns) >= idle_ns {
                if flow.packets > 0 {
                    out.push(take(key, flow, FlowEnd::Idle));
                }
                return false;
            }
            if flow.packets > 0 && now_ns.saturating_sub(flow.start_ns) >= active_ns {
                out.push(take(key, flow, FlowEnd::Active));
                flow.packets = 0;
                flow.bytes = 0;
                flow.flags = 0;
            }
            true
        });
    }

    /// Ends every flow (the agent stops).
    pub fn end_all(&mut self, out: &mut Vec<FlowDelta>) {
        for (key, flow) in self.flows.drain() {
            if flow.packets > 0 {
                out.push(take(&key, &flow, FlowEnd::Forced));
            }
        }
    }
}

fn take(key: &FlowKey, flow: &Flow, reason: FlowEnd) -> FlowDelta {
    FlowDelta {
        key: *key,
        start_ns: flow.start_ns,
        end_ns: flow.last_ns,
        packets: flow.packets,
        bytes: flow.bytes,
        tcp_flags: flow.flags,
        label: flow.label,
        handshake_ns: flow.handshake_ns,
        reason,
    }
}

fn delta_of(key: &FlowKey, record: &FlowRecord, flags: u8, reason: FlowEnd) -> FlowDelta {
    FlowDelta {
        key: *key,
        start_ns: record.first_seen_ns,
        end_ns: record.last_seen_ns,
        packets: record.packets,
        bytes: record.bytes,
        tcp_flags: flags,
        label: record.label,
        handshake_ns: record.handshake_ns,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0200_000a, 0, 0, 0],
            src_port: port,
            dst_port: 80,
            ip_version: 4,
            protocol: 6,
            ..FlowKey::default()
        }
    }

    fn record(packets: u64, first: u64, last: u64, flags: u8) -> FlowRecord {
        FlowRecord::of_packets(packets, packets * 100, first, last, flags, 3)
    }

    fn state(max_flows: usize) -> FlowState {
        FlowState::new(Limits {
            idle_ns: 15 * S,
            active_ns: 60 * S,
            max_flows,
        })
    }

    #[test]
    fn intervals_add_up_and_idle_ends_the_flow_once() {
        let mut state = state(10);
        let mut out = Vec::new();
        state.merge(&[(key(1), record(3, S, 2 * S, TCP_ACK))], &mut out);
        state.expire(2 * S, &mut out);
        state.merge(&[(key(1), record(2, 3 * S, 4 * S, TCP_ACK))], &mut out);
        state.expire(4 * S, &mut out);
        assert!(out.is_empty());
        state.expire(4 * S + 15 * S - 1, &mut out);
        assert!(out.is_empty(), "one ns before the idle timeout");
        state.expire(4 * S + 15 * S, &mut out);
        assert_eq!(out.len(), 1);
        let d = out[0];
        assert_eq!((d.packets, d.bytes), (5, 500));
        assert_eq!((d.start_ns, d.end_ns), (S, 4 * S));
        assert_eq!(
            (d.reason, d.label, d.tcp_flags),
            (FlowEnd::Idle, 3, TCP_ACK)
        );
        assert!(state.is_empty());
        state.expire(100 * S, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn active_timeout_exports_a_delta_and_keeps_the_flow() {
        let mut state = state(10);
        let mut out = Vec::new();
        state.merge(&[(key(1), record(10, S, 30 * S, 0))], &mut out);
        state.merge(&[(key(1), record(5, 31 * S, 61 * S, 0))], &mut out);
        state.expire(61 * S, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].packets, out[0].reason), (15, FlowEnd::Active));
        assert_eq!(state.len(), 1);
        state.merge(&[(key(1), record(2, 62 * S, 63 * S, 0))], &mut out);
        state.expire(80 * S, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].packets, out[1].start_ns), (2, 62 * S));
        assert_eq!(out[1].reason, FlowEnd::Idle);
    }

    #[test]
    fn fin_and_rst_end_the_flow_in_the_interval_they_are_seen() {
        let mut state = state(10);
        let mut out = Vec::new();
        state.merge(
            &[
                (key(1), record(4, S, 2 * S, TCP_ACK | TCP_FIN)),
                (key(2), record(1, S, S, TCP_RST)),
                (key(3), record(1, S, S, TCP_ACK)),
            ],
            &mut out,
        );
        let mut ended: Vec<_> = out.iter().map(|d| (d.key.src_port, d.reason)).collect();
        ended.sort_by_key(|e| e.0);
        assert_eq!(ended, [(1, FlowEnd::EndOfFlow), (2, FlowEnd::EndOfFlow)]);
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn a_full_state_exports_new_flows_at_once_and_loses_no_count() {
        let mut state = state(2);
        let mut out = Vec::new();
        let drained: Vec<_> = (1..=5).map(|p| (key(p), record(2, S, S, 0))).collect();
        state.merge(&drained, &mut out);
        assert_eq!(state.len(), 2);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|d| d.reason == FlowEnd::LackOfResources));
        state.end_all(&mut out);
        assert_eq!(out.iter().map(|d| d.packets).sum::<u64>(), 10);
        assert!(out[3..].iter().all(|d| d.reason == FlowEnd::Forced));
    }

    #[test]
    fn the_agent_completes_a_handshake_whose_syn_it_drained() {
        let mut state = state(10);
        let mut out = Vec::new();
        let syn = FlowRecord {
            syn_ns: S,
            ..record(1, S, S, TCP_SYN)
        };
        state.merge(&[(key(1), syn)], &mut out);
        state.expire(S, &mut out);
        state.merge(
            &[(key(1), record(1, S + 250_000, S + 250_000, TCP_ACK))],
            &mut out,
        );
        state.end_all(&mut out);
        assert_eq!(out[0].handshake_ns, 250_000);
        assert_eq!(out[0].packets, 2);

        // Not when the ACK comes a whole interval later: the SYN is kept for one interval.
        let mut out = Vec::new();
        state.merge(
            &[(
                key(2),
                FlowRecord {
                    syn_ns: S,
                    ..record(1, S, S, TCP_SYN)
                },
            )],
            &mut out,
        );
        state.expire(S, &mut out);
        state.merge(&[], &mut out);
        state.expire(2 * S, &mut out);
        state.merge(&[(key(2), record(1, 3 * S, 3 * S, TCP_ACK))], &mut out);
        state.end_all(&mut out);
        assert_eq!(out[0].handshake_ns, 0);

        // The probe's own carry-over wins: its record has the handshake.
        let mut out = Vec::new();
        state.merge(
            &[(
                key(3),
                FlowRecord {
                    syn_ns: S,
                    ..record(1, S, S, TCP_SYN)
                },
            )],
            &mut out,
        );
        state.expire(S, &mut out);
        let done = FlowRecord {
            handshake_ns: 7,
            ..record(1, S + 9, S + 9, TCP_ACK)
        };
        state.merge(&[(key(3), done)], &mut out);
        state.end_all(&mut out);
        assert_eq!(out[0].handshake_ns, 7);
    }
}
