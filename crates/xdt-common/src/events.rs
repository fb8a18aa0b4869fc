//! `XDT_EVENTS`: the ring buffer of sampled packet metadata (BPF ring buffer, kernel 5.8+).
//! A full ring loses the event and counts it in `lost_events`.

use crate::user_pod;

pub const MAP: &str = "XDT_EVENTS";
/// Ring size in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 256 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampledEvent {
    /// `bpf_ktime_get_ns()`: monotonic, nanoseconds since boot.
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub label: u32,
    /// The matching rule's id (its number in the rules file).
    pub rule: u32,
    /// Addresses as on the wire; IPv4 uses the first 4 bytes.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order; 0 when the packet has no ports (ICMP, later fragments).
    pub src_port: u16,
    pub dst_port: u16,
    /// IPv4 total length, or IPv6 payload length + 40.
    pub ip_len: u16,
    /// L4 payload length computed from the IP and L4 headers.
    pub payload_len: u16,
    /// 4 or 6.
    pub ip_version: u8,
    pub protocol: u8,
    pub action: u8,
    /// TCP flags byte (FIN 0x01 ... CWR 0x80); 0 for other protocols.
    pub tcp_flags: u8,
    pub padding: [u8; 4],
}

user_pod!(SampledEvent);

const _: () = assert!(core::mem::size_of::<SampledEvent>() == 72);
