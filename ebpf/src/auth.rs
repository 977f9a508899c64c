//! Auth-call sensor: connects to catalogued endpoints and the bytes exchanged over them.
//!
//! - `sock/inet_sock_set_state`, `SYN_SENT`: a TCP connect begins; one trie lookup of the
//!   destination in `ENDPOINTS` decides whether it is an endpoint socket (`SOCKS`). Its later
//!   transitions count the outcome exactly in `CONNECTS`: `ESTABLISHED` is established (per-CPU
//!   counters); `CLOSE` straight from `SYN_SENT` is refused if `tcp/tcp_receive_reset` saw the
//!   peer's reset, else failed (timeout, ICMP error, given up).
//! - `sock_ops` (root cgroup), active established: an endpoint socket joins `ENDPOINT_SOCKS`,
//!   so that its sends, and only its, run `endpoint_send` (`sk_msg`): every send, whatever the
//!   syscall (`write`, `send`, `writev`, `sendmsg`, `sendfile`). On a plaintext endpoint the
//!   bytes go to userspace on `AUTH_EVENTS`; on a TLS one, the TLS library call the thread is in
//!   is tied to the socket (`tls`).
//! - `tcp:tcp_probe` (a BTF tracepoint at the top of `tcp_rcv_established`, under the socket's
//!   lock): a plaintext endpoint's response bytes, segment by segment in sequence order, copied
//!   out by `bpf_skb_output` to `SEGMENTS`. Any other segment costs the tracepoint's dispatch, one
//!   load of the peer's port and one array load (its port is not a plaintext endpoint's; when it
//!   is, as every web server's port 80 is, the socket's mark is tested before any lookup); a
//!   `cgroup_skb` program here cost every packet of the host about twice as much (the cgroup
//!   framework saves and restores the packet around it), most of what a busy socket paid.
use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{btf_map, btf_tracepoint, map, sk_msg, sock_ops},
    maps::{
        lpm_trie::Key, ring_buf::RingBufEntry, Array, HashMap, LpmTrie, PerCpuHashMap,
        PerfEventArray, RingBuf, SockHash,
    },
    programs::{BtfTracePointContext, SkMsgContext, SockOpsContext},
};
use credwatch_common::{
    auth::{
        ConnectKey, ConnectResult, DataEvent, Direction, Endpoint, EndpointKey, SegmentEvent,
        SockInfo, AF_INET6, AUTH_EVENTS_BYTE_SIZE, CONNECTS_MAX_ENTRIES, DATA_CAPTURE, DATA_HEADER,
        ENDPOINTS_MAX_ENTRIES, ENDPOINT_PLAINTEXT, PLAINTEXT_PORTS_WORDS, SOCKS_MAX_ENTRIES,
        SOCK_COUNTED, SOCK_DATA, SOCK_PLAINTEXT, SOCK_RESET, SOCK_SEQ, SOCK_TLS_BOUND, TCP_CLOSE,
        TCP_ESTABLISHED, TCP_SYN_SENT,
    },
    EventKind, LostStage,
};

use crate::{is_agent, lost};

/// `credwatch_common::auth::maps::*`.
#[map]
static ENDPOINTS: LpmTrie<EndpointKey, Endpoint> =
    LpmTrie::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);
#[map]
static CONNECTS: PerCpuHashMap<ConnectKey, u64> =
    PerCpuHashMap::with_max_entries(CONNECTS_MAX_ENTRIES, 0);
