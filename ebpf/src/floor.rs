//! The benchmark's floor: empty programs on the file sensor's hooks (its tracepoints, and the
//! fexit on `security_file_open`), the cost of merely enabling them. A separate object that the
//! agent never embeds; `cargo xtask bench` loads it through the `credwatch-bench-floor` test helper.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";

#[tracepoint]
pub fn floor_sys_exit_openat(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_sys_exit_openat2(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_sys_exit_open(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_sys_exit_open_by_handle_at(_ctx: TracePointContext) -> u32 {
    0
}

#[fexit(function = "security_file_open")]
pub fn floor_security_file_open(_ctx: FExitContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
