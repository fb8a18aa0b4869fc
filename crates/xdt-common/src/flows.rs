//! `XDT_FLOWS_0`, `XDT_FLOWS_1`: the probe's flow tables, plain BPF hashes (not LRU) of
//! [`FlowKey`] to [`FlowRecord`], off unless the operator sized them (`xdt attach --flows N`;
//! docs/flows.md).
//!
//! A flow is one direction of traffic arriving at the hook: the 5-tuple, the IP version and the
//! VLAN ids. The probe creates the record on a flow's first packet and updates it in place with
//! atomic adds; it never removes or replaces one, so a full table refuses new flows and
//! [`crate::counters::Counter::FlowTableFull`] counts their packets instead of evicting old
//! flows silently.
//!
//! There are two tables, of `flow_entries` each, and the probe writes the one [`GENERATION_MAP`]
//! names. A reader that removes records (the agent's expiry) switches the generation, waits
//! until no program run can still hold a record of the old table (an RCU grace period), and then
//! drains the old table, which nothing writes any more: no count is lost between its read and
//! its delete. A reader that only looks (`xdt flows`) sums both tables.

use crate::user_pod;

/// The two tables, by generation.
pub const TABLE_MAPS: [&str; 2] = ["XDT_FLOWS_0", "XDT_FLOWS_1"];
/// One `u32`: the generation (0 or 1) whose table the probe writes. Its own map, written by the
/// one process that drains tables, so no other writer of a shared value (the rules' `Config`)
/// can put an old generation back.
pub const GENERATION_MAP: &str = "XDT_FLOW_GEN";
/// Entries each table is created with when flows are off: a hash map cannot have zero, and one
/// entry costs a few hundred bytes. The probe never touches them while
/// [`crate::config::Config::flow_entries`] is 0.
pub const OFF_ENTRIES: u32 = 1;
/// The largest table `xdt attach --flows` accepts (about 200 MiB per table: docs/flows.md).
pub const MAX_ENTRIES: u32 = 1 << 20;

/// What identifies a flow. Every byte is written by the probe (no implicit padding), so equal
/// flows hash equal.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address: its 16 bytes in network order, loaded as four native-endian words as
    /// the probe reads them from the packet (like the rules' prefixes); IPv4 in word 0, the
    /// rest zero. [`FlowKey::src_addr`] gives the address.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// TCP and UDP ports (host byte order); 0 for other protocols and later fragments.
    pub src_port: u16,
    /// For ICMP and ICMPv6: `type << 8 | code` (as NetFlow and IPFIX exporters key them), so an
    /// echo request and its reply are two flows.
    pub dst_port: u16,
    /// VLAN ids (12 bits) of the outer and the inner 802.1Q/802.1ad tag; 0 where there is none.
    /// The same addresses on two VLANs are two networks (overlapping address plans, VRFs), so
    /// they are two flows.
    pub vlans: [u16; 2],
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol; for IPv6 the one after the extension headers.
    pub protocol: u8,
    pub padding: u16,
}

