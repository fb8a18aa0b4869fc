//! The otel demo's `xdp_packet_counter`, in Rust: one array map `stats_map` holding
//! `struct pkt_stats` (8 x u64). Used to test `xdt-agent --map-name stats_map`, the path for users
//! who keep their own XDP program.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// total_packets, total_bytes, icmp, tcp, udp, other, ipv4, ipv6.
#[map]
static stats_map: Array<[u64; 8]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn byte(ctx: &XdpContext, offset: usize) -> Option<u8> {
    if ctx.data() + offset + 1 > ctx.data_end() {
        return None;
    }
    // SAFETY: the byte lies inside the packet (checked above).
    Some(unsafe { *((ctx.data() + offset) as *const u8) })
}

#[xdp]
pub fn demo_counter(ctx: XdpContext) -> u32 {
    let Some(stats) = stats_map.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the map value; the demo counts with plain adds (the otel demo uses atomics).
    let stats = unsafe { &mut *stats };
    stats[0] += 1;
    stats[1] += (ctx.data_end() - ctx.data()) as u64;
    let ethertype = match (byte(&ctx, 12), byte(&ctx, 13)) {
        (Some(hi), Some(lo)) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    };
    let protocol = match ethertype {
        0x0800 => {
            stats[6] += 1;
            byte(&ctx, 14 + 9)
        }
        0x86dd => {
            stats[7] += 1;
            byte(&ctx, 14 + 6)
        }
        _ => None,
    };
    match protocol {
        Some(1 | 58) => stats[2] += 1,
        Some(6) => stats[3] += 1,
        Some(17) => stats[4] += 1,
        _ => stats[5] += 1,
    }
    xdp_action::XDP_PASS
}
