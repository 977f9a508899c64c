//! The benchmark's floor, run by `cargo xtask bench`: attaches empty programs to the file sensor's
//! hooks (the cost of merely enabling them) and holds them until killed. Test support: the
//! object (`ebpf/src/floor.rs`) is not part of the agent.
//!
//!   credwatch-bench-floor [tracepoints|fexit]   the open syscalls' exits (default), or the return
//!                                               of security_file_open (the fast hook's)
use std::process::ExitCode;

use credwatch::{
    kernel::{self, object, Hook},
    sys,
};

const FLOOR_HOOKS: [Hook; 4] = [
    Hook::syscall_exit("floor_sys_exit_openat", "sys_exit_openat"),
    Hook::syscall_exit("floor_sys_exit_openat2", "sys_exit_openat2"),
    Hook::syscall_exit("floor_sys_exit_open", "sys_exit_open"),
    Hook::syscall_exit(
        "floor_sys_exit_open_by_handle_at",
        "sys_exit_open_by_handle_at",
    ),
];

const FLOOR_FAST_HOOKS: [Hook; 1] = [Hook::fexit(
    "floor_security_file_open",
    "security_file_open",
)];

fn main() -> ExitCode {
    let hooks: &[Hook] = match std::env::args().nth(1).as_deref() {
        None | Some("tracepoints") => &FLOOR_HOOKS,
        Some("fexit") => &FLOOR_FAST_HOOKS,
        Some(other) => {
            eprintln!("credwatch-bench-floor: unknown hook kind {other:?} (tracepoints or fexit)");
            return ExitCode::FAILURE;
        }
    };
    match attach(hooks) {
        Ok(_ebpf) => {
            println!("credwatch-bench-floor: floor programs attached");
            // Held until SIGINT/SIGTERM ends the process; the programs detach with it.
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("credwatch-bench-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn attach(hooks: &[Hook]) -> anyhow::Result<aya::Ebpf> {
    if let Some(why) = sys::missing_privileges() {
        anyhow::bail!("{why}");
    }
    sys::ensure_mounted(sys::TRACEFS, "tracefs")?;
    object::raise_memlock_limit();
    let mut ebpf = aya::Ebpf::load(object::FLOOR_OBJECT)?;
    for s in kernel::attach(&mut ebpf, hooks) {
        if let Some(e) = s.error {
            anyhow::bail!("{}: {e}", s.probe);
        }
    }
    Ok(ebpf)
}
