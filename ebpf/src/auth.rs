//! Auth-call sensor: connects to catalogued endpoints and the bytes exchanged over them.
//!
//! - `sock/inet_sock_set_state`, `SYN_SENT`: a TCP connect begins; one trie lookup of the
//!   destination in `ENDPOINTS` decides whether it is an endpoint socket (`SOCKS`). Its later
//!   transitions count the outcome exactly in `CONNECTS`: `ESTABLISHED` is established (per-CPU counters); `CLOSE`
//!   straight from `SYN_SENT` is refused if `tcp/tcp_receive_reset` saw the peer's reset, else
//!   failed (timeout, ICMP error, given up).
//! - `syscalls/sys_enter_connect` notes the descriptor of a connect to an endpoint, so that the
//!   socket can be found again by descriptor (`FDS`).
//! - `write`/`sendto` and `read`/`recvfrom`: on a plaintext endpoint socket the bytes moved go
//!   to userspace on `AUTH_EVENTS` (first `DATA_CAPTURE` bytes, and the true length); on a TLS
//!   one, the TLS library call the thread is in is tied to the socket (`tls`). Any other I/O
//!   costs one hash lookup at enter and one at exit.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, generated,
    },
    macros::{map, tracepoint},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
    EbpfContext as _,
};
use credwatch_common::{
    auth::{
        ConnectKey, ConnectResult, DataEvent, Direction, Endpoint, EndpointKey, FdKey, PendingIo,
        SockInfo, AF_INET, AF_INET6, AUTH_EVENTS_BYTE_SIZE, CONNECTS_MAX_ENTRIES, DATA_CAPTURE,
        ENDPOINTS_MAX_ENTRIES, ENDPOINT_PLAINTEXT, SOCKS_MAX_ENTRIES, SOCK_COUNTED, SOCK_DATA,
        SOCK_PLAINTEXT, SOCK_RESET, SOCK_TLS_BOUND, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT,
    },
    file::KernelOffsets,
    EventKind, LostStage,
};

use crate::{file::offsets, is_agent, lost};

/// `credwatch_common::auth::maps::*`.
#[map]
static ENDPOINTS: LpmTrie<EndpointKey, Endpoint> =
    LpmTrie::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);
#[map]
static CONNECTS: PerCpuHashMap<ConnectKey, u64> =
    PerCpuHashMap::with_max_entries(CONNECTS_MAX_ENTRIES, 0);
#[map]
pub(crate) static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);
/// LRU: a connect that never reaches `SYN_SENT` (UDP, an early error) leaves its entry behind.
#[map]
static CONNECTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);
#[map]
static FDS: HashMap<FdKey, u64> = HashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);
/// LRU: a thread that dies inside a blocking read never reaches the exit.
#[map]
static PENDING_IO: LruHashMap<u64, PendingIo> = LruHashMap::with_max_entries(4096, 0);
#[map]
static AUTH_EVENTS: RingBuf = RingBuf::with_byte_size(AUTH_EVENTS_BYTE_SIZE, 0);

const IPPROTO_TCP: u16 = 6;

/// Syscall tracepoint records: arguments from offset 16, 8 bytes each; `ret` of an exit at 16.
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { *(ctx.as_ptr().add(16 + 8 * n) as *const u64) }
}

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read_unaligned(ctx.as_ptr().add(offset) as *const T) }
}

#[inline(always)]
fn endpoint(key: EndpointKey) -> Option<Endpoint> {
    ENDPOINTS
        .get(Key::new(EndpointKey::FULL_PREFIX, key))
        .copied()
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, 0);
    let addr = arg(&ctx, 1) as *const u8;
    if let Some(key) = unsafe { user_sockaddr(addr) } {
        if endpoint(key).is_some() {
            let _ = CONNECTING.insert(&bpf_get_current_pid_tgid(), &(fd as u32), 0);
        }
    }
    0
}

/// The endpoint key of a user `sockaddr_in` or `sockaddr_in6`.
#[inline(always)]
unsafe fn user_sockaddr(addr: *const u8) -> Option<EndpointKey> {
    unsafe {
        let family: u16 = bpf_probe_read_user(addr as *const u16).ok()?;
        let port: [u8; 2] = bpf_probe_read_user(addr.add(2) as *const [u8; 2]).ok()?;
        match family {
            AF_INET => {
                let a: [u8; 4] = bpf_probe_read_user(addr.add(4) as *const [u8; 4]).ok()?;
                Some(EndpointKey::v4(a, port))
            }
            AF_INET6 => Some(EndpointKey {
                port,
                addr: bpf_probe_read_user(addr.add(8) as *const [u8; 16]).ok()?,
                _pad: [0; 2],
            }),
            _ => None,
        }
    }
}

