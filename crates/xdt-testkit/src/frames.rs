//! Hand-built Ethernet frames, well-formed or deliberately broken, for exact counter tests.
//! Checksums are left zero: the probe never checks them.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The addresses of frames that only BPF_PROG_TEST_RUN sees: a source (A) and a destination (B)
/// of each family.
pub const A4: [u8; 4] = [10, 1, 2, 3];
pub const B4: [u8; 4] = [192, 0, 2, 10];
pub const A6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
pub const B6: [u8; 16] = v6([0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 2]);

/// Ethernet header (to `dst_mac`) followed by `payload`.
#[must_use]
pub fn ethernet_to(dst_mac: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[must_use]
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    ethernet_to(DST_MAC, ethertype, payload)
}

/// Ethernet with VLAN tags: `tags` are (TPID, VLAN id) from the outside in.
#[must_use]
pub fn ethernet_vlan(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (i, (_, vid)) in tags.iter().enumerate() {
        inner.extend_from_slice(&vid.to_be_bytes());
        let next = tags.get(i + 1).map_or(ethertype, |(tpid, _)| *tpid);
        inner.extend_from_slice(&next.to_be_bytes());
    }
    inner.extend_from_slice(payload);
    ethernet(tags.first().map_or(ethertype, |(tpid, _)| *tpid), &inner)
}

/// IPv4 header (IHL 5, no options) and payload; `fragment` is the flags+offset field.
#[must_use]
pub fn ipv4_fragment(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&fragment.to_be_bytes());
    p.extend_from_slice(&[64, protocol, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

#[must_use]
pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_fragment(src, dst, protocol, 0, payload)
}

/// IPv6 header and payload (which may start with extension headers).
#[must_use]
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 extension header of 8 bytes (hop-by-hop, routing, destination options).
#[must_use]
pub fn ipv6_ext(next_header: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![next_header, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(rest);
    p
}

/// An IPv6 fragment header; `offset` in 8-byte units.
#[must_use]
pub fn ipv6_fragment(next_header: u8, offset: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut p = vec![next_header, 0];
    p.extend_from_slice(&field.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1]);
    p.extend_from_slice(rest);
    p
}

#[must_use]
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(20 + payload.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

#[must_use]
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// ICMP (or ICMPv6) echo request.
#[must_use]
pub fn icmp_echo(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
    p.extend_from_slice(payload);
    p
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv6 address from its 8 groups.
#[must_use]
pub const fn v6(groups: [u16; 8]) -> [u8; 16] {
    let mut a = [0; 16];
    let mut i = 0;
    while i < 8 {
        let [high, low] = groups[i].to_be_bytes();
        a[i * 2] = high;
        a[i * 2 + 1] = low;
        i += 1;
    }
    a
}