#[map]
pub(crate) static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(SOCKS_MAX_ENTRIES, 0);
/// A socket leaves it by itself when it closes.
#[map]
static ENDPOINT_SOCKS: SockHash<u64> = SockHash::with_max_entries(SOCKS_MAX_ENTRIES, 0);
#[map]
static PLAINTEXT_PORTS: Array<u32> = Array::with_max_entries(PLAINTEXT_PORTS_WORDS, 0);
#[map]
pub(crate) static AUTH_EVENTS: RingBuf = RingBuf::with_byte_size(AUTH_EVENTS_BYTE_SIZE, 0);
/// A mark in each endpoint socket's own storage (set at `SYN_SENT`): every other socket's later
/// hooks find none by a NULL test of the socket's storage pointer, no map lookup.
#[btf_map]
static ENDPOINT_MARKS: SkStorage<u32> = SkStorage::new();
/// One buffer per CPU (the loader sizes it).
#[map]
static SEGMENTS: PerfEventArray<u8> = PerfEventArray::new(0);

const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn endpoint(key: EndpointKey) -> Option<Endpoint> {
    ENDPOINTS
        .get(Key::new(EndpointKey::FULL_PREFIX, key))
        .copied()
}

/// `struct sock_common` fields that have kept their places since Linux 2.6 (socket lookups depend
/// on them): the peer's IPv4 address, its port (both network order), the family.
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_FAMILY: usize = 16;

/// Whether `sk` is marked as an endpoint socket (its storage holds the mark).
#[inline(always)]
fn is_endpoint(sk: *mut core::ffi::c_void) -> bool {
    !sk.is_null()
        && !unsafe {
            generated::bpf_sk_storage_get(
                &raw const ENDPOINT_MARKS as *mut _,
                sk,
                core::ptr::null_mut(),
                0,
            )
        }
        .is_null()
}

/// Every TCP state change (`sock:inet_sock_set_state`, typed).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sock: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let off = crate::file::offsets();
    if unsafe { *(sock.add(off.sock_protocol as usize) as *const u16) } != IPPROTO_TCP {
        return 0;
    }
    if newstate == TCP_SYN_SENT {
        on_syn_sent(sock);
        return 0;
    }
    // Only an active open's establishment and a close matter, and only on an endpoint socket:
    // every other change, and every other socket, costs no lookup.
    let established = oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED;
    if (!established && newstate != TCP_CLOSE) || !is_endpoint(sock as *mut _) {
        return 0;
    }
    let sk = sock as u64;
    let Some(info) = SOCKS.get_ptr_mut(&sk) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    if established {
        info.flags |= SOCK_COUNTED;
        count_connect(info, ConnectResult::Established);
    } else {
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
        let _ = SOCKS.remove(&sk);
    }
    0
}

