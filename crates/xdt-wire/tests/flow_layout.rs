//! A flow record's key is one nested struct (`FlowKey`), the one definition the wire and
//! central's top talkers share; before, its six fields were the record's own. postcard is
//! positional and writes a nested struct as its fields, so the bytes must not have changed:
//! agents and centrals of protocol 3 of either layout understand each other, and central's
//! journal replays flow batches written before. Checked against a copy of the flat layout (its
//! fields taken by name from the new one), both ways.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use xdt_wire::{Flow, FlowEnd, FlowKey};

/// `Flow` as it was, its key's fields in its own body.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FlatFlow {
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    vlans: [u16; 2],
    packets: u64,
    bytes: u64,
    first_seen_unix_ns: u64,
    last_seen_unix_ns: u64,
    tcp_flags: u8,
    label: Option<String>,
    handshake_ns: Option<u64>,
    end: FlowEnd,
}

impl From<&Flow> for FlatFlow {
    fn from(flow: &Flow) -> Self {
        let FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
            vlans,
        } = flow.key;
        Self {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
            vlans,
            packets: flow.packets,
            bytes: flow.bytes,
            first_seen_unix_ns: flow.first_seen_unix_ns,
            last_seen_unix_ns: flow.last_seen_unix_ns,
            tcp_flags: flow.tcp_flags,
            label: flow.label.clone(),
            handshake_ns: flow.handshake_ns,
            end: flow.end,
        }
    }
}

fn flows() -> Vec<Flow> {
    let v6: IpAddr = "2001:db8::7".parse().expect("ip");
    let v4 = IpAddr::from([192, 0, 2, 9]);
    let web = Flow {
        key: FlowKey {
            src: v4,
            dst: v4,
            src_port: 40000,
            dst_port: 443,
            protocol: 6,
            vlans: [0, 0],
        },
        packets: 12,
        bytes: 18_000,
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_500_000_000,
        tcp_flags: 0x1b,
        label: Some("web".into()),
        handshake_ns: Some(120_000),
        end: FlowEnd::EndOfFlow,
    };
    let ping = Flow {
        key: FlowKey {
            src: v6,
            dst: v6,
            src_port: 0,
            dst_port: 0x8000,
            protocol: 58,
            vlans: [100, 200],
        },
        label: None,
        handshake_ns: None,
        end: FlowEnd::LackOfResources,
        ..web.clone()
    };
    vec![web, ping]
}

#[test]
fn a_nested_key_keeps_the_flat_records_bytes() {
    for flow in flows() {
        let flat = FlatFlow::from(&flow);
        let nested = postcard::to_allocvec(&flow).expect("encode");
        let old = postcard::to_allocvec(&flat).expect("encode");
        assert_eq!(nested, old, "{flow:?}");
        assert_eq!(
            postcard::from_bytes::<Flow>(&old).expect("decode old"),
            flow
        );
        assert_eq!(
            postcard::from_bytes::<FlatFlow>(&nested).expect("decode new"),
            flat
        );
    }
}