/// Offsets in the `sock/inet_sock_set_state` record.
const SS_SKADDR: usize = 8;
const SS_OLDSTATE: usize = 16;
const SS_NEWSTATE: usize = 20;
const SS_DPORT: usize = 26;
const SS_FAMILY: usize = 28;
const SS_PROTOCOL: usize = 30;
const SS_DADDR: usize = 36;
const SS_DADDR_V6: usize = 56;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if field::<u16>(&ctx, SS_PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field(&ctx, SS_SKADDR);
    let newstate: i32 = field(&ctx, SS_NEWSTATE);
    if newstate == TCP_SYN_SENT {
        on_syn_sent(&ctx, sk);
        return 0;
    }
    let Some(info) = SOCKS.get_ptr_mut(&sk) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    let oldstate: i32 = field(&ctx, SS_OLDSTATE);
    if oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED {
        info.flags |= SOCK_COUNTED;
        count_connect(info, ConnectResult::Established);
    } else if newstate == TCP_CLOSE {
        if info.flags & SOCK_COUNTED == 0 {
            let result = if info.flags & SOCK_RESET != 0 {
                ConnectResult::Refused
            } else {
                ConnectResult::Failed
            };
            count_connect(info, result);
        }
        let info = *info;
        if info.flags & SOCK_DATA != 0 {
            emit_close(sk, &info);
        }
        // The descriptor number may belong to a newer socket by now (closed, or dup'd and
        // closed, then taken by the next connect while this socket lived on): not ours to remove.
        let fd = FdKey {
            tgid: info.tgid,
            fd: info.fd,
        };
        if unsafe { FDS.get(&fd) }.copied() == Some(sk) {
            let _ = FDS.remove(&fd);
        }
        let _ = SOCKS.remove(&sk);
    }
    0
}

#[inline(always)]
fn on_syn_sent(ctx: &TracePointContext, sk: u64) {
    let port: [u8; 2] = field::<u16>(ctx, SS_DPORT).to_be_bytes();
    // Arrays through a helper read: the verifier allows only plain loads from the record.
    let key = if field::<u16>(ctx, SS_FAMILY) == AF_INET6 {
        let Ok(addr) = (unsafe { ctx.read_at::<[u8; 16]>(SS_DADDR_V6) }) else {
            return;
        };
        EndpointKey {
            port,
            addr,
            _pad: [0; 2],
        }
    } else {
        let Ok(addr) = (unsafe { ctx.read_at::<[u8; 4]>(SS_DADDR) }) else {
            return;
        };
        EndpointKey::v4(addr, port)
    };
    let Some(ep) = endpoint(key) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    let fd = match unsafe { CONNECTING.get(&pid_tgid) } {
        Some(fd) => *fd,
        None => u32::MAX,
    };
    let _ = CONNECTING.remove(&pid_tgid);
    let info = SockInfo {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        endpoint: ep.id,
        flags: if ep.flags & ENDPOINT_PLAINTEXT != 0 {
            SOCK_PLAINTEXT
        } else {
            0
        },
        tgid,
        fd,
    };
    if SOCKS.insert(&sk, &info, 0).is_err() {
        lost(LostStage::SocksMap);
        return;
    }
    if fd != u32::MAX && FDS.insert(&FdKey { tgid, fd }, &sk, 0).is_err() {
        lost(LostStage::SocksMap);
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let sk: u64 = field(&ctx, 8);
    if let Some(info) = SOCKS.get_ptr_mut(&sk) {
        unsafe { (*info).flags |= SOCK_RESET };
    }
    0
}

#[inline(always)]
fn count_connect(info: &SockInfo, result: ConnectResult) {
    let key = ConnectKey {
        cgroup_id: info.cgroup_id,
        endpoint: info.endpoint,
        result: result as u32,
    };
    // Per-CPU slots: no other program touches this CPU's while this one runs.
    if let Some(n) = CONNECTS.get_ptr_mut(&key) {
        unsafe { *n += 1 };
        return;
    }
    if CONNECTS.insert(&key, &1, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU inserted it first, or the map is full.
    match CONNECTS.get_ptr_mut(&key) {
        Some(n) => unsafe { *n += 1 },
        None => lost(LostStage::ConnectsMap),
    }
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Direction::Request, true)
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Direction::Request, true)
}

/// `writev` is followed for TLS sockets only (it ties the connection object, as Node.js writes
/// its records); plaintext carried in an iovec is not captured.
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Direction::Request, false)
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Direction::Response, true)
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Direction::Response, true)
}

