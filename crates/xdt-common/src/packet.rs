//! What xdt reports of one packet's headers: protocol, addresses, ports, lengths and TCP flags.
//! Not a map layout: the decoded form that the datapath's sampled events, the wire's events and
//! the agent's inspection of a steered frame all carry, defined once here because none of those
//! crates depends on another. With the `serde` feature it serializes as its fields in this
//! order; postcard (the wire) writes a nested struct as its fields one after the other, so an
//! event holding it encodes exactly as when it held the fields itself.

use core::net::{IpAddr, Ipv4Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Headers {
    /// IP protocol number; for IPv6 the one after the extension headers.
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP and UDP ports; 0 for other protocols.
    pub src_port: u16,
    pub dst_port: u16,
    /// IPv4 total length, or IPv6 payload length + 40; 0 without an IP header.
    pub ip_len: u16,
    /// Bytes after the TCP or UDP header (after the IP header for other protocols).
    pub payload_len: u16,
    /// The TCP flags byte (FIN 0x01 ... CWR 0x80); 0 for other protocols.
    pub tcp_flags: u8,
}

/// Nothing read: unspecified IPv4 addresses, every number 0.
impl Default for Headers {
    fn default() -> Self {
        Self {
            protocol: 0,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
            ip_len: 0,
            payload_len: 0,
            tcp_flags: 0,
        }
    }
}
