//! The auth-call sensor: which sockets go to catalogued auth endpoints (`ENDPOINTS`), how their
//! connects end (exact counters in `CONNECTS`), and the bytes written to and read from them
//! (`DataEvent`s on their own ring, `AUTH_EVENTS`; received segments as `SegmentEvent`s on the
//! per-CPU buffers of `SEGMENTS`).
use core::mem::size_of;

/// The auth-call sensor's maps.
pub mod maps {
    /// LPM trie `EndpointKey -> Endpoint`: the catalog as addresses. Written by userspace only.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Per-CPU `ConnectKey -> u64`: connects to endpoints by (cgroup, endpoint, result), counted exactly.
    pub const CONNECTS: &str = "CONNECTS";
    /// `u64` (the `struct sock *`) `-> SockInfo`: the endpoint sockets alive now.
    pub const SOCKS: &str = "SOCKS";
    /// Sock hash `u64` (the `struct sock *`) `->` socket: the established endpoint sockets,
    /// whose sends run the `sk_msg` program (no other socket's do).
    pub const ENDPOINT_SOCKS: &str = "ENDPOINT_SOCKS";
    /// Array of `PLAINTEXT_PORTS_WORDS` `u32`: bit `port` is set when a plaintext endpoint listens
    /// on that port. Segments from any other port cost the receive hook one array load.
    pub const PLAINTEXT_PORTS: &str = "PLAINTEXT_PORTS";
    /// LRU `u64` pid_tgid `-> TlsCall`: the TLS call in progress on this thread, or its last.
    pub const TLS_CALLS: &str = "TLS_CALLS";
    /// LRU `TlsKey -> u64` (the `struct sock *`): TLS connections of endpoint sockets.
    pub const TLS_SOCKS: &str = "TLS_SOCKS";
    /// Ring buffer of `DataEvent`s (apart from `EVENTS`, so that a chatty endpoint cannot crowd
    /// out first reads of credentials).
    pub const AUTH_EVENTS: &str = "AUTH_EVENTS";
    /// Perf event array, one buffer per CPU: the TCP segments a plaintext endpoint socket
    /// receives, as `SegmentEvent`s (`bpf_skb_output`, the one helper of a tracing program that
    /// copies a packet's bytes wherever they lie: a ring buffer cannot take them).
    pub const SEGMENTS: &str = "SEGMENTS";
}

/// Pages of each CPU's `SEGMENTS` buffer (a power of two): 64 KB, 16 full captures between two
/// drains of the agent.
pub const SEGMENTS_PAGES: usize = 16;

pub const ENDPOINTS_MAX_ENTRIES: u32 = 1024;
pub const CONNECTS_MAX_ENTRIES: u32 = 16_384;
pub const SOCKS_MAX_ENTRIES: u32 = 16_384;
pub const AUTH_EVENTS_BYTE_SIZE: u32 = 1024 * 1024;
/// One bit per TCP port.
pub const PLAINTEXT_PORTS_WORDS: u32 = 65_536 / 32;

/// Bytes of one write or read kept in a `DataEvent`; the rest is skipped (its length is known).
pub const DATA_CAPTURE: usize = 4000;

/// `TCP_ESTABLISHED`, `TCP_SYN_SENT`, `TCP_CLOSE` from `include/net/tcp_states.h`.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
/// `AF_INET`, `AF_INET6`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Key of the `ENDPOINTS` LPM trie, after the trie's `u32` prefix length: the port (network
/// order) then the address as IPv6 (IPv4 mapped to `::ffff:a.b.c.d`). A prefix length of
/// `16 + n` matches the port exactly and the first `n` bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
    /// Never compared (beyond every prefix length), always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<EndpointKey>() == 20);

impl EndpointKey {
    /// Bits of the key the trie compares: all of the port and all of the address.
    pub const FULL_PREFIX: u32 = 16 + 128;

    pub const fn v4(addr: [u8; 4], port_be: [u8; 2]) -> Self {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12] = addr[0];
        a[13] = addr[1];
        a[14] = addr[2];
        a[15] = addr[3];
        Self {
            port: port_be,
            addr: a,
            _pad: [0; 2],
        }
    }
}

/// What a catalogued address is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The catalog's index of the endpoint (its name lives in userspace).
    pub id: u32,
    /// `ENDPOINT_*` flags.
    pub flags: u32,
}
const _: () = assert!(size_of::<Endpoint>() == 8);

/// Capture the bytes of plaintext I/O on this endpoint's sockets (HTTP without TLS).
pub const ENDPOINT_PLAINTEXT: u32 = 1;

/// How a connect ended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    Established = 0,
    /// The peer answered the SYN with a reset: nothing listens there.
    Refused = 1,
    /// No answer, an ICMP error, or the connect was given up.
    Failed = 2,
}

