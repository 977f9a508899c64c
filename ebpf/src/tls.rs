//! TLS plaintext from OpenSSL: uprobes on `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex`
//! (entry and return) and `SSL_free`.
//!
//! An `SSL *` is tied to its socket by the sends it makes: while a thread is inside one of these
//! calls (`TLS_CALLS`), a send on an endpoint socket records `(tgid, SSL *) -> socket`
//! (`TLS_SOCKS`, see `auth::endpoint_send`). Programs that run OpenSSL over memory BIOs (Node.js:
//! the event loop moves the records) send nothing inside the call: there the first send on a TLS
//! endpoint socket (the ClientHello) ties it to the connection of the thread's last TLS call,
//! which produced it (the entry stays in `TLS_CALLS`, inactive). At the call's return, the
//! plaintext of a tied `SSL *` goes out like the bytes of a plaintext endpoint.
//!
//! Which files to attach is userspace's to find (`/proc/<pid>/maps`); `security_mmap_file_exit`
//! (or `sys_enter_mmap`) tells it the moment a process maps a file executable (a library being
//! loaded), so that a client that loads its own libssl and calls at once is attached before its
//! first call.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated,
    },
    macros::{fexit, map, tracepoint, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext as _,
};
use credwatch_common::{
    auth::{
        Direction, MappedEvent, TlsCall, TlsKey, MAPPED_QUIET_NS, PROT_EXEC, SOCKS_MAX_ENTRIES,
    },
    EventKind, LostStage,
};

use crate::{
    auth::{emit_captured, wakeup_flags, AUTH_EVENTS, SOCKS},
    is_agent, lost,
};

/// `credwatch_common::auth::maps::TLS_CALLS`.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(4096, 0);
/// `credwatch_common::auth::maps::TLS_SOCKS`. LRU: a missed `SSL_free` must not fill it.
#[map]
static TLS_SOCKS: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);

/// Where a data call's byte count goes: its return value (`SSL_write`, `SSL_read`), or the
/// `size_t *` argument at this position (`SSL_write_ex`, `SSL_read_ex` and the internal functions
/// they share with the plain forms: 3; `SSL_write_ex2` and OpenSSL 3.3's internal write: 4).
#[derive(Clone, Copy)]
enum Count {
    Returned,
    At(usize),
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: Direction, count: Count) -> u32 {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let out = match count {
        Count::At(n) => ctx.arg::<u64>(n).unwrap_or(0),
        Count::Returned => 0,
    };
    remember(TlsCall {
        ssl,
        buf,
        out,
        direction: direction as u32,
        active: 1,
    });
    0
}

/// Makes `call` this thread's current one: written in place once the thread has an entry (every
/// call after its first), which spares the LRU map's allocation and locks on every call of
/// every TLS program on the node.
#[inline(always)]
fn remember(call: TlsCall) {
    let key = bpf_get_current_pid_tgid();
    match TLS_CALLS.get_ptr_mut(&key) {
        Some(slot) => unsafe { *slot = call },
        None => {
            let _ = TLS_CALLS.insert(&key, &call, 0);
        }
    }
}

/// Called for each send on a TLS endpoint socket: ties the thread's current TLS call to the
/// socket; outside any call, the first send ties the connection of the thread's last call.
/// Returns whether a connection is tied now.
#[inline(always)]
pub fn bind(pid_tgid: u64, sock: u64, bound: bool) -> bool {
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }) else {
        return bound;
    };
    if call.active == 0 && bound {
        return bound;
    }
    let key = TlsKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    // Tied already (every write of a keep-alive connection): a lookup spares the LRU update.
    if unsafe { TLS_SOCKS.get(&key) }.copied() == Some(sock) {
        return true;
    }
    TLS_SOCKS.insert(&key, &sock, 0).is_ok() || bound
}

/// Not a data call: it only makes this connection the thread's last (its ClientHello follows).
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        remember(TlsCall {
            ssl,
            buf: 0,
            out: 0,
            direction: Direction::Request as u32,
            active: 0,
        });
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
    // Not tied to an endpoint socket (a server's connection, any other TLS): done, before any
    // read of the caller's memory.
    let tgid = (pid_tgid >> 32) as u32;
    let key = TlsKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let Some(sock) = (unsafe { TLS_SOCKS.get(&key) }).copied() else {
        return 0;
    };
    let len = if call.out != 0 {
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => return 0,
        }
    } else {
        ret as u64
    };
    let Some(info) = SOCKS.get_ptr_mut(&sock) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    info.flags |= credwatch_common::auth::SOCK_DATA;
    let direction = if call.direction == Direction::Request as u32 {
        Direction::Request
    } else {
        Direction::Response
    };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let len = len.min(u64::from(u32::MAX)) as u32;
    emit_captured(
        sock,
        info,
        direction,
        cgroup_id,
        len,
        len,
        |dst, n| unsafe { generated::bpf_probe_read_user(dst as *mut _, n, call.buf as *const _) },
    );
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Request, Count::Returned)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Request, Count::At(3))
}

#[uprobe]
pub fn ssl_write_ex2(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Request, Count::At(4))
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Response, Count::Returned)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Response, Count::At(3))
}

/// One return probe for all of them: the forms with a count argument are told apart by
/// `TlsCall::out` (they return 1 on success). They all return a C `int`: only the low 32 bits of
/// the register are the value (-1 is not 2^32 - 1).
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

/// `mmap(addr, len, prot, flags, fd, off)` on kernels without BPF trampolines: a file mapped
/// executable goes to userspace. (A syscall tracepoint: only where the file sensor's open
/// tracepoints already put every syscall on the traced path.) Anonymous and data mappings cost
/// one test.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    // Syscall tracepoint records: arguments from offset 16, 8 bytes each.
    let arg = |n: usize| unsafe { *(ctx.as_ptr().add(16 + 8 * n) as *const u64) };
    if arg(2) & PROT_EXEC != 0 && (arg(4) as i32) >= 0 {
        library_mapped();
    }
    0
}

/// The same where trampolines run: the LSM hook every file mapping passes (`mmap`, `mmap2`,
/// the loader's and `dlopen`'s), after the LSMs allowed it.
#[fexit(function = "security_mmap_file")]
pub fn security_mmap_file_exit(ctx: FExitContext) -> u32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg(3);
    if file != 0 && prot & PROT_EXEC != 0 && ret as i32 == 0 {
        library_mapped();
    }
    0
}

/// Per CPU: the process of the last `MappedEvent` sent and when (ns).
#[map]
static MAPPED_LAST: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Tells userspace that this process mapped a file executable. A loader maps a dozen libraries
/// in a burst: one event stands for the process's mappings within `MAPPED_QUIET_NS` on this CPU
/// (userspace looks at the process later than that: `tls::MAPPED_SETTLE`). No wakeup: the
/// agent drains the ring every 50 ms anyway, and every process start on the node comes here.
#[inline(always)]
fn library_mapped() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = MAPPED_LAST.get_ptr_mut(0) {
        let last = unsafe { &mut *last };
        if last[0] == u64::from(tgid) && now.wrapping_sub(last[1]) < MAPPED_QUIET_NS {
            return;
        }
        *last = [u64::from(tgid), now];
    }
    match AUTH_EVENTS.reserve::<MappedEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            unsafe {
                (*ev).kind = EventKind::LibraryMapped as u32;
                (*ev).tgid = tgid;
            }
            entry.submit(wakeup_flags());
        }
        None => lost(LostStage::AuthRingBuf),
    }
}
