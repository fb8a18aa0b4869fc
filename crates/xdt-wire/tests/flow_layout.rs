//! A flow record's key is one nested struct (`FlowKey`), the one definition the wire and
//! central's top talkers share; before, its six fields were the record's own. postcard is
//! positional and writes a nested struct as its fields, so the bytes must not have changed:
//! agents and centrals of protocol 3 of either layout understand each other, and central's
//! journal replays flow batches written before. Checked against a copy of the flat layout, both
//! ways.

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

fn flows() -> Vec<(Flow, FlatFlow)> {
    let v6: IpAddr = "2001:db8::7".parse().expect("ip");
    let v4 = IpAddr::from([192, 0, 2, 9]);
    [
        (
            v4,
            v4,
            40000,
            443,
            6,
            [0, 0],
            Some("web"),
            Some(120_000),
            FlowEnd::EndOfFlow,
        ),
        (
            v6,
            v6,
            0,
            0x8000,
            58,
            [100, 200],
            None,
            None,
            FlowEnd::LackOfResources,
        ),
    ]
    .into_iter()
    .map(
        |(src, dst, src_port, dst_port, protocol, vlans, label, handshake_ns, end)| {
            let (packets, bytes, first, last, flags) = (
                12,
                18_000,
                1_700_000_000_000_000_000,
                1_700_000_001_500_000_000,
                0x1b,
            );
            let label = label.map(str::to_owned);
            (
                Flow {
                    key: FlowKey {
                        src,
                        dst,
                        src_port,
                        dst_port,
                        protocol,
                        vlans,
                    },
                    packets,
                    bytes,
                    first_seen_unix_ns: first,
                    last_seen_unix_ns: last,
                    tcp_flags: flags,
                    label: label.clone(),
                    handshake_ns,
                    end,
                },
                FlatFlow {
                    src,
                    dst,
                    src_port,
                    dst_port,
                    protocol,
                    vlans,
                    packets,
                    bytes,
                    first_seen_unix_ns: first,
                    last_seen_unix_ns: last,
                    tcp_flags: flags,
                    label,
                    handshake_ns,
                    end,
                },
            )
        },
    )
    .collect()
}

#[test]
fn a_nested_key_keeps_the_flat_records_bytes() {
    for (flow, flat) in flows() {
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
