//! One TCP connection to an auth endpoint: its captured chunks in, classified exchanges out.
//!
//! The protocol is told from the first request bytes (the HTTP/2 client preface, an HTTP/1.x
//! request line, or neither: garbage, then nothing more is parsed), and each direction is then
//! read by [`super::http1`] or [`super::http2`]. Nothing raw outlives the call that classifies
//! it: requests waiting for their response are kept as [`Request`] records (method, path class,
//! auth header presence, body scan state), never as bytes.

use std::fmt;

use super::classify::{operation, BodyScan, EndpointKind, Method, Operation, PathClass};
use super::http1::Http1;
use super::http2::{Http2, PREFACE};

/// Which way a captured chunk went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Response,
}

/// An exchange's HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// A final status, 100 to 599.
    Status(u16),
    /// No response seen (reset, closed, given up, not decodable).
    Unknown,
}

/// "100101102...599": the labels of every status code, three bytes each.
const LABELS: [u8; 1500] = {
    let mut out = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let code = 100 + i;
        out[3 * i] = b'0' + (code / 100) as u8;
        out[3 * i + 1] = b'0' + (code / 10 % 10) as u8;
        out[3 * i + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    out
};

impl Code {
    /// The `code` label value: the three digits, or `unknown`.
    pub fn label(&self) -> &'static str {
        match *self {
            Code::Status(s @ 100..=599) => {
                let i = 3 * usize::from(s - 100);
                std::str::from_utf8(&LABELS[i..i + 3]).unwrap_or("unknown")
            }
            _ => "unknown",
        }
    }

    /// Three ASCII digits from 100 to 599; anything else is unknown.
    pub(super) fn parse(digits: &[u8]) -> Code {
        match digits {
            [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => Code::Status(
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
            ),
            _ => Code::Unknown,
        }
    }
}

/// One classified request and what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub operation: Operation,
    pub code: Code,
    /// The request carried `Authorization`, `X-Vault-Token`, `X-aws-ec2-metadata-token`,
    /// `Metadata-Flavor` or `Metadata` (presence only: values are never read).
    pub auth_header: bool,
    /// Kernel time of the chunk holding the request's first byte (HTTP/1) or its HEADERS frame.
    pub request_ns: u64,
    /// Kernel time of the chunk holding the response's status; `None` without one.
    pub response_ns: Option<u64>,
}

/// A request waiting for its response: what classification needs, and no byte of it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) class: PathClass,
    pub(super) auth: bool,
    pub(super) body: BodyScan,
    pub(super) ns: u64,
}

impl Request {
    pub(super) fn exchange(&self, code: Code, response_ns: Option<u64>) -> Exchange {
        Exchange {
            operation: operation(self.method, self.class, self.auth, self.body.found()),
            code,
            auth_header: self.auth,
            request_ns: self.ns,
            response_ns,
        }
    }
}

/// The first request bytes, while they may still be either protocol (at most the preface's 24).
struct Detect {
    buf: [u8; 24],
    len: usize,
    ns: u64,
}

enum Protocol {
    Detect(Detect),
    Http1(Http1),
    Http2(Box<Http2>),
    /// Neither protocol, or lost beyond recovery: nothing more is parsed.
    Garbage,
}

/// One socket to an auth endpoint. Memory is bounded: at most 32 pipelined HTTP/1 requests or
/// 100 open HTTP/2 streams wait for a response (beyond, the oldest comes out as unknown), and
/// each buffer has a fixed limit.
pub struct Connection {
    kind: EndpointKind,
    protocol: Protocol,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Connection");
        d.field("kind", &self.kind);
        match &self.protocol {
            Protocol::Detect(det) => d.field("detecting", &det.len),
            Protocol::Http1(h) => d.field("http1", h),
            Protocol::Http2(h) => d.field("http2", h),
            Protocol::Garbage => d.field("garbage", &true),
        };
        d.finish()
    }
}