/// Key of the connect counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    /// The connecting process's cgroup v2 id.
    pub cgroup_id: u64,
    pub endpoint: u32,
    /// A `ConnectResult`.
    pub result: u32,
}
const _: () = assert!(size_of::<ConnectKey>() == 16);

/// An endpoint socket, from its `SYN_SENT` to its `CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub cgroup_id: u64,
    pub endpoint: u32,
    pub flags: u32,
    pub tgid: u32,
    /// Plaintext sockets: the TCP sequence number of the next response byte not yet sent to
    /// userspace (set when the connection is established), so that a retransmitted segment is
    /// not captured twice and a gap is reported as bytes not captured.
    pub rcv_next: u32,
}
const _: () = assert!(size_of::<SockInfo>() == 24);

/// `SockInfo::flags`: the connect was answered with a reset.
pub const SOCK_RESET: u32 = 1;
/// `SockInfo::flags`: the connect's outcome is counted.
pub const SOCK_COUNTED: u32 = 2;
/// `SockInfo::flags`: bytes of this socket went to userspace, so its close does too.
pub const SOCK_DATA: u32 = 4;
/// `SockInfo::flags`: a TLS connection object is tied to this socket.
pub const SOCK_TLS_BOUND: u32 = 16;
/// `SockInfo::flags`: the endpoint speaks plaintext: the bytes on the wire are the protocol. (Else
/// they are TLS records, and the plaintext comes from the TLS library's uprobes.)
pub const SOCK_PLAINTEXT: u32 = 8;
/// `SockInfo::flags`: `SockInfo::rcv_next` is known.
pub const SOCK_SEQ: u32 = 32;

/// A TLS connection object (`SSL *`) of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}
const _: () = assert!(size_of::<TlsKey>() == 16);

/// A call of `SSL_write`/`SSL_read` (or their `_ex` forms) between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *written` / `*readbytes` of the `_ex` forms, else 0.
    pub out: u64,
    /// A `Direction`.
    pub direction: u32,
    /// 1 between the call's entry and its return; 0 after (the thread's last call).
    pub active: u32,
}
const _: () = assert!(size_of::<TlsCall>() == 32);

/// Which way bytes went, seen from the client.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Written by the client: a request.
    Request = 0,
    /// Read by the client: a response.
    Response = 1,
    /// The socket closed: no bytes, the connection's end.
    Close = 2,
}

/// Bytes written to or read from an endpoint socket, or its close: `N` is the room for captured
/// bytes (a segment's header alone is a `DataEvent<0>`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataEvent<const N: usize = DATA_CAPTURE> {
    /// Always `EventKind::AuthData as u32`.
    pub kind: u32,
    /// A `Direction`.
    pub direction: u32,
    /// The socket (`struct sock *`), which names the connection while it lives.
    pub sock: u64,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub endpoint: u32,
    pub tgid: u32,
    /// Bytes moved: one send, one received TCP segment, or one TLS read or write.
    pub len: u32,
    /// Bytes of them in `data` (at most `N`).
    pub captured: u32,
    pub data: [u8; N],
}
const _: () = assert!(size_of::<DataEvent>() == 48 + DATA_CAPTURE && DATA_HEADER == 48);
/// The fixed part of a `DataEvent`: where its `data` starts.
pub const DATA_HEADER: usize = core::mem::offset_of!(DataEvent, data);

/// A TCP segment a plaintext endpoint socket received, as `bpf_skb_output` writes it to
/// `SEGMENTS`: a `DataEvent`'s header (`kind` `AuthSegment`, `direction` `Response`, `len` the
/// payload's length, `captured` the payload bytes that follow), then the segment from its TCP
/// header on: the header (its length is in its data offset field), then the first `captured`
/// bytes of the payload.
pub type SegmentEvent = DataEvent<0>;
const _: () = assert!(size_of::<SegmentEvent>() == DATA_HEADER);

/// A process mapped a file executable (`mmap` with `PROT_EXEC` and a descriptor): a shared
/// library being loaded, maybe a TLS library the agent has not attached yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedEvent {
    /// Always `EventKind::LibraryMapped as u32`.
    pub kind: u32,
    pub tgid: u32,
}
const _: () = assert!(size_of::<MappedEvent>() == 8);

/// A process's executable mappings within this long of its last `MappedEvent` (on one CPU) send
/// none: a loader's burst is one event. Userspace looks at the process at least
/// `2 * MAPPED_QUIET_NS` after the event, when the burst is over.
pub const MAPPED_QUIET_NS: u64 = 5_000_000;

/// `PROT_EXEC` from `include/uapi/asm-generic/mman-common.h`.
pub const PROT_EXEC: u64 = 4;

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{decode_data, event_time, mapped_tgid, record_len, segment_as_data, Data};
