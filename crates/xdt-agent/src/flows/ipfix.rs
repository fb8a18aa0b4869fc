//! IPFIX (RFC 7011) encoding of flow deltas: one template for IPv4 and one for IPv6 flows, data
//! sets of fixed-layout records (only the label is of variable length), messages cut to a
//! maximum size. No I/O: [`super::export`] sends what this writes.
//!
//! Written here rather than with a crate: the maintained Rust IPFIX crates are parsers
//! (ipfix, ipfix-parser, netflow_parser); ipfixrw writes, but builds every record as a hash map
//! of named fields, which costs more than the whole of the agent's export budget at 100k
//! flows per second. docs/flows.md has the list.

use super::state::FlowDelta;

/// The private enterprise number of xdt's own elements: 32473, the one RFC 5612 reserves for
/// documentation and examples. xdt has none registered; an operator whose collector needs a
/// real one decodes these two elements by this number.
pub const PEN: u32 = 32473;
/// Enterprise element 1: the rule label of the flow's first packet (string; empty: none).
pub const ELEMENT_LABEL: u16 = 1;
/// Enterprise element 2: the inbound TCP handshake in microseconds (unsigned32; 0: not
/// measured).
pub const ELEMENT_HANDSHAKE_US: u16 = 2;
pub const TEMPLATE_IPV4: u16 = 256;
pub const TEMPLATE_IPV6: u16 = 257;
/// The message header (RFC 7011 section 3.1).
pub const HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;
const VERSION: u16 = 10;
const TEMPLATE_SET_ID: u16 = 2;
const VARIABLE: u16 = 65535;

/// A field of a template: IANA element id, length, and whether it is one of xdt's own.
#[derive(Clone, Copy, Debug)]
struct Field {
    id: u16,
    len: u16,
    enterprise: bool,
}

const fn iana(id: u16, len: u16) -> Field {
    Field {
        id,
        len,
        enterprise: false,
    }
}

const fn own(id: u16, len: u16) -> Field {
    Field {
        id,
        len,
        enterprise: true,
    }
}

/// The fields after the addresses, the same in both templates but for the ICMP type-code
/// element (set in [`template_fields`]).
const fn template_fields(v6: bool) -> [Field; 17] {
    let (src, dst, addr_len, icmp) = if v6 {
        (27, 28, 16, 139)
    } else {
        (8, 12, 4, 32)
    };
    [
        iana(src, addr_len), // sourceIPv4Address / sourceIPv6Address
        iana(dst, addr_len), // destinationIPv4Address / destinationIPv6Address
        iana(7, 2),          // sourceTransportPort
        iana(11, 2),         // destinationTransportPort
        iana(icmp, 2),       // icmpTypeCodeIPv4 / icmpTypeCodeIPv6
        iana(4, 1),          // protocolIdentifier
        iana(6, 2),          // tcpControlBits
        iana(58, 2),         // vlanId: the outer tag
        iana(245, 2),        // dot1qCustomerVlanId: the inner tag
        iana(10, 4),         // ingressInterface
        iana(2, 8),          // packetDeltaCount
        iana(1, 8),          // octetDeltaCount
        iana(152, 8),        // flowStartMilliseconds
        iana(153, 8),        // flowEndMilliseconds
        iana(136, 1),        // flowEndReason
        own(ELEMENT_HANDSHAKE_US, 4),
        own(ELEMENT_LABEL, VARIABLE),
    ]
}

/// What every record of one exporter carries besides the delta.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// Added to the probe's CLOCK_MONOTONIC ns to make Unix ns.
    pub unix_offset_ns: u64,
    pub ingress_interface: u32,
}

/// The template set announcing both templates.
#[must_use]
pub fn template_set() -> Vec<u8> {
    let mut set = Vec::with_capacity(160);
    put16(&mut set, TEMPLATE_SET_ID);
    put16(&mut set, 0);
    for (id, v6) in [(TEMPLATE_IPV4, false), (TEMPLATE_IPV6, true)] {
        let fields = template_fields(v6);
        put16(&mut set, id);
        put16(&mut set, fields.len() as u16);
        for field in fields {
            if field.enterprise {
                put16(&mut set, field.id | 0x8000);
                put16(&mut set, field.len);
                set.extend_from_slice(&PEN.to_be_bytes());
            } else {
                put16(&mut set, field.id);
                put16(&mut set, field.len);
            }
        }
    }
    let len = set.len() as u16;
    set[2..4].copy_from_slice(&len.to_be_bytes());
    set
}

/// Builds messages of at most `max_len` bytes: the header, optionally the template set, then
/// data sets. Reuses one buffer; [`MessageWriter::finish`] hands out each message.
#[derive(Debug)]
pub struct MessageWriter {
    buf: Vec<u8>,
    max_len: usize,
    domain: u32,
    /// Start of the open data set and its template, if one is open.
    set: Option<(usize, u16)>,
    records: u32,
}