enum Verdict {
    Undecided,
    Http1,
    Http2,
    Garbage,
}

/// Longest method token taken for HTTP/1.
const MAX_METHOD: usize = 16;

fn detect(bytes: &[u8]) -> Verdict {
    if PREFACE.starts_with(bytes) {
        return if bytes.len() == PREFACE.len() {
            Verdict::Http2
        } else {
            Verdict::Undecided
        };
    }
    let token = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(token) {
        _ if token > MAX_METHOD => Verdict::Garbage,
        None => Verdict::Undecided,
        Some(b' ') if token > 0 => Verdict::Http1,
        Some(_) => Verdict::Garbage,
    }
}

impl Connection {
    pub fn new(kind: EndpointKind) -> Self {
        Connection {
            kind,
            protocol: Protocol::Detect(Detect {
                buf: [0; 24],
                len: 0,
                ns: 0,
            }),
        }
    }

    /// Feeds one captured chunk: `captured` is its first bytes, `total_len` its true length (the
    /// rest was not captured and is skipped). Returns the exchanges it completed: a response
    /// matched to its request, or a request given up on.
    pub fn feed(
        &mut self,
        dir: Direction,
        ns: u64,
        captured: &[u8],
        total_len: usize,
    ) -> Vec<Exchange> {
        let mut out = Vec::new();
        let lost = total_len.saturating_sub(captured.len());
        match &mut self.protocol {
            Protocol::Detect(_) => {
                if dir == Direction::Request {
                    self.start(ns, captured, lost, &mut out);
                }
            }
            Protocol::Http1(h) => {
                h.feed(dir, ns, captured, lost, &mut out);
                if h.is_dead() {
                    self.protocol = Protocol::Garbage;
                }
            }
            Protocol::Http2(h) => h.feed(dir, ns, captured, lost, &mut out),
            Protocol::Garbage => {}
        }
        out
    }

    /// The connection closed: requests still waiting come out with [`Code::Unknown`].
    pub fn close(self) -> Vec<Exchange> {
        let mut out = Vec::new();
        match self.protocol {
            Protocol::Http1(h) => h.close(&mut out),
            Protocol::Http2(h) => h.close(&mut out),
            Protocol::Detect(_) | Protocol::Garbage => {}
        }
        out
    }

    /// Request bytes while the protocol is not known yet.
    fn start(&mut self, ns: u64, captured: &[u8], lost: usize, out: &mut Vec<Exchange>) {
        let Protocol::Detect(det) = &mut self.protocol else {
            return;
        };
        let before = det.len;
        let take = captured.len().min(det.buf.len() - before);
        det.buf[before..before + take].copy_from_slice(&captured[..take]);
        det.len += take;
        if before == 0 {
            det.ns = ns;
        }
        let (earlier, earlier_ns) = (det.buf, det.ns);
        let mut protocol = match detect(&det.buf[..det.len]) {
            Verdict::Undecided if lost == 0 => return,
            Verdict::Undecided | Verdict::Garbage => {
                self.protocol = Protocol::Garbage;
                return;
            }
            Verdict::Http1 => Protocol::Http1(Http1::new(self.kind)),
            Verdict::Http2 => Protocol::Http2(Box::new(Http2::new(self.kind))),
        };
        // Earlier chunks were captured whole; replay them, then this one.
        match &mut protocol {
            Protocol::Http1(h) => {
                if before > 0 {
                    h.feed(Direction::Request, earlier_ns, &earlier[..before], 0, out);
                }
                h.feed(Direction::Request, ns, captured, lost, out);
            }
            Protocol::Http2(h) => {
                if before > 0 {
                    h.feed(Direction::Request, earlier_ns, &earlier[..before], 0, out);
                }
                h.feed(Direction::Request, ns, captured, lost, out);
            }
            _ => {}
        }
        self.protocol = protocol;
        if matches!(&self.protocol, Protocol::Http1(h) if h.is_dead()) {
            self.protocol = Protocol::Garbage;
        }
    }
}
