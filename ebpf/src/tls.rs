//! TLS plaintext from OpenSSL: uprobes on `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex`
//! (entry and return) and `SSL_free`.
//!
//! An `SSL *` is tied to its socket by the I/O syscall it makes: while a thread is inside one of
//! these calls (`TLS_CALLS`), a write or read of an endpoint socket's descriptor records
//! `(tgid, SSL *) -> socket` (`TLS_SOCKS`, see `auth::io_enter`). Programs that run OpenSSL over
//! memory BIOs (Node.js: the event loop moves the records) make no syscall inside the call: there
//! the first write to a TLS endpoint socket (the ClientHello) ties it to the connection of the
//! thread's last TLS call, which produced it (the entry stays in `TLS_CALLS`, inactive). At the call's return, the
//! plaintext of a tied `SSL *` goes out like the bytes of a plaintext endpoint.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use credwatch_common::auth::{Direction, PendingIo, TlsCall, TlsKey, SOCKS_MAX_ENTRIES};

use crate::auth::{emit_data, SOCKS};

/// `credwatch_common::auth::maps::TLS_CALLS`.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(4096, 0);
/// `credwatch_common::auth::maps::TLS_SOCKS`. LRU: a missed `SSL_free` must not fill it.
#[map]
static TLS_SOCKS: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: Direction, ex: bool) -> u32 {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let out = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = TlsCall {
        ssl,
        buf,
        out,
        direction: direction as u32,
        active: 1,
    };
    let _ = TLS_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    0
}

/// Called from the I/O syscall hooks for a TLS endpoint socket: ties the thread's current TLS
/// call to the socket; outside any call, the first write ties the connection of the thread's last
/// call. Returns whether a connection is tied now.
#[inline(always)]
pub fn bind(pid_tgid: u64, tgid: u32, sock: u64, bound: bool, write: bool) -> bool {
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }) else {
        return bound;
    };
    if call.active == 0 && (bound || !write) {
        return bound;
    }
    let key = TlsKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    TLS_SOCKS.insert(&key, &sock, 0).is_ok() || bound
}

/// Not a data call: it only makes this connection the thread's last (its ClientHello follows).
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let call = TlsCall {
            ssl,
            buf: 0,
            out: 0,
            direction: Direction::Request as u32,
            active: 0,
        };
        let _ = TLS_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
    }
    0
}

/// `ret` is the byte count (`SSL_write`/`SSL_read`) or, for the `_ex` forms, 1 on success with
/// the count behind `out`.
#[inline(always)]
fn exit(ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = TLS_CALLS.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    // The entry stays as the thread's last call (see `bind`).
    let call = unsafe { *entry };
    unsafe { (*entry).active = 0 };
    if call.active == 0 || ret <= 0 {
        return 0;
    }
    let len = if call.out != 0 {
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => return 0,
        }
    } else {
        ret as u64
    };
    let tgid = (pid_tgid >> 32) as u32;
    let key = TlsKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let Some(sock) = (unsafe { TLS_SOCKS.get(&key) }).copied() else {
        return 0;
    };
    let Some(info) = SOCKS.get_ptr_mut(&sock) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    info.flags |= credwatch_common::auth::SOCK_DATA;
    let pending = PendingIo {
        sock,
        buf: call.buf,
        direction: call.direction,
        fd: info.fd,
    };
    emit_data(&pending, info, len);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Request, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Request, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Response, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Response, true)
}

/// One return probe for all four: the `_ex` forms are told apart by `TlsCall::out`. They all
/// return a C `int`: only the low 32 bits of the register are the value (-1 is not 2^32 - 1).
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    exit(i64::from(ctx.ret::<i32>()))
}

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let key = TlsKey {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            ssl,
        };
        let _ = TLS_SOCKS.remove(&key);
    }
    0
}
