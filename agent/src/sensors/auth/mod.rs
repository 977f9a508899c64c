//! The auth-call sensor: which workloads call which authentication endpoints, and how those
//! calls end.
//!
//! ```text
//! catalog (built-in + endpoints:, hostnames re-resolved) --endpoints--> ENDPOINTS trie (kernel)
//! TCP state changes --exact per-CPU counters--> CONNECTS (kernel) --connects--> State --> export
//! plaintext endpoint sends (sk_msg), OpenSSL calls (uprobes, tls) --bytes--> AUTH_EVENTS ring -+
//! segments plaintext endpoints receive (tp_btf/tcp_probe) --bytes--> SEGMENTS (per CPU) -------+
//!   --in time order--> decoders --> State: requests, durations, failures
//! ```
//!
//! The protocol decoders are pure code that turns the plaintext captured on one socket into
//! classified exchanges, importing nothing else of the crate:
//!
//! - [`Connection`] (`wire`): one per socket. [`Connection::new`] takes the endpoint's
//!   [`EndpointKind`]; [`Connection::feed`]`(dir, ns, captured, total_len)` takes each captured
//!   chunk in order (`captured` = its first bytes, `total_len` = its true length; the rest is
//!   skipped, never guessed) and returns the [`Exchange`]s it completed; [`Connection::close`]
//!   returns those still waiting, with [`Code::Unknown`]. The first request bytes choose HTTP/2
//!   (the client preface), HTTP/1.x (a request line) or neither (then nothing is parsed);
//!   response bytes seen before any request byte are ignored (clients write first).
//!   Uncaptured bytes inside a body or frame of known length cost nothing; past it, reading
//!   resumes at the next chunk that starts a message or a plausible frame, and what could not be
//!   read comes out as [`Code::Unknown`] or [`Operation::Other`].
//! - `http1`: request/status lines, the headers that delimit bodies, pipelining.
//! - `http2`, `hpack`, `huffman`: frames, header blocks (RFC 7541, a decoder of our own that keeps
//!   no header value and survives lost capture), the Huffman code.
//! - `classify`: [`Operation`] from the endpoint kind, method and path (+ STS form body).
//!
//! An [`Exchange`] holds labels and times only: no path, query, header value or body byte is
//! kept past the call that classifies it, and no `Debug` output shows one.
pub mod catalog;
pub mod connects;
pub mod endpoints;
pub mod failures;
pub mod probe_points;
pub mod requests;
pub mod tls;

mod classify;
mod hpack;
mod http1;
mod http2;
mod huffman;
mod wire;

pub use classify::{EndpointKind, Operation};
pub use wire::{Code, Connection, Direction, Exchange};

#[cfg(test)]
mod tests;

use aya::Ebpf;

use crate::kernel::{Hook, HookStatus, SocketHook};

/// The auth-call sensor's hooks: connect outcomes, and the segments plaintext endpoint sockets
/// receive.
pub const HOOKS: [Hook; 3] = [
    Hook::btf_tracepoint("inet_sock_set_state", "inet_sock_set_state"),
    Hook::btf_tracepoint("tcp_receive_reset", "tcp_receive_reset"),
    Hook::btf_tracepoint("endpoint_receive", "tcp_probe"),
];

/// Files mapped executable (a library loaded: a TLS library to attach, maybe): the LSM hook
/// where trampolines run, else the `mmap` syscall's tracepoint. Not a syscall tracepoint where
/// it can be helped: one puts every syscall of every process on the traced (slower) path, which
/// the file sensor's fast hook spares them.
pub const MAPPED_FAST: Hook = Hook::fexit("security_mmap_file_exit", "security_mmap_file");
pub const MAPPED: Hook = Hook::tracepoint("syscalls", "sys_enter_mmap");

/// The bytes of endpoint sockets, without a program on any other socket's I/O. The `sk_msg`
/// program goes on the sock hash before `sock_ops` puts a socket there (a socket takes the
/// programs its map has when it joins).
pub const SOCKET_HOOKS: [SocketHook; 2] = [
    SocketHook::SkMsg {
        program: "endpoint_send",
        map: credwatch_common::auth::maps::ENDPOINT_SOCKS,
    },
    SocketHook::SockOps {
        program: "endpoint_established",
    },
];

/// Attaches the sensor's hooks to the loaded object (the file sensor loaded it); `trampolines`:
/// whether the kernel may run fexit programs (not known to refuse them). A hook that fails is
/// reported, never fatal: the file sensor works without this one.
pub fn attach(ebpf: &mut Ebpf, trampolines: bool) -> Vec<HookStatus> {
    let mut hooks = crate::kernel::attach(ebpf, &HOOKS);
    let fast = trampolines
        .then(|| crate::kernel::attach(ebpf, &[MAPPED_FAST]))
        .filter(|s| s.iter().all(|s| s.attached));
    hooks.extend(fast.unwrap_or_else(|| crate::kernel::attach(ebpf, &[MAPPED])));
    let cgroup = crate::sys::cgroup2_mount();
    hooks.extend(crate::kernel::attach_sockets(
        ebpf,
        &SOCKET_HOOKS,
        cgroup.as_deref(),
    ));
    hooks
}