#[tracepoint]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    io_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    io_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    io_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    io_exit(&ctx)
}

/// The one lookup any I/O syscall pays: is this descriptor an endpoint socket? A TLS one ties
/// the thread's TLS connection object to it; a plaintext one has its bytes captured at the exit
/// when `capture` (the syscall's second argument is the buffer).
#[inline(always)]
fn io_enter(ctx: &TracePointContext, direction: Direction, capture: bool) -> u32 {
    let fd = arg(ctx, 0) as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    let Some(sock) = (unsafe { FDS.get(&key) }).copied() else {
        return 0;
    };
    let Some(info) = SOCKS.get_ptr_mut(&sock) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    if info.flags & SOCK_PLAINTEXT == 0 {
        // TLS records: they tie the TLS library's connection object to the socket.
        let bound = info.flags & SOCK_TLS_BOUND != 0;
        let write = direction as u32 == Direction::Request as u32;
        if crate::tls::bind(pid_tgid, key.tgid, sock, bound, write) {
            info.flags |= SOCK_TLS_BOUND;
        }
        return 0;
    }
    if !capture {
        return 0;
    }
    let pending = PendingIo {
        sock,
        buf: arg(ctx, 1),
        direction: direction as u32,
        fd,
    };
    let _ = PENDING_IO.insert(&pid_tgid, &pending, 0);
    0
}

/// The second lookup: was this thread's syscall on an endpoint socket? Then its bytes go out.
#[inline(always)]
fn io_exit(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING_IO.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = PENDING_IO.remove(&pid_tgid);
    let ret = arg(ctx, 0) as i64;
    if ret <= 0 {
        return 0;
    }
    // The descriptor may have been closed and reused since the connect: it must still be the socket.
    if unsafe { socket_of(offsets(), pending.fd) } != Some(pending.sock) {
        return 0;
    }
    let Some(info) = SOCKS.get_ptr_mut(&pending.sock) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    info.flags |= SOCK_DATA;
    emit_data(&pending, info, ret as u64);
    0
}

/// `current->files->fdt->fd[fd]->private_data->sk`, with helper reads (endpoint sockets only).
#[inline(always)]
unsafe fn socket_of(off: &KernelOffsets, fd: u32) -> Option<u64> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 = read(task, off.task_files)?;
        let fdt: *const u8 = read(files, off.files_fdt)?;
        let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
        if fd >= max_fds {
            return None;
        }
        let table: *const u8 = read(fdt, off.fdt_fd)?;
        let file: *const u8 = bpf_probe_read_kernel(table.add(fd as usize * 8) as *const _).ok()?;
        let socket: *const u8 = read(file, off.file_private_data)?;
        read(socket, off.socket_sk)
    }
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

#[inline(always)]
pub(crate) fn emit_data(pending: &PendingIo, info: &SockInfo, len: u64) {
    let Some(mut entry) = AUTH_EVENTS.reserve::<DataEvent>(0) else {
        lost(LostStage::AuthRingBuf);
        return;
    };
    let n = if len > DATA_CAPTURE as u64 {
        DATA_CAPTURE as u32
    } else {
        len as u32
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).kind = EventKind::AuthData as u32;
        (*ev).direction = pending.direction;
        (*ev).sock = pending.sock;
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).endpoint = info.endpoint;
        (*ev).tgid = info.tgid;
        (*ev).len = len.min(u32::MAX as u64) as u32;
        let copied = generated::bpf_probe_read_user(
            (*ev).data.as_mut_ptr() as *mut _,
            n,
            pending.buf as *const _,
        );
        (*ev).captured = if copied == 0 { n } else { 0 };
    }
    entry.submit(wakeup_flags());
}

/// Waking the reader costs an interrupt (an IPI, a VM exit under a hypervisor): several
/// microseconds per event. The agent drains this ring on a short timer anyway, so events go out
/// without a wakeup until the ring is half full.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if AUTH_EVENTS.query(BPF_RB_AVAIL_DATA as u64) > u64::from(AUTH_EVENTS_BYTE_SIZE / 2) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn emit_close(sk: u64, info: &SockInfo) {
    let Some(mut entry) = AUTH_EVENTS.reserve::<DataEvent>(0) else {
        lost(LostStage::AuthRingBuf);
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).kind = EventKind::AuthData as u32;
        (*ev).direction = Direction::Close as u32;
        (*ev).sock = sk;
        (*ev).cgroup_id = info.cgroup_id;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).endpoint = info.endpoint;
        (*ev).tgid = info.tgid;
        (*ev).len = 0;
        (*ev).captured = 0;
    }
    entry.submit(wakeup_flags());
}
