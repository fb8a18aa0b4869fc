//! Frames from a client to a node in one test's own subnet, and what a flow collector keys each
//! one by: the flow tests of `xdt flows` and of the agent's IPFIX export build and check their
//! traffic with these.

use std::net::IpAddr;

use serde_json::Value;
use xdt_testkit::frames::{ETH_P_IP, ETH_P_IPV6, TCP, UDP, ethernet, ipv4, ipv6, v6};

/// A test's own subnet, 10.`v4`.0.0/24 and fd00:`v6`::/64, so that tests in parallel
/// namespaces never share an address: the client is host 1, the node host 2.
#[derive(Clone, Copy, Debug)]
pub struct Subnet {
    pub v4: u8,
    pub v6: u16,
}

impl Subnet {
    pub const fn client4(self) -> [u8; 4] {
        [10, self.v4, 0, 1]
    }
    pub const fn node4(self) -> [u8; 4] {
        [10, self.v4, 0, 2]
    }
    pub const fn client6(self) -> [u8; 16] {
        v6([0xfd00, self.v6, 0, 0, 0, 0, 0, 1])
    }
    pub const fn node6(self) -> [u8; 16] {
        v6([0xfd00, self.v6, 0, 0, 0, 0, 0, 2])
    }

    /// The IPv4 frame of `l4` from the client to the node.
    pub fn v4(self, protocol: u8, l4: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IP, &ipv4(self.client4(), self.node4(), protocol, l4))
    }

    /// The IPv6 frame of `l4` from the client to the node.
    pub fn v6(self, protocol: u8, l4: &[u8]) -> Vec<u8> {
        ethernet(
            ETH_P_IPV6,
            &ipv6(self.client6(), self.node6(), protocol, l4),
        )
    }
}

/// A flow's key as `xdt flows --json`, softflowd and nfdump name it: ICMP and ICMPv6 have
/// `type << 8 | code` in the destination port, as NetFlow exporters key them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub protocol: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl Key {
    /// The key of a flow in JSON, as `xdt flows --json` and central's `/metrics.json` write it.
    pub fn of_json(flow: &Value) -> Self {
        let ip = |name: &str| flow[name].as_str().expect("address").parse().expect("ip");
        let num = |name: &str| u16::try_from(flow[name].as_u64().expect("number")).expect("u16");
        Self {
            protocol: u8::try_from(num("protocol")).expect("u8"),
            src: ip("src"),
            src_port: num("src_port"),
            dst: ip("dst"),
            dst_port: num("dst_port"),
        }
    }
}

/// What one frame built by [`Subnet`] counts for in its flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub key: Key,
    /// Its IP length, header included: what a flow's bytes add up.
    pub ip_len: u64,
    /// Its TCP flags (0 for other protocols).
    pub tcp_flags: u8,
}

/// Reads an Ethernet frame without VLAN tags or IPv6 extension headers back into its flow.
pub fn describe(frame: &[u8]) -> Described {
    let ip = &frame[14..];
    let (protocol, src, dst, ip_len, l4): (u8, IpAddr, IpAddr, u64, &[u8]) = if ip[0] >> 4 == 4 {
        let src: [u8; 4] = ip[12..16].try_into().expect("4");
        let dst: [u8; 4] = ip[16..20].try_into().expect("4");
        let len = u64::from(u16::from_be_bytes([ip[2], ip[3]]));
        (ip[9], src.into(), dst.into(), len, &ip[20..])
    } else {
        let src: [u8; 16] = ip[8..24].try_into().expect("16");
        let dst: [u8; 16] = ip[24..40].try_into().expect("16");
        let len = u64::from(u16::from_be_bytes([ip[4], ip[5]])) + 40;
        (ip[6], src.into(), dst.into(), len, &ip[40..])
    };
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let (src_port, dst_port, tcp_flags) = match protocol {
        TCP => (port(0), port(2), l4[13]),
        UDP => (port(0), port(2), 0),
        _ => (0, port(0), 0),
    };
    Described {
        key: Key {
            protocol,
            src,
            src_port,
            dst,
            dst_port,
        },
        ip_len,
        tcp_flags,
    }
}