/// A connect begins: the one lookup every connection pays (the destination in `ENDPOINTS`); an
/// endpoint socket goes into `SOCKS` and is marked.
#[inline(always)]
fn on_syn_sent(sock: *const u8) {
    let off = crate::file::offsets();
    // Direct loads from the typed socket; the IPv6 address (16 bytes) through a helper read.
    let port: [u8; 2] = unsafe { *(sock.add(SKC_DPORT) as *const u16) }.to_ne_bytes();
    let family = unsafe { *(sock.add(SKC_FAMILY) as *const u16) };
    let key = if family == AF_INET6 {
        if off.sock_v6_daddr == 0 {
            return; // a kernel without IPv6 fields
        }
        let from = unsafe { sock.add(off.sock_v6_daddr as usize) } as *const [u8; 16];
        let Ok(addr) = (unsafe { bpf_probe_read_kernel(from) }) else {
            return;
        };
        EndpointKey {
            port,
            addr,
            _pad: [0; 2],
        }
    } else {
        let addr = unsafe { *(sock.add(SKC_DADDR) as *const u32) }.to_ne_bytes();
        EndpointKey::v4(addr, port)
    };
    let Some(ep) = endpoint(key) else {
        return;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    let info = SockInfo {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        endpoint: ep.id,
        flags: if ep.flags & ENDPOINT_PLAINTEXT != 0 {
            SOCK_PLAINTEXT
        } else {
            0
        },
        tgid,
        rcv_next: 0,
    };
    let sk = sock as u64;
    if SOCKS.insert(&sk, &info, 0).is_err() {
        lost(LostStage::SocksMap);
        return;
    }
    let marked = unsafe {
        generated::bpf_sk_storage_get(
            &raw const ENDPOINT_MARKS as *mut _,
            sock as *mut _,
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
    if marked.is_null() {
        // Unmarked, its later changes would go unseen: not followed at all.
        let _ = SOCKS.remove(&sk);
        lost(LostStage::SocksMap);
    }
}

/// The peer reset the connection (`tcp:tcp_receive_reset`, typed): a connect refused, if it was
/// still in `SYN_SENT`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    let sock: *const u8 = ctx.arg(0);
    if !is_endpoint(sock as *mut _) {
        return 0;
    }
    if let Some(info) = SOCKS.get_ptr_mut(&(sock as u64)) {
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

/// The socket's key in `SOCKS`: its address, as the tracepoints give it.
#[inline(always)]
fn sock_key<T>(sk: *mut T) -> Option<u64> {
    if sk.is_null() {
        None
    } else {
        Some(sk as u64)
    }
}

/// An endpoint socket is established: its sends run `endpoint_send` from now on. Every other
/// socket's establishment costs one `SOCKS` lookup, and its I/O nothing.
#[sock_ops]
pub fn endpoint_established(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    let ops = ctx.ops;
    let sock = unsafe { (*ops).__bindgen_anon_2.sk };
    if !is_endpoint(sock as *mut _) {
        return 1;
    }
    let Some(mut sk) = sock_key(sock) else {
        return 1;
    };
    let Some(info) = SOCKS.get_ptr_mut(&sk) else {
        return 1;
    };
    unsafe {
        (*info).rcv_next = (*ops).rcv_nxt;
        (*info).flags |= SOCK_SEQ;
    }
    if ENDPOINT_SOCKS
        .update(&mut sk, unsafe { &mut *ops }, BPF_ANY as u64)
        .is_err()
    {
        lost(LostStage::SocksMap);
    }
    1
}

/// A send on an endpoint socket, in the sending thread: a plaintext one's bytes go out; a TLS
/// one ties the thread's TLS call to the socket. Always lets the bytes pass.
#[sk_msg]
pub fn endpoint_send(ctx: SkMsgContext) -> u32 {
    let msg = ctx.msg;
    let Some(sk) = sock_key(unsafe { (*msg).__bindgen_anon_3.sk }) else {
        return SK_PASS;
    };
    let Some(info) = SOCKS.get_ptr_mut(&sk) else {
        return SK_PASS;
    };
    let info = unsafe { &mut *info };
    let pid_tgid = bpf_get_current_pid_tgid();
    if info.flags & SOCK_PLAINTEXT == 0 {
        let bound = info.flags & SOCK_TLS_BOUND != 0;
        if crate::tls::bind(pid_tgid, sk, bound) {
            info.flags |= SOCK_TLS_BOUND;
        }
        return SK_PASS;
    }
    let size = ctx.size();
    let want = size.min(DATA_CAPTURE as u32);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // The first bytes span pages: make them one (endpoint sockets only, a few KB).
        unsafe { generated::bpf_msg_pull_data(msg, 0, want, 0) };
    }
    let data = ctx.data();
    let linear = (ctx.data_end() - data) as u32;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit_captured(
        sk,
        info,
        Direction::Request,
        cgroup_id,
        size,
        linear.min(want),
        |dst, n| unsafe { generated::bpf_probe_read_kernel(dst as *mut _, n, data as *const _) },
    );
    info.flags |= SOCK_DATA;
    SK_PASS
}

/// `n`, at most `max`, checked where the verifier sees it: the volatile reload keeps the compiler
/// from passing on an earlier copy of `n` whose bound older verifiers (6.1) do not connect.
#[inline(always)]
fn at_most(n: u32, max: u32) -> u32 {
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n > max {
        max
    } else {
        n
    }
}

/// Bytes to capture of `len`: at most `DATA_CAPTURE`.
#[inline(always)]
pub(crate) fn capture_len(len: u32) -> u32 {
    at_most(len, DATA_CAPTURE as u32)
}

/// `BPF_F_CURRENT_CPU`: `bpf_skb_output` writes to this CPU's buffer of `SEGMENTS`.
const BPF_F_CURRENT_CPU: u64 = 0xffff_ffff;

/// A segment arrives on an established TCP socket: a plaintext endpoint's response bytes go out,
/// each byte once and in order.
#[btf_tracepoint(function = "tcp_probe")]
pub fn endpoint_receive(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    // A direct load from the typed `struct sock *` (fault-tolerant, no helper call).
    let port = u16::from_be(unsafe { *(sk.add(SKC_DPORT) as *const u16) });
    let bit = PLAINTEXT_PORTS
        .get(u32::from(port >> 5))
        .is_some_and(|w| w & (1 << (port & 31)) != 0);
    // Port 80 is every web server's too: only a marked socket is looked up.
    if !bit || !is_endpoint(sk as *mut _) {
        return 0;
    }
    let key = sk as u64;
    let Some(info) = SOCKS.get_ptr_mut(&key) else {
        return 0;
    };
    let info = unsafe { &mut *info };
    if info.flags & SOCK_PLAINTEXT != 0 {
        let _ = receive(skb, key, info);
    }
    0
}

/// The TCP payload of one received segment, against the bytes already sent to userspace.
#[inline(always)]
fn receive(skb: *const u8, sk: u64, info: &mut SockInfo) -> Option<()> {
    let off = crate::file::offsets();
    // Here `skb->data` is at the TCP header, and `skb->len` counts it and the payload.
    let total: u32 = unsafe { *(skb.add(off.skb_len as usize) as *const u32) };
    let data: u64 = unsafe { *(skb.add(off.skb_data as usize) as *const u64) };
    // The header's sequence number (bytes 4-7) and data offset (byte 12); headers are linear.
    let head: [u8; 16] = unsafe { bpf_probe_read_kernel(data as *const [u8; 16]) }.ok()?;
    let seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let start = u32::from(head[12] >> 4) * 4;
    if total <= start {
        return None; // no payload: an ACK, a FIN
    }
    let len = total - start;
    if info.flags & SOCK_SEQ == 0 {
        // Established before the sock_ops program was attached: start here.
        info.rcv_next = seq;
        info.flags |= SOCK_SEQ;
    }
    let ahead = seq.wrapping_sub(info.rcv_next) as i32;
    let end = seq.wrapping_add(len);
    if ahead < 0 {
        // A retransmission: only bytes past those already out are new (rare: count them as
        // not captured rather than splice a segment).
        let new = end.wrapping_sub(info.rcv_next) as i32;
        if new > 0 {
            skipped(sk, info, new as u32);
            info.rcv_next = end;
        }
        return None;
    }
    if ahead > 0 {
        // Earlier bytes are still on their way (out of order): they are reported as not
        // captured, here, where they belong in the stream, and not again when they arrive.
        skipped(sk, info, ahead as u32);
    }
    info.rcv_next = end;
    info.flags |= SOCK_DATA;
    let n = capture_len(len);
    let mut event = SegmentEvent {
        kind: EventKind::AuthSegment as u32,
        direction: Direction::Response as u32,
        sock: sk,
        cgroup_id: info.cgroup_id,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        endpoint: info.endpoint,
        tgid: info.tgid,
        len,
        captured: n,
        data: [],
    };
    // The segment's first `start + n` bytes (header and captured payload) follow the event,
    // copied from wherever the packet keeps them (its pages too).
    let flags = BPF_F_CURRENT_CPU | (u64::from(start + n) << 32);
    let ret = unsafe {
        generated::bpf_skb_output(
            skb as *mut _,
            &raw const SEGMENTS as *mut _,
            flags,
            &raw mut event as *mut _,
            size_of::<SegmentEvent>() as u64,
        )
    };
    if ret != 0 {
        lost(LostStage::AuthRingBuf);
    }
    Some(())
}

/// `len` response bytes that are not captured (their length keeps the stream's positions).
#[inline(always)]
fn skipped(sk: u64, info: &SockInfo, len: u32) {
    if let Some(entry) = data_event::<0>(sk, info, Direction::Response, info.cgroup_id, len) {
        entry.submit(wakeup_flags());
    }
}

/// A `DataEvent` with room for `N` captured bytes reserved on `AUTH_EVENTS`, its header filled
/// in; the caller fills in `data` and `captured`, and submits it.
#[inline(always)]
fn data_event<const N: usize>(
    sk: u64,
    info: &SockInfo,
    direction: Direction,
    cgroup_id: u64,
    len: u32,
) -> Option<RingBufEntry<DataEvent<N>>> {
    let Some(mut entry) = AUTH_EVENTS.reserve::<DataEvent<N>>(0) else {
        lost(LostStage::AuthRingBuf);
        return None;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).kind = EventKind::AuthData as u32;
        (*ev).direction = direction as u32;
        (*ev).sock = sk;
        (*ev).cgroup_id = cgroup_id;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).endpoint = info.endpoint;
        (*ev).tgid = info.tgid;
        (*ev).len = len;
        (*ev).captured = 0;
    }
    Some(entry)
}

/// Room for captured bytes in the short records: a 512-byte `DataEvent`.
const SHORT_CAPTURE: usize = 512 - DATA_HEADER;

/// Sends the event of `len` bytes moved on `sk` with the first `want` of them (at most
/// `DATA_CAPTURE`), which `copy(dst, n)` copies in (a copy helper's return: 0 when it copied;
/// else none counts as captured). A ring record's size is fixed when it is reserved: those that
/// fit go in a 512-byte record, the rest in a full one, so that a burst of small requests fills
/// the 1 MB ring only after ~2,000 of them (256 full ones).
#[inline(always)]
pub(crate) fn emit_captured(
    sk: u64,
    info: &SockInfo,
    direction: Direction,
    cgroup_id: u64,
    len: u32,
    want: u32,
    copy: impl FnOnce(*mut u8, u32) -> i64,
) {
    if want <= SHORT_CAPTURE as u32 {
        emit_in::<SHORT_CAPTURE>(sk, info, direction, cgroup_id, len, want, copy);
    } else {
        emit_in::<DATA_CAPTURE>(sk, info, direction, cgroup_id, len, want, copy);
    }
}

#[inline(always)]
fn emit_in<const N: usize>(
    sk: u64,
    info: &SockInfo,
    direction: Direction,
    cgroup_id: u64,
    len: u32,
    want: u32,
    copy: impl FnOnce(*mut u8, u32) -> i64,
) {
    let Some(mut entry) = data_event::<N>(sk, info, direction, cgroup_id, len) else {
        return;
    };
    let n = at_most(want, N as u32);
    let ev = entry.as_mut_ptr();
    let ret = copy(unsafe { (*ev).data.as_mut_ptr() }, n);
    unsafe { (*ev).captured = if ret == 0 { n } else { 0 } };
    entry.submit(wakeup_flags());
}

/// Waking the reader costs an interrupt (an IPI, a VM exit under a hypervisor): several
/// microseconds per event. The agent drains this ring on a short timer anyway, so events go out
/// without a wakeup until the ring is half full.
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    if AUTH_EVENTS.query(BPF_RB_AVAIL_DATA as u64) > u64::from(AUTH_EVENTS_BYTE_SIZE / 2) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn emit_close(sk: u64, info: &SockInfo) {
    if let Some(entry) = data_event::<0>(sk, info, Direction::Close, info.cgroup_id, 0) {
        entry.submit(wakeup_flags());
    }
}
