//! Completing the L4 checksums of frames that a local sender left to offload.
//!
//! A frame from a veth peer with TX checksum offload (any container's eth0, by default) crosses
//! the veth as CHECKSUM_PARTIAL: its TCP/UDP checksum field holds only the folded pseudo-header
//! sum, and the receiving stack never checks it. XDP sees those bytes as they are; once the
//! agent transmits them again through AF_XDP the metadata is gone, and the stack drops them as
//! corrupt (TcpInCsumErrors). Before re-injecting, the agent therefore completes exactly those
//! checksums: a field that is neither correct nor the pseudo-header sum is left alone, so truly
//! corrupt packets stay corrupt. Frames from a physical wire always carry full checksums.

const ETH_HLEN: usize = 14;

/// RFC 1071 sum of `bytes` (big-endian 16-bit words, odd byte padded) added to `sum`. Taken
/// four bytes at a time: a 32-bit word is two 16-bit ones, and 65536 is 1 modulo 0xffff, so
/// [`fold`] gives the same sum in half the additions (a third of the time for a 1400-byte
/// payload, which the agent sums for each re-injected frame a local sender left partial).
fn add(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut chunks = words.remainder().chunks_exact(2);
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes the TCP or UDP checksum of `frame` if it holds only the pseudo-header sum.
/// Returns whether it changed the frame.
pub fn complete_partial(frame: &mut [u8]) -> bool {
    let Some((l3, ethertype)) = network_offset(frame) else {
        return false;
    };
    let (pseudo, protocol, l4, l4_len) = match ethertype {
        0x0800 => {
            let Some(ip) = frame.get(l3..l3 + 20) else {
                return false;
            };
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || fragmented {
                return false;
            }
            let protocol = ip[9];
            let l4_len = total - ihl;
            let pseudo = add(add(0, &ip[12..20]), &[0, protocol]) + l4_len as u64;
            (pseudo, protocol, l3 + ihl, l4_len)
        }
        0x86dd => {
            let Some(ip) = frame.get(l3..l3 + 40) else {
                return false;
            };
            let l4_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let protocol = ip[6];
            let pseudo = add(add(0, &ip[8..40]), &[0, protocol]) + l4_len as u64;
            (pseudo, protocol, l3 + 40, l4_len)
        }
        _ => return false,
    };
    let field = match protocol {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    let Some(segment) = frame.get_mut(l4..l4 + l4_len) else {
        return false;
    };
    if segment.len() < field + 2 {
        return false;
    }
    let stored = u16::from_be_bytes([segment[field], segment[field + 1]]);
    if protocol == 17 && stored == 0 && ethertype == 0x0800 {
        // IPv4 UDP without a checksum.
        return false;
    }
    if fold(add(pseudo, segment)) == 0xffff || stored != fold(pseudo) {
        // Correct, or corrupt in a way offload does not explain.
        return false;
    }
    segment[field..field + 2].fill(0);
    let mut check = !fold(add(pseudo, segment));
    if protocol == 17 && check == 0 {
        check = 0xffff;
    }
    segment[field..field + 2].copy_from_slice(&check.to_be_bytes());
    true
}

/// Where the IP header starts (after up to two VLAN tags) and its ethertype.
fn network_offset(frame: &[u8]) -> Option<(usize, u16)> {
    let mut offset = 12;
    for _ in 0..3 {
        let ethertype = u16::from_be_bytes([*frame.get(offset)?, *frame.get(offset + 1)?]);
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            return Some((offset + 2, ethertype));
        }
        offset += 4;
    }
    let _ = ETH_HLEN;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frames() -> Vec<(Vec<u8>, usize)> {
        let eth = || PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        let payload: Vec<u8> = (0..=200u8).collect();
        let mut f = Vec::new();
        eth()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 80, 5, 9)
            .write(&mut f, &payload)
            .expect("tcp4");
        out.push((f, 14 + 20 + 16));
        let mut f = Vec::new();
        eth()
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1, 53)
            .write(&mut f, &payload[..33])
            .expect("udp6");
        out.push((f, 14 + 40 + 6));
        let mut f = Vec::new();
        eth()
            .single_vlan(7.try_into().expect("vlan"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 53)
            .write(&mut f, &payload[..7])
            .expect("udp4");
        out.push((f, 18 + 20 + 6));
        out
    }

    #[test]
    fn four_bytes_at_a_time_sum_as_two_at_a_time() {
        let bytes: Vec<u8> = (0..1500u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..70).chain([1399, 1400, 1401, 1402, 1403, 1500]) {
            for start in 0..4 {
                let b = &bytes[start..(start + len).min(bytes.len())];
                let pairs: u64 = b
                    .chunks(2)
                    .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
                    .sum();
                assert_eq!(fold(add(0, b)), fold(pairs), "{len} bytes from {start}");
            }
        }
    }

    #[test]
    fn completes_only_partial_checksums() {
        for (good, at) in frames() {
            // A correct frame stays as it is.
            let mut frame = good.clone();
            assert!(!complete_partial(&mut frame));
            assert_eq!(frame, good);
            // The pseudo-header sum (what CHECKSUM_PARTIAL leaves) is completed to the real one.
            let l3 = if good[12] == 0x81 { 18 } else { 14 };
            let v6 = good[l3] >> 4 == 6;
            let (addrs, len_at, proto_at) = if v6 {
                (l3 + 8..l3 + 40, l3 + 4, l3 + 6)
            } else {
                (l3 + 12..l3 + 20, 0, l3 + 9)
            };
            let l4_len = if v6 {
                usize::from(u16::from_be_bytes([good[len_at], good[len_at + 1]]))
            } else {
                good.len() - l3 - 20
            };
            let pseudo = fold(add(add(0, &good[addrs]), &[0, good[proto_at]]) + l4_len as u64);
            frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
            assert!(complete_partial(&mut frame));
            assert_eq!(frame, good);
            // Anything else is corruption and is left for the stack to drop.
            frame[at..at + 2].copy_from_slice(&pseudo.wrapping_add(1).to_be_bytes());
            let corrupt = frame.clone();
            assert!(!complete_partial(&mut frame));
            assert_eq!(frame, corrupt);
        }
    }

    #[test]
    fn short_and_odd_frames_are_left_alone() {
        for len in 0..60 {
            let (good, _) = frames().remove(0);
            let mut frame = good[..len.min(good.len())].to_vec();
            let before = frame.clone();
            complete_partial(&mut frame);
            assert_eq!(frame, before);
        }
    }
}
