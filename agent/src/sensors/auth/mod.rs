//! Outbound authentication calls: the endpoint catalog, connect outcomes and HTTP status over
//! plaintext and TLS. Its hooks (`sock/inet_sock_set_state`, syscall tracepoints, OpenSSL
//! uprobes) and stages go here, beside `file`, with their shared types in
//! `ebpf/common/src/auth.rs` and their programs in `ebpf/src/auth.rs`.
//!
//! Built so far: the protocol decoders, pure code that turns the plaintext captured on one socket
//! into classified exchanges, importing nothing else of the crate.
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
