//! What the unit tests build agents' messages from: a `Hello` and a sampled event whose label
//! needs escaping in every export.

use xdt_wire::{Event, Hello};

pub(crate) fn hello(agent_id: &str, instance: u64) -> Hello {
    Hello {
        agent_id: agent_id.into(),
        hostname: format!("{agent_id}.example"),
        interface: "eth0".into(),
        probe_version: "0.1.0".into(),
        instance,
        token: "t".into(),
    }
}

pub(crate) fn event(ts: u64, payload_len: u16) -> Event {
    Event {
        timestamp_unix_ns: ts,
        label: "web \"q\"\n<b>".into(),
        rule: 1,
        action: "sample".into(),
        rx_queue: 2,
        protocol: 6,
        src: "192.0.2.1".parse().expect("ip"),
        dst: "2001:db8::1".parse().expect("ip"),
        src_port: 40000,
        dst_port: 80,
        ip_len: 60 + payload_len,
        payload_len,
        tcp_flags: 0x18,
        inspection: None,
    }
}
