//! Baseline for the benchmark: the plain way to label packets, one LPM-trie lookup of the
//! destination address (IPv4 or IPv6 trie) and a per-CPU counter per label.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use xdt_common::labels::{LabelStats, MAX_LABELS};

#[map]
static BENCH_LPM_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 20, 1); // BPF_F_NO_PREALLOC
#[map]
static BENCH_LPM_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1 << 20, 1);
#[map]
static BENCH_LPM_STATS: PerCpuArray<LabelStats> = PerCpuArray::with_max_entries(MAX_LABELS, 0);

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    if ctx.data() + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *const T)
}

#[xdp]
pub fn bench_lpm(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(ethertype) = ptr_at::<[u8; 2]>(&ctx, 12) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked the bytes are inside the packet.
    let label = match u16::from_be_bytes(unsafe { *ethertype }) {
        0x0800 => match ptr_at::<[u8; 4]>(&ctx, 14 + 16) {
            // SAFETY: as above.
            Some(dst) => BENCH_LPM_V4.get(Key::new(32, unsafe { *dst })).copied(),
            None => None,
        },
        0x86dd => match ptr_at::<[u8; 16]>(&ctx, 14 + 24) {
            // SAFETY: as above.
            Some(dst) => BENCH_LPM_V6.get(Key::new(128, unsafe { *dst })).copied(),
            None => None,
        },
        _ => None,
    };
    if let Some(label) = label
        && let Some(stats) = BENCH_LPM_STATS.get_ptr_mut(label)
    {
        // SAFETY: per-CPU value, touched only by this CPU while the program runs.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += len;
    }
    xdp_action::XDP_PASS
}
