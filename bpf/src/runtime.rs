//! What every BPF object of this crate needs besides its programs, defined once: a panic handler
//! (`no_std` requires one; the verifier would refuse a program that could reach it, since it
//! loops) and the license the kernel checks before it lets a program call GPL-only helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
