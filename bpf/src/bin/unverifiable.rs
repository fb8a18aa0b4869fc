//! For tests of how a load the verifier refuses is reported: an XDP program named like the probe
//! that reads the packet without checking its length, which every verifier rejects (EACCES,
//! "invalid access to packet").
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdt(ctx: XdpContext) -> u32 {
    // SAFETY: none; the verifier refuses this read, which is what the program is for.
    u32::from(unsafe { core::ptr::read_volatile(ctx.data() as *const u8) })
}
