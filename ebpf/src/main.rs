//! credwatch's kernel programs, one module per sensor (`file`, `auth`), and what they share: the
//! event ring, the drop counters, the agent's own tgid.
#![no_std]
#![no_main]
// `atomic_xadd`: the one atomic add on a map value shared by every CPU (`file::UNSEEN`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod auth;
mod file;
mod tls;

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use credwatch_common::{LostStage, EVENTS_BYTE_SIZE, LOST_STAGES};

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";

/// The agent's tgid: the agent opens credential files to parse them, which are not reads.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// Every sensor's events (`credwatch_common::maps::EVENTS`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTE_SIZE, 0);

/// Drop counters by `LostStage` (`credwatch_common::maps::LOST`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_STAGES, 0);

/// The agent's tgid, through a volatile load so the compiler cannot fold the zero placeholder.
#[inline(always)]
fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
fn lost(stage: LostStage) {
    if let Some(counter) = LOST.get_ptr_mut(stage as u32) {
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