impl MessageWriter {
    /// `max_len` must leave room for a header, a set header and the largest record.
    #[must_use]
    pub fn new(max_len: usize, domain: u32) -> Self {
        Self {
            buf: Vec::with_capacity(max_len),
            max_len: max_len.clamp(HEADER_LEN + 512, usize::from(u16::MAX)),
            domain,
            set: None,
            records: 0,
        }
    }

    /// Starts a message: `sequence` is the number of data records sent before it in this
    /// transport session, `export_time` Unix seconds. With `templates` it begins with the
    /// template set.
    pub fn start(&mut self, export_time: u32, sequence: u32, templates: Option<&[u8]>) {
        self.buf.clear();
        put16(&mut self.buf, VERSION);
        put16(&mut self.buf, 0);
        self.buf.extend_from_slice(&export_time.to_be_bytes());
        self.buf.extend_from_slice(&sequence.to_be_bytes());
        self.buf.extend_from_slice(&self.domain.to_be_bytes());
        if let Some(set) = templates {
            self.buf.extend_from_slice(set);
        }
        self.set = None;
        self.records = 0;
    }

    /// Data records in the message so far.
    #[must_use]
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Appends one record; `false` (and nothing written) when it would make the message
    /// longer than the maximum: finish it and start another.
    pub fn push(&mut self, delta: &FlowDelta, label: &str, context: &Context) -> bool {
        let v6 = delta.key.ip_version == 6;
        let template = if v6 { TEMPLATE_IPV6 } else { TEMPLATE_IPV4 };
        let label = &label.as_bytes()[..label.len().min(usize::from(u16::MAX) - 3)];
        let label_len = if label.len() < 255 { 1 } else { 3 } + label.len();
        let fixed = if v6 { 32 } else { 8 } + 2 + 2 + 2 + 1 + 2 + 2 + 2 + 4 + 8 * 4 + 1 + 4;
        let new_set = self.set.is_none_or(|(_, t)| t != template);
        let needed = fixed + label_len + if new_set { SET_HEADER_LEN } else { 0 };
        if self.buf.len() + needed > self.max_len {
            return false;
        }
        if new_set {
            self.close_set();
            self.set = Some((self.buf.len(), template));
            put16(&mut self.buf, template);
            put16(&mut self.buf, 0);
        }
        let key = &delta.key;
        let words = |w: &[u32; 4], out: &mut Vec<u8>| {
            let n = if v6 { 4 } else { 1 };
            // The probe's words hold the address bytes in network order in memory.
            for word in &w[..n] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
        };
        words(&key.src, &mut self.buf);
        words(&key.dst, &mut self.buf);
        let icmp = matches!(key.protocol, 1 | 58);
        let (sport, dport, type_code) = if icmp {
            (0, 0, key.dst_port)
        } else {
            (key.src_port, key.dst_port, 0)
        };
        put16(&mut self.buf, sport);
        put16(&mut self.buf, dport);
        put16(&mut self.buf, type_code);
        self.buf.push(key.protocol);
        put16(&mut self.buf, u16::from(delta.tcp_flags));
        put16(&mut self.buf, key.vlans[0]);
        put16(&mut self.buf, key.vlans[1]);
        self.buf
            .extend_from_slice(&context.ingress_interface.to_be_bytes());
        self.buf.extend_from_slice(&delta.packets.to_be_bytes());
        self.buf.extend_from_slice(&delta.bytes.to_be_bytes());
        let ms = |ns: u64| ns.saturating_add(context.unix_offset_ns) / 1_000_000;
        self.buf
            .extend_from_slice(&ms(delta.start_ns).to_be_bytes());
        self.buf.extend_from_slice(&ms(delta.end_ns).to_be_bytes());
        self.buf.push(delta.reason.ipfix());
        let handshake_us = u32::try_from(delta.handshake_ns / 1000).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&handshake_us.to_be_bytes());
        if label.len() < 255 {
            self.buf.push(label.len() as u8);
        } else {
            self.buf.push(255);
            put16(&mut self.buf, label.len() as u16);
        }
        self.buf.extend_from_slice(label);
        self.records += 1;
        true
    }

    /// The finished message (header and set lengths filled in).
    pub fn finish(&mut self) -> &[u8] {
        self.close_set();
        let len = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        &self.buf
    }

    fn close_set(&mut self) {
        if let Some((start, _)) = self.set.take() {
            // RFC 7011 section 3.3.1: padding is optional; none is written.
            let len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

fn put16(buf: &mut Vec<u8>, value: u16) {
    buf.extend_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::state::FlowEnd;
    use xdt_common::flows::FlowKey;

    fn delta(v6: bool, label_len: usize) -> (FlowDelta, String) {
        let key = FlowKey {
            src: [u32::from_ne_bytes([192, 0, 2, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([192, 0, 2, 2]), 0, 0, 0],
            src_port: 40000,
            dst_port: 443,
            ip_version: if v6 { 6 } else { 4 },
            protocol: 6,
            vlans: [10, 20],
            ..FlowKey::default()
        };
        (
            FlowDelta {
                key,
                start_ns: 1_000_000,
                end_ns: 5_000_000,
                packets: 7,
                bytes: 700,
                tcp_flags: 0x1b,
                label: 1,
                handshake_ns: 1_500_000,
                reason: FlowEnd::Idle,
            },
            "x".repeat(label_len),
        )
    }

    #[test]
    fn a_record_is_laid_out_as_its_template_says() {
        let context = Context {
            unix_offset_ns: 1_700_000_000_000_000_000,
            ingress_interface: 3,
        };
        let mut writer = MessageWriter::new(1500, 42);
        writer.start(1_700_000_000, 5, None);
        let (d, label) = delta(false, 3);
        assert!(writer.push(&d, &label, &context));
        let msg = writer.finish().to_vec();
        assert_eq!(&msg[0..2], &[0, 10]);
        assert_eq!(usize::from(u16::from_be_bytes([msg[2], msg[3]])), msg.len());
        assert_eq!(&msg[8..12], &5u32.to_be_bytes());
        assert_eq!(&msg[12..16], &42u32.to_be_bytes());
        let set = &msg[16..];
        assert_eq!(u16::from_be_bytes([set[0], set[1]]), TEMPLATE_IPV4);
        assert_eq!(usize::from(u16::from_be_bytes([set[2], set[3]])), set.len());
        let r = &set[4..];
        assert_eq!(&r[0..4], &[192, 0, 2, 1]);
        assert_eq!(&r[4..8], &[192, 0, 2, 2]);
        assert_eq!(&r[8..12], &[0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(r[14], 6);
        assert_eq!(&r[15..17], &[0, 0x1b]);
        assert_eq!(&r[17..21], &[0, 10, 0, 20]);
        assert_eq!(&r[21..25], &3u32.to_be_bytes());
        assert_eq!(&r[25..33], &7u64.to_be_bytes());
        assert_eq!(&r[33..41], &700u64.to_be_bytes());
        assert_eq!(&r[41..49], &1_700_000_000_001u64.to_be_bytes());
        assert_eq!(&r[49..57], &1_700_000_000_005u64.to_be_bytes());
        assert_eq!(r[57], 1);
        assert_eq!(&r[58..62], &1500u32.to_be_bytes());
        assert_eq!(&r[62..], b"\x03xxx");
        // The template's fixed lengths add up to the record's (minus the label).
        let fields = template_fields(false);
        let fixed: usize = fields
            .iter()
            .filter(|f| f.len != VARIABLE)
            .map(|f| usize::from(f.len))
            .sum();
        assert_eq!(fixed, 62);
        let fields = template_fields(true);
        let fixed: usize = fields
            .iter()
            .filter(|f| f.len != VARIABLE)
            .map(|f| usize::from(f.len))
            .sum();
        assert_eq!(fixed, 62 + 24);
    }

    #[test]
    fn messages_stay_under_the_maximum_and_switch_sets_by_family() {
        let context = Context {
            unix_offset_ns: 0,
            ingress_interface: 1,
        };
        let mut writer = MessageWriter::new(600, 1);
        writer.start(0, 0, Some(&template_set()));
        let mut pushed = 0;
        for i in 0..100 {
            let (d, label) = delta(i % 2 == 0, 300);
            if !writer.push(&d, &label, &context) {
                break;
            }
            pushed += 1;
        }
        assert!(pushed >= 1);
        let msg = writer.finish();
        assert!(msg.len() <= 600, "{}", msg.len());
        assert_eq!(writer.records(), pushed);
    }

    #[test]
    fn the_template_set_lists_both_templates() {
        let set = template_set();
        assert_eq!(u16::from_be_bytes([set[0], set[1]]), 2);
        assert_eq!(usize::from(u16::from_be_bytes([set[2], set[3]])), set.len());
        assert_eq!(u16::from_be_bytes([set[4], set[5]]), TEMPLATE_IPV4);
        assert_eq!(u16::from_be_bytes([set[6], set[7]]), 17);
        // 15 IANA fields of 4 bytes, 2 enterprise ones of 8, per template, plus its header.
        assert_eq!(set.len(), 4 + 2 * (4 + 15 * 4 + 2 * 8));
    }
}
