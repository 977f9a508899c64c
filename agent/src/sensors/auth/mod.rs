//! The auth-call sensor: which workloads call which authentication endpoints, and how those
//! calls end.
//!
//! ```text
//! catalog (built-in + endpoints:, hostnames re-resolved) --endpoints--> ENDPOINTS trie (kernel)
//! TCP state changes --exact per-CPU counters--> CONNECTS (kernel) --connects--> State --> export
//! I/O on endpoint sockets --bytes--> AUTH_EVENTS ring --> decoders --> State requests, failures
//! ```
pub mod catalog;
pub mod connects;
pub mod endpoints;
pub mod failures;
pub mod requests;
pub mod tls;

use aya::Ebpf;

use crate::kernel::{Hook, HookStatus};

/// The auth-call sensor's hooks: connect outcomes, and the bytes of endpoint sockets.
pub const HOOKS: [Hook; 11] = [
    Hook::tracepoint("syscalls", "sys_enter_connect"),
    Hook::tracepoint("sock", "inet_sock_set_state"),
    Hook::tracepoint("tcp", "tcp_receive_reset"),
    Hook::tracepoint("syscalls", "sys_enter_write"),
    Hook::tracepoint("syscalls", "sys_exit_write"),
    Hook::tracepoint("syscalls", "sys_enter_sendto"),
    Hook::tracepoint("syscalls", "sys_exit_sendto"),
    Hook::tracepoint("syscalls", "sys_enter_read"),
    Hook::tracepoint("syscalls", "sys_exit_read"),
    Hook::tracepoint("syscalls", "sys_enter_recvfrom"),
    Hook::tracepoint("syscalls", "sys_exit_recvfrom"),
];

/// Attaches the sensor's hooks to the loaded object (the file sensor loaded it). A hook that
/// fails is reported, never fatal: the file sensor works without this one.
pub fn attach(ebpf: &mut Ebpf) -> Vec<HookStatus> {
    crate::kernel::attach(ebpf, &HOOKS)
}
