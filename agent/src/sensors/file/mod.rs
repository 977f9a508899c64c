//! The file sensor: which processes read which credential files.
//!
//! ```text
//! inventory passes --watch_sync--> State credentials + WATCHED (kernel)
//! security_file_open returns (FAST_HOOKS) or open syscall exits (HOOKS)
//!                            --> per-CPU READS (kernel) --tally--> export, at scrape time
//!                            --> first reads on EVENTS --first_reads--> State readers
//! reader cgroups gone --reader_gc--> READS entries removed, aggregate counts kept in State
//! ```
pub mod first_reads;
pub mod reader_gc;
pub mod tally;
pub mod watch_sync;

use crate::{
    config::FileHook,
    kernel::{btf::ProbeBtf, compat, pin::Pins, Hook, Result},
};

/// The exits of every syscall that returns a new descriptor for a path (`creat` is left out:
/// it always opens write-only, so it can never be a read), and io_uring's opens as they
/// complete (attached where the kernel has io_uring).
pub const HOOKS: [Hook; 5] = [
    Hook::syscall_exit("sys_exit_openat", "sys_exit_openat"),
    Hook::syscall_exit("sys_exit_openat2", "sys_exit_openat2"),
    Hook::syscall_exit("sys_exit_open", "sys_exit_open"),
    Hook::syscall_exit("sys_exit_open_by_handle_at", "sys_exit_open_by_handle_at"),
    URING_HOOK,
];

/// io_uring's opens on the tracepoint path (the fast hook sees them itself).
pub const URING_HOOK: Hook = Hook::btf_tracepoint("io_uring_complete", "io_uring_complete");

/// The fast hook: the return of `security_file_open`, which every open of a file passes with
/// the `struct file` in hand (io_uring's, compat syscalls' and kernel helpers' too). It needs
/// BPF trampolines (fexit), which many kernels allow and some refuse (lockdown, no
/// FUNCTION_TRACER); fexit rather than BPF LSM because it needs no `lsm=` boot list and sees
/// the verdict of every LSM (only allowed opens count).
pub const FAST_HOOKS: [Hook; 1] = [Hook::fexit("security_file_open_exit", "security_file_open")];

/// The hook every libc opens through on the tracepoint path: without it the sensor is blind.
pub const REQUIRED_HOOK: &str = "tracepoint/syscalls/sys_exit_openat";

/// Loads the object and attaches the file sensor's hooks: the fast hook where the kernel allows
/// it and `choice` asks for it, else the syscall tracepoints with the walk this kernel allows;
/// with `pins`, the maps are the pinned ones and the hooks the pinned set of the agent before
/// when it is this build's (see `kernel::pin`).
pub fn attach(
    btf: &ProbeBtf,
    agent_tgid: u32,
    choice: FileHook,
    pins: Option<&Pins>,
) -> Result<compat::Loaded> {
    let fast = (choice == FileHook::Auto).then_some(&FAST_HOOKS[..]);
    // Without io_uring (or its BTF) the program has nothing to read: not attached at all.
    let hooks: Vec<Hook> = HOOKS
        .into_iter()
        .filter(|h| *h != URING_HOOK || btf.offsets.uring_req_opcode != 0)
        .collect();
    compat::load_and_attach(btf, agent_tgid, fast, &hooks, pins)
}
