//! Reads a steered frame: addresses, ports and sizes, and the start of an HTTP/1.x request or a
//! DNS query when the packet carries one. Never fails: what cannot be read is left out.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use xdt_wire::{DnsQuery, Headers, HttpRequest};

/// Longest HTTP path or Host kept (longer ones are cut at a character boundary).
const MAX_TEXT: usize = 512;
/// Headers looked at to find Host in the first segment.
const MAX_HEADERS: usize = 32;
const DNS_PORT: u16 = 53;

/// What one frame shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspected {
    /// Left at their defaults where there is no IP header (or no TCP or UDP one).
    pub headers: Headers,
    pub http: Option<HttpRequest>,
    pub dns: Option<DnsQuery>,
}

/// Inspects an Ethernet frame (VLAN tags allowed).
#[must_use]
pub fn inspect(frame: &[u8]) -> Inspected {
    let mut out = Inspected::default();
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return out;
    };
    let ip_payload = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            let header = ip.header();
            out.headers.src = header.source_addr().into();
            out.headers.dst = header.destination_addr().into();
            out.headers.ip_len = header.total_len();
            ip.payload()
        }
        Some(NetSlice::Ipv6(ip)) => {
            let header = ip.header();
            out.headers.src = header.source_addr().into();
            out.headers.dst = header.destination_addr().into();
            out.headers.ip_len = header.payload_length().saturating_add(40);
            ip.payload()
        }
        _ => return out,
    };
    out.headers.protocol = ip_payload.ip_number.0;
    out.headers.payload_len = clamp_len(ip_payload.payload.len());
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            out.headers.src_port = tcp.source_port();
            out.headers.dst_port = tcp.destination_port();
            // The flags byte: FIN 0x01 ... CWR 0x80, as the probe reports it.
            out.headers.tcp_flags = tcp.slice().get(13).copied().unwrap_or(0);
            let payload = tcp.payload();
            out.headers.payload_len = clamp_len(payload.len());
            if out.headers.dst_port == DNS_PORT {
                // DNS over TCP: a two-byte length, then the message.
                out.dns = payload.get(2..).and_then(dns_query);
            } else {
                out.http = http_request(payload);
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            out.headers.src_port = udp.source_port();
            out.headers.dst_port = udp.destination_port();
            let payload = udp.payload();
            out.headers.payload_len = clamp_len(payload.len());
            if out.headers.dst_port == DNS_PORT {
                out.dns = dns_query(payload);
            }
        }
        _ => {}
    }
    out
}

fn clamp_len(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// The request line (and Host, if in this segment) of an HTTP/1.x request.
fn http_request(payload: &[u8]) -> Option<HttpRequest> {
    if payload.is_empty() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // Partial is normal: a request may span segments; the request line is what matters.
    let parsed = request.parse(payload);
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return None;
    };
    let host = if parsed.is_ok() {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| cut(&String::from_utf8_lossy(h.value)))
    } else {
        None
    };
    Some(HttpRequest {
        method: cut(method),
        path: cut(path),
        host,
    })
}

/// The first question of a DNS query (not a response).
fn dns_query(message: &[u8]) -> Option<DnsQuery> {
    let packet = simple_dns::Packet::parse(message).ok()?;
    if packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return None;
    }
    let question = packet.questions.first()?;
    let name = question.qname.to_string();
    let name = name.trim_end_matches('.');
    Some(DnsQuery {
        name: if name.is_empty() {
            ".".to_owned()
        } else {
            cut(name)
        },
        qtype: question.qtype.into(),
    })
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use etherparse::PacketBuilder;

    fn tcp4(dport: u16, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, dport, 7, 1000)
            .psh()
            .ack(1);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).expect("build");
        frame
    }

    fn udp6(dport: u16, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5353, dport);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).expect("build");
        frame
    }

    fn dns_question(name: &str, qtype: simple_dns::TYPE) -> Vec<u8> {
        let mut packet = simple_dns::Packet::new_query(7);
        packet.questions.push(simple_dns::Question::new(
            simple_dns::Name::new_unchecked(name),
            qtype.into(),
            simple_dns::CLASS::IN.into(),
            false,
        ));
        packet.build_bytes_vec().expect("dns")
    }

    #[test]
    fn http_request_line_and_host() {
        let seen = inspect(&tcp4(
            8081,
            b"GET /steer/42?x=1 HTTP/1.1\r\nHost: node:8081\r\nUser-Agent: t\r\n\r\n",
        ));
        assert_eq!(seen.headers.protocol, 6);
        assert_eq!(seen.headers.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            (seen.headers.src_port, seen.headers.dst_port),
            (40000, 8081)
        );
        assert_eq!(seen.headers.tcp_flags, 0x18);
        assert_eq!(seen.headers.payload_len, 62);
        assert_eq!(seen.headers.ip_len, 20 + 20 + 62);
        let http = seen.http.expect("http");
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("GET", "/steer/42?x=1")
        );
        assert_eq!(http.host.as_deref(), Some("node:8081"));
    }

    #[test]
    fn partial_request_keeps_the_request_line() {
        let seen = inspect(&tcp4(80, b"POST /upload HTTP/1.1\r\nContent-Le"));
        let http = seen.http.expect("http");
        assert_eq!(
            (http.method.as_str(), http.path.as_str(), http.host),
            ("POST", "/upload", None)
        );
    }

    #[test]
    fn not_http() {
        assert_eq!(inspect(&tcp4(80, b"\x16\x03\x01\x02\x00")).http, None);
        assert_eq!(inspect(&tcp4(80, b"")).http, None);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(4000));
        assert_eq!(
            inspect(&tcp4(80, long.as_bytes()))
                .http
                .expect("http")
                .path
                .len(),
            MAX_TEXT
        );
    }

    #[test]
    fn dns_over_udp_and_tcp() {
        let query = dns_question("www.example.com", simple_dns::TYPE::AAAA);
        let seen = inspect(&udp6(53, &query));
        assert_eq!(seen.headers.src, IpAddr::from([0xfd; 16]));
        assert_eq!(
            seen.dns,
            Some(DnsQuery {
                name: "www.example.com".into(),
                qtype: 28
            })
        );
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        assert_eq!(
            inspect(&tcp4(53, &framed)).dns.expect("dns").name,
            "www.example.com"
        );
        // Not a query port, or garbage: nothing.
        assert_eq!(inspect(&udp6(5300, &query)).dns, None);
        assert_eq!(inspect(&udp6(53, b"\x00\x01garbage")).dns, None);
    }

    #[test]
    fn garbage_frames_are_empty() {
        assert_eq!(inspect(&[]), Inspected::default());
        assert_eq!(inspect(&[0xff; 13]), Inspected::default());
        let mut frame = tcp4(80, b"GET / HTTP/1.1\r\n\r\n");
        frame.truncate(30);
        assert_eq!(inspect(&frame).http, None);
    }
}
