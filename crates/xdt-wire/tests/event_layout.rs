//! An event's packet headers are one nested struct (`Headers`) since they became the one
//! definition the datapath, the wire and the agent share; before, they were eight fields of
//! `Event` itself. postcard is positional and writes a nested struct as its fields, so the bytes
//! on the wire must not have changed: an agent and a central of either layout understand each
//! other, and central's journal replays batches written before. Checked three ways: against the
//! bytes the flat layout gave (recorded before the change), against a copy of the flat layout
//! encoded now, and by decoding those bytes into the new layout.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use xdt_wire::{Event, Headers, HttpRequest, Inspection};

/// `Event` as it was, its headers' fields in its own body.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FlatEvent {
    timestamp_unix_ns: u64,
    label: String,
    rule: u32,
    action: String,
    rx_queue: u32,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    ip_len: u16,
    payload_len: u16,
    tcp_flags: u8,
    inspection: Option<Box<Inspection>>,
}

/// The bytes of [`sampled`] and [`steered`] in the flat layout, recorded before the change.
const SAMPLED: &str = "959a97ece39fe7cb1703776562070673616d706c65030600c00002010120010db8000000\
                       000000000000000001c0b802bb03dc0ba80b1800";
const STEERED: &str = "959a97ece39fe7cb170377656207057374656572030600c00002010120010db800000000\
                       0000000000000001c0b802bb03dc0ba80b1801ea0ba0b701010103474554012f01016100";

fn sampled() -> Event {
    Event {
        timestamp_unix_ns: 1_700_000_000_123_456_789,
        label: "web".into(),
        rule: 7,
        action: "sample".into(),
        rx_queue: 3,
        headers: Headers {
            protocol: 6,
            src: IpAddr::from([192, 0, 2, 1]),
            dst: "2001:db8::1".parse().expect("ip"),
            src_port: 40000,
            dst_port: 443,
            ip_len: 1500,
            payload_len: 1448,
            tcp_flags: 0x18,
        },
        inspection: None,
    }
}

fn steered() -> Event {
    Event {
        action: "steer".into(),
        inspection: Some(Box::new(Inspection {
            frame_len: 1514,
            agent_latency_ns: 23_456,
            reinjected: true,
            http: Some(HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                host: Some("a".into()),
            }),
            dns: None,
        })),
        ..sampled()
    }
}

fn flat(e: &Event) -> FlatEvent {
    let h = e.headers;
    FlatEvent {
        timestamp_unix_ns: e.timestamp_unix_ns,
        label: e.label.clone(),
        rule: e.rule,
        action: e.action.clone(),
        rx_queue: e.rx_queue,
        protocol: h.protocol,
        src: h.src,
        dst: h.dst,
        src_port: h.src_port,
        dst_port: h.dst_port,
        ip_len: h.ip_len,
        payload_len: h.payload_len,
        tcp_flags: h.tcp_flags,
        inspection: e.inspection.clone(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[test]
fn nested_headers_encode_as_the_flat_fields_did() {
    for (event, golden) in [(sampled(), SAMPLED), (steered(), STEERED)] {
        let nested = postcard::to_stdvec(&event).expect("encode");
        assert_eq!(hex(&nested), golden, "{event:?}");
        let old = postcard::to_stdvec(&flat(&event)).expect("encode");
        assert_eq!(nested, old, "the flat layout encoded now");
        let decoded: Event = postcard::from_bytes(&old).expect("decode the flat bytes");
        assert_eq!(decoded, event);
        let back: FlatEvent = postcard::from_bytes(&nested).expect("decode as flat");
        assert_eq!(back, flat(&event));
    }
}
