//! Types shared by the kernel programs and the agent, one module per sensor (`file`, `auth`), plus
//! what every sensor shares: the event ring, its header and the drop counters.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the layout byte for
//! byte; the size asserts catch any implicit padding. The `user` feature adds what userspace needs
//! beside each type: `aya::Pod` impls and decoders that check lengths and kinds.
//!
//! Map names: the kernel side names each map after its static (`#[map]` without a name), and
//! userspace takes maps by the constants in the `maps` modules; the agent's unit tests check that
//! the built object has every one of them.
#![cfg_attr(not(test), no_std)]

// The `user` side allocates (a received segment is rewritten as a `DataEvent` record).
#[cfg(feature = "user")]
extern crate alloc;

pub mod auth;
pub mod file;

/// Maps shared by every sensor.
pub mod maps {
    /// Ring buffer of events, each starting with an `EventKind`.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of drop counters, indexed by `LostStage`.
    pub const LOST: &str = "LOST";
    /// One `Control`: which attached file programs count, and which process is the agent.
    /// Written by userspace only.
    pub const CONTROL: &str = "CONTROL";
}

/// Global variables the loader fills in before the programs are verified.
pub mod globals {
    /// This object's token (`u64`): its file programs count only while `Control::active_links`
    /// holds it, so that two attached sets (an agent's and the pinned set of the one before it)
    /// never both count.
    pub const LINKS_TOKEN: &str = "LINKS_TOKEN";
}

/// What userspace tells every program, in `CONTROL[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The `LINKS_TOKEN` of the object whose file programs count; 0: none yet.
    pub active_links: u64,
    /// The agent's own process id (tgid): its opens of credential files (to parse them) are not
    /// reads. A map value, not a loader global, because pinned programs outlive the agent that
    /// loaded them.
    pub agent_tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Control>() == 16);

/// The layout of the maps an agent pins (see the `file` maps and `CONTROL`, `EVENTS`, `LOST`):
/// their pins live in a directory named after it, so an agent never takes over maps whose keys,
/// values or sizes it reads differently. Bump it with any such change (a unit test of the agent
/// lists the sizes it was set for).
pub const PINNED_LAYOUT: u32 = 2;

/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTE_SIZE: u32 = 256 * 1024;

pub const TASK_COMM_LEN: usize = 16;

/// Indexes of the `LOST` per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostStage {
    /// The ring buffer was full: an event was dropped (the reads behind it are still counted).
    RingBuf = 0,
    /// `READS` was full: the read could not be counted.
    ReadsMap = 1,
    /// `CONNECTS` was full: a connect outcome could not be counted.
    ConnectsMap = 2,
    /// `SOCKS` was full, or `ENDPOINT_SOCKS` refused a socket: an endpoint socket is not followed.
    SocksMap = 3,
    /// `AUTH_EVENTS` or this CPU's `SEGMENTS` buffer was full: bytes of an endpoint socket were
    /// dropped.
    AuthRingBuf = 4,
}
pub const LOST_STAGES: u32 = 5;

/// Kinds of events on the ring buffer; every event starts with one, as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    FirstRead = 1,
    /// `auth::DataEvent`, on `AUTH_EVENTS`.
    AuthData = 2,
    /// `auth::MappedEvent`, on `AUTH_EVENTS`.
    LibraryMapped = 3,
    /// `auth::SegmentEvent`, on `SEGMENTS`.
    AuthSegment = 4,
}

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{decode, DecodeError, Event};