/// What the probe counted for one flow. Packets and bytes only grow; user space reads them
/// and, later, deletes the record after exporting it (docs/flows.md: the read path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    pub packets: u64,
    /// IP octets: header, extension headers and payload as the IP header gives them (IPFIX's
    /// octetDeltaCount), not the Ethernet frame `total_bytes` counts.
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the first packet (the record's creation).
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC ns of the latest packet, to the last timer tick (1-10 ms, the kernel's
    /// `CONFIG_HZ`) on Linux 5.11 and later, where the probe reads the coarse clock for it; to
    /// the nanosecond before. Never before `first_seen_ns`. Stored, not added: two CPUs
    /// updating one flow at once may leave the earlier of their two times.
    pub last_seen_ns: u64,
    /// CLOCK_MONOTONIC ns of the latest SYN without ACK (a client opening a connection to this
    /// host); 0 when none was seen.
    pub syn_ns: u64,
    /// Inbound TCP only: the time from the latest SYN to the first packet of the flow with ACK
    /// set and SYN and RST clear (the client's ACK of the host's SYN-ACK), as both cross the
    /// hook; 0 when not measured. docs/flows.md says what it holds.
    pub handshake_ns: u64,
    /// TCP flags seen, one byte per flag bit (bit `i` of the TCP flags byte sets byte `7 - i`
    /// to 1, the order one multiplication spreads them in): idempotent byte stores need no
    /// atomics and lose no flag when CPUs race. Read with [`FlowRecord::tcp_flags`].
    pub tcp_flag_seen: [u8; 8],
    /// Label id of the rule the flow's first packet matched; 0 when it matched none.
    pub label: u32,
    pub padding: u32,
}

impl FlowKey {
    #[must_use]
    pub fn src_addr(&self) -> core::net::IpAddr {
        self.addr(&self.src)
    }

    #[must_use]
    pub fn dst_addr(&self) -> core::net::IpAddr {
        self.addr(&self.dst)
    }

    fn addr(&self, words: &[u32; 4]) -> core::net::IpAddr {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        if self.ip_version == 4 {
            core::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            core::net::IpAddr::from(bytes)
        }
    }
}

impl FlowRecord {
    /// A record of `packets` packets and `bytes` IP octets between the two times, with these
    /// TCP flags seen and this label, and no handshake: as the probe leaves one, for the code
    /// that makes records outside it (tests, benchmarks).
    #[must_use]
    pub const fn of_packets(
        packets: u64,
        bytes: u64,
        first_seen_ns: u64,
        last_seen_ns: u64,
        tcp_flags: u8,
        label: u32,
    ) -> Self {
        Self {
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            syn_ns: 0,
            handshake_ns: 0,
            tcp_flag_seen: spread_tcp_flags(tcp_flags).to_le_bytes(),
            label,
            padding: 0,
        }
    }

    /// The OR of the TCP flags of every packet of the flow.
    #[must_use]
    pub const fn tcp_flags(&self) -> u8 {
        let mut flags = 0;
        let mut i = 0;
        while i < 8 {
            if self.tcp_flag_seen[7 - i] != 0 {
                flags |= 1 << i;
            }
            i += 1;
        }
        flags
    }
}

/// `flags` spread over the bytes of a little-endian `u64` as [`FlowRecord::tcp_flag_seen`]
/// holds them (BPF and its hosts are little-endian here): byte `7 - i` is 1 when bit `i` is
/// set.
#[must_use]
#[inline]
pub const fn spread_tcp_flags(flags: u8) -> u64 {
    // The product is the sum of `flags << 9k` for k in 0..8: copies that do not overlap (no
    // carries), copy k holding bit 7 - k at the top of byte k; shifting by 7 and masking keeps
    // exactly those bits, at the bottom of each byte.
    ((flags as u64).wrapping_mul(0x8040_2010_0804_0201) >> 7) & 0x0101_0101_0101_0101
}

user_pod!(FlowKey, FlowRecord);

const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<FlowRecord>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_addresses_read_back_as_the_packet_carried_them() {
        let words = |bytes: [u8; 16]| {
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([
                    bytes[i * 4],
                    bytes[i * 4 + 1],
                    bytes[i * 4 + 2],
                    bytes[i * 4 + 3],
                ]);
            }
            w
        };
        let v6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let key = FlowKey {
            src: words([192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            dst: words(v6),
            ip_version: 4,
            ..FlowKey::default()
        };
        assert_eq!(key.src_addr(), core::net::IpAddr::from([192, 0, 2, 1]));
        let key = FlowKey {
            ip_version: 6,
            ..key
        };
        assert_eq!(key.dst_addr(), core::net::IpAddr::from(v6));
    }

    #[test]
    fn spread_puts_each_flag_in_its_byte() {
        for flags in 0..=u8::MAX {
            let lanes = spread_tcp_flags(flags).to_le_bytes();
            let record = FlowRecord {
                tcp_flag_seen: lanes,
                ..FlowRecord::default()
            };
            assert_eq!(record.tcp_flags(), flags, "{flags:#04x}: {lanes:?}");
            assert!(lanes.iter().all(|&b| b <= 1));
        }
    }
}
