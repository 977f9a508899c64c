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

pub mod auth;
pub mod file;

/// Maps shared by every sensor.
pub mod maps {
    /// Ring buffer of events, each starting with an `EventKind`.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of drop counters, indexed by `LostStage`.
    pub const LOST: &str = "LOST";
}

/// Global variables the loader fills in before the programs are verified.
pub mod globals {
    /// The agent's own process id (tgid): its opens of credential files (to parse them) are not reads.
    pub const AGENT_TGID: &str = "AGENT_TGID";
}

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
    /// `SOCKS` or `FDS` was full: an endpoint socket is not followed.
    SocksMap = 3,
    /// `AUTH_EVENTS` was full: bytes of an endpoint socket were dropped.
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
}

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{decode, DecodeError, Event};
