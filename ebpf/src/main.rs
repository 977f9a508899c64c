//! credwatch's kernel programs, one module per sensor (`file`, `auth`), and what they share: the
//! event ring, the drop counters, the control word (the agent's tgid, which file programs count).
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
    maps::{Array, PerCpuArray, RingBuf},
};
use credwatch_common::{Control, LostStage, EVENTS_BYTE_SIZE, LOST_STAGES};

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";

/// This object's token (`credwatch_common::globals::LINKS_TOKEN`), filled in by the loader.
#[unsafe(no_mangle)]
static LINKS_TOKEN: u64 = 0;

/// `credwatch_common::maps::CONTROL`: one `Control`, written by the agent.
#[map]
static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// Every sensor's events (`credwatch_common::maps::EVENTS`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTE_SIZE, 0);

/// Drop counters by `LostStage` (`credwatch_common::maps::LOST`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_STAGES, 0);

/// Whether `tgid` is the agent's (which opens credential files to parse them: not reads).
#[inline(always)]
fn is_agent(tgid: u32) -> bool {
    CONTROL.get(0).is_some_and(|c| c.agent_tgid == tgid)
}

/// Whether this object's file programs are the attached set that counts: after a restart the
/// pinned set of the agent before and this agent's own may both be attached for a moment (an
/// upgrade replaces them), and the agent switches from one to the other with one map write.
#[inline(always)]
fn links_active() -> bool {
    // A volatile load: the compiler must not fold the zero placeholder.
    let token = unsafe { core::ptr::read_volatile(&LINKS_TOKEN) };
    CONTROL.get(0).is_some_and(|c| c.active_links == token)
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
