//! HTTP/1.x, one streaming reader per direction: request and status lines, the few headers that
//! matter (auth header names, `Content-Length`, `Transfer-Encoding`), bodies skipped by length or
//! by chunk so that the next pipelined message is found. Responses match requests in order.
//!
//! Buffering is bounded and holds no header value: only the first line (up to [`LINE_MAX`]), a
//! header name, or the value of `Content-Length`/`Transfer-Encoding` waits for the next chunk;
//! every other header line is skipped as it streams by.
//!
//! Bytes that were not captured are skipped: inside a body of known length nothing is lost;
//! inside a head, or past the end of the message, the message is taken to end with the chunk and
//! the next chunk is expected to start a message (writes and reads usually align with messages).
//! A chunk that then does not start one is skipped; [`MAX_FAILURES`] in a row and the connection
//! is given up.

use std::collections::VecDeque;
use std::fmt;

use super::classify::BodyScan;
use super::classify::{classify_path, is_auth_header, EndpointKind, Method, PathClass};
use super::wire::{Code, Direction, Exchange, Request};

/// Longest first line buffered; a longer one is given up (its path is unknown).
pub(super) const LINE_MAX: usize = 8192;
/// Longest header name or interesting header value buffered.
const SHORT_MAX: usize = 64;
/// Requests waiting for a response; beyond, the oldest comes out unknown.
const MAX_PIPELINE: usize = 32;
/// Chunks in a row that start no message before the connection is given up.
const MAX_FAILURES: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hdr {
    ContentLength,
    TransferEncoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    FirstLine,
    Name,
    Value(Hdr),
    SkipLine,
    Body(u64),
    ChunkSize(u64),
    ChunkExt(u64),
    ChunkData(u64),
    ChunkEnd,
    /// Trailer lines; `true` while the current line is empty so far.
    Trailer(bool),
    /// The body runs until the connection closes.
    UntilClose,
    /// Skip to the next chunk, which should start a message.
    Resync,
    Dead,
}

/// What the head of a message said about its body and auth.
#[derive(Clone, Copy, Debug, Default)]
struct Head {
    content_length: Option<u64>,
    bad_length: bool,
    chunked: bool,
    auth: bool,
}

/// How the body after a head is delimited.
enum BodyLen {
    Fixed(u64),
    Chunked,
    UntilClose,
    /// An interim (1xx) response: another head follows.
    Again,
    /// 101: the connection speaks something else now.
    Upgrade,
}

/// The side of the exchange a reader's messages are.
trait Sink {
    /// A message's first line (`overflow`: only its first [`LINE_MAX`] bytes); false if it is
    /// not one.
    fn first_line(&mut self, line: &[u8], overflow: bool, ns: u64) -> bool;
    fn head_done(&mut self, head: &Head) -> BodyLen;
    fn body(&mut self, bytes: &[u8]);
    fn body_lost(&mut self, n: usize);
    /// The head was cut by lost bytes: the message ends with the chunk.
    fn cut(&mut self);
    /// A message started in lost bytes: keeps requests and responses in step.
    fn lost_message(&mut self, ns: u64);
}

/// One direction's reader.
struct Reader {
    state: State,
    /// The first line, a header name or an interesting value; cleared once parsed.
    line: Vec<u8>,
    overflow: bool,
    head: Head,
    ns: u64,
    failures: u32,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("state", &self.state)
            .field("buffered", &self.line.len())
            .finish_non_exhaustive()
    }
}

fn find(bytes: &[u8], what: u8) -> Option<usize> {
    bytes.iter().position(|&b| b == what)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

impl Reader {
    fn new() -> Self {
        Reader {
            state: State::Idle,
            line: Vec::new(),
            overflow: false,
            head: Head::default(),
            ns: 0,
            failures: 0,
        }
    }

    fn clear_line(&mut self) {
        self.line.fill(0);
        self.line.clear();
        self.overflow = false;
    }

    /// Appends to the line buffer up to `max` bytes.
    fn push_line(&mut self, bytes: &[u8], max: usize) {
        let room = max.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.overflow |= bytes.len() > room;
    }

    fn resync(&mut self) {
        self.clear_line();
        self.state = State::Resync;
    }

    fn feed(&mut self, ns: u64, captured: &[u8], lost: usize, sink: &mut impl Sink) {
        if self.state == State::Resync {
            self.state = State::Idle;
        }
        let mut bytes = captured;
        while !bytes.is_empty() {
            let used = self.step(bytes, ns, sink);
            bytes = &bytes[used..];
            if matches!(self.state, State::Resync | State::Dead | State::UntilClose) {
                break;
            }
        }
        if self.state == State::Resync {
            self.failures += 1;
            if self.failures >= MAX_FAILURES {
                self.state = State::Dead;
            }
        }
        if lost > 0 {
            self.lose(lost, ns, sink);
        }
    }

    /// Consumes a prefix of `bytes` in the current state; returns its length.
    fn step(&mut self, bytes: &[u8], ns: u64, sink: &mut impl Sink) -> usize {
        match self.state {
            State::Idle => {
                let skip = bytes
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                if skip < bytes.len() {
                    self.ns = ns;
                    self.head = Head::default();
                    self.state = State::FirstLine;
                }
                skip
            }
            State::FirstLine => self.first_line(bytes, sink),
            State::Name => self.name(bytes, sink),
            State::Value(h) => self.value(bytes, h),
            State::SkipLine => match find(bytes, b'\n') {
                Some(i) => {
                    self.state = State::Name;
                    i + 1
                }
                None => bytes.len(),
            },
            State::Body(_)
            | State::ChunkSize(_)
            | State::ChunkExt(_)
            | State::ChunkData(_)
            | State::ChunkEnd
            | State::Trailer(_) => self.body(bytes, sink),
            State::UntilClose | State::Resync | State::Dead => bytes.len(),
        }
    }

    fn first_line(&mut self, bytes: &[u8], sink: &mut impl Sink) -> usize {
        let end = find(bytes, b'\n');
        self.push_line(&bytes[..end.unwrap_or(bytes.len())], LINE_MAX);
        if end.is_none() && !self.overflow {
            return bytes.len();
        }
        let ok = sink.first_line(trim(&self.line), self.overflow, self.ns);
        let overflow = self.overflow;
        self.clear_line();
        if !ok {
            self.resync();
            return end.map_or(bytes.len(), |i| i + 1);
        }
        match end {
            Some(i) => {
                self.state = State::Name;
                i + 1
            }
            None => {
                debug_assert!(overflow);
                self.state = State::SkipLine;
                bytes.len()
            }
        }
    }

    fn name(&mut self, bytes: &[u8], sink: &mut impl Sink) -> usize {
        let Some(i) = bytes.iter().position(|&b| b == b':' || b == b'\n') else {
            self.push_line(bytes, SHORT_MAX);
            return bytes.len();
        };
        self.push_line(&bytes[..i], SHORT_MAX);
        if bytes[i] == b'\n' {
            let empty = trim(&self.line).is_empty();
            self.clear_line();
            if empty {
                self.end_head(sink);
            }
            // A line without a colon is ignored.
            return i + 1;
        }
        let name = trim(&self.line);
        self.state = if self.overflow {
            State::SkipLine
        } else if name.eq_ignore_ascii_case(b"content-length") {
            State::Value(Hdr::ContentLength)
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            State::Value(Hdr::TransferEncoding)
        } else {
            self.head.auth |= is_auth_header(name);
            State::SkipLine
        };
        self.clear_line();
        i + 1
    }

    fn value(&mut self, bytes: &[u8], h: Hdr) -> usize {
        let end = find(bytes, b'\n');
        self.push_line(&bytes[..end.unwrap_or(bytes.len())], SHORT_MAX);
        let Some(i) = end else {
            return bytes.len();
        };
        let v = trim(&self.line);
        match h {
            Hdr::ContentLength => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match (n, self.head.content_length) {
                    (Some(n), None) => self.head.content_length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => self.head.bad_length = true,
                }
            }
            Hdr::TransferEncoding => {
                let last = v.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
                self.head.chunked = last.eq_ignore_ascii_case(b"chunked") && !self.overflow;
            }
        }
        self.clear_line();
        self.state = State::Name;
        i + 1
    }

    fn end_head(&mut self, sink: &mut impl Sink) {
        self.failures = 0;
        self.state = match sink.head_done(&self.head) {
            BodyLen::Fixed(0) => State::Idle,
            BodyLen::Fixed(n) => State::Body(n),
            BodyLen::Chunked => State::ChunkSize(0),
            BodyLen::UntilClose => State::UntilClose,
            BodyLen::Again => State::Idle,
            BodyLen::Upgrade => State::Dead,
        };
    }

    /// Body bytes: fixed length or chunked.
    fn body(&mut self, bytes: &[u8], sink: &mut impl Sink) -> usize {
        match self.state {
            State::Body(left) | State::ChunkData(left) => {
                let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                sink.body(&bytes[..n]);
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Body(_), 0) => State::Idle,
                    (State::Body(_), _) => State::Body(left),
                    (_, 0) => State::ChunkEnd,
                    _ => State::ChunkData(left),
                };
                n
            }
            State::ChunkSize(size) => self.chunk_size(bytes, size),
            State::ChunkExt(_) | State::ChunkEnd => match find(bytes, b'\n') {
                Some(i) => {
                    self.state = match self.state {
                        State::ChunkExt(0) => State::Trailer(true),
                        State::ChunkExt(size) => State::ChunkData(size),
                        _ => State::ChunkSize(0),
                    };
                    i + 1
                }
                None => bytes.len(),
            },
            State::Trailer(mut empty) => {
                for (i, &b) in bytes.iter().enumerate() {
                    match b {
                        b'\n' if empty => {
                            self.state = State::Idle;
                            return i + 1;
                        }
                        b'\n' => empty = true,
                        b'\r' => {}
                        _ => empty = false,
                    }
                }
                self.state = State::Trailer(empty);
                bytes.len()
            }
            _ => bytes.len(),
        }
    }

    fn chunk_size(&mut self, bytes: &[u8], mut size: u64) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                b'\r' | b';' | b' ' | b'\t' | b'\n' => {
                    self.state = State::ChunkExt(size);
                    // The newline itself ends the size line.
                    return if b == b'\n' { i } else { i + 1 };
                }
                _ => {
                    self.resync();
                    return i;
                }
            };
            if size >> 56 != 0 {
                self.resync();
                return i;
            }
            size = size * 16 + u64::from(digit);
        }
        self.state = State::ChunkSize(size);
        bytes.len()
    }

    /// `n` bytes after the captured ones were not captured.
    fn lose(&mut self, n: usize, ns: u64, sink: &mut impl Sink) {
        let n64 = n as u64;
        match self.state {
            State::Body(left) if n64 > left => {
                sink.body_lost(usize::try_from(left).unwrap_or(usize::MAX));
                sink.lost_message(ns);
                self.resync();
            }
            State::Idle => {
                sink.lost_message(ns);
                self.resync();
            }
            State::Body(left) => {
                sink.body_lost(n);
                self.state = if n64 == left {
                    State::Idle
                } else {
                    State::Body(left - n64)
                };
            }
            State::ChunkData(left) if n64 < left => {
                sink.body_lost(n);
                self.state = State::ChunkData(left - n64);
            }
            State::UntilClose | State::Dead => {}
            State::FirstLine | State::Name | State::Value(_) | State::SkipLine => {
                sink.cut();
                self.resync();
            }
            _ => self.resync(),
        }
    }
}

/// The request side: heads become [`Request`] records in the queue.
struct Requests<'a> {
    kind: EndpointKind,
    queue: &'a mut VecDeque<(u64, Request)>,
    next_seq: &'a mut u64,
    /// The request whose head is being read.
    current: &'a mut Option<Request>,
    out: &'a mut Vec<Exchange>,
}

impl Requests<'_> {
    fn push(&mut self, request: Request) {
        if self.queue.len() >= MAX_PIPELINE {
            if let Some((_, old)) = self.queue.pop_front() {
                self.out.push(old.exchange(Code::Unknown, None));
            }
        }
        *self.next_seq += 1;
        self.queue.push_back((*self.next_seq, request));
    }

    /// The request whose body is being read, unless its response already took it.
    fn body_owner(&mut self) -> Option<&mut Request> {
        let seq = *self.next_seq;
        match self.queue.back_mut() {
            Some((s, r)) if *s == seq => Some(r),
            _ => None,
        }
    }
}

/// `METHOD SP target SP HTTP/1.x`, or the first [`LINE_MAX`] bytes of it.
fn request_line(line: &[u8], overflow: bool) -> Option<(Method, Option<&[u8]>)> {
    let sp = find(line, b' ')?;
    let method = &line[..sp];
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    if overflow {
        return Some((Method::parse(method), None));
    }
    let rest = &line[sp + 1..];
    let sp2 = rest.iter().rposition(|&b| b == b' ')?;
    let version = &rest[sp2 + 1..];
    if !(version == b"HTTP/1.1" || version == b"HTTP/1.0") || sp2 == 0 {
        return None;
    }
    Some((Method::parse(method), Some(origin_form(&rest[..sp2]))))
}

/// The path and query of a target in absolute form (`http://host/path`, as sent to proxies).
fn origin_form(target: &[u8]) -> &[u8] {
    let Some(after) = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    else {
        return target;
    };
    let authority = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    match &after[authority..] {
        [] => b"/",
        path => path,
    }
}

impl Sink for Requests<'_> {
    fn first_line(&mut self, line: &[u8], overflow: bool, ns: u64) -> bool {
        let Some((method, target)) = request_line(line, overflow) else {
            return false;
        };
        let class = target.map_or(PathClass::Unknown, |t| classify_path(self.kind, t));
        *self.current = Some(Request {
            method,
            class,
            auth: false,
            body: BodyScan::default(),
            ns,
        });
        true
    }

    fn head_done(&mut self, head: &Head) -> BodyLen {
        if let Some(mut request) = self.current.take() {
            request.auth = head.auth;
            self.push(request);
        }
        if head.chunked {
            BodyLen::Chunked
        } else {
            BodyLen::Fixed(head.content_length.unwrap_or(0))
        }
    }

    fn body(&mut self, bytes: &[u8]) {
        if self.kind == EndpointKind::AwsSts {
            if let Some(r) = self.body_owner() {
                r.body.feed(bytes);
            }
        }
    }

    fn body_lost(&mut self, n: usize) {
        if let Some(r) = self.body_owner() {
            r.body.skip(n);
        }
    }

    fn cut(&mut self) {
        if let Some(request) = self.current.take() {
            self.push(request);
        }
    }

    fn lost_message(&mut self, ns: u64) {
        self.push(Request {
            method: Method::Other,
            class: PathClass::Unknown,
            auth: false,
            body: BodyScan::default(),
            ns,
        });
    }
}

/// The response side: status lines complete the oldest waiting request.
struct Responses<'a> {
    queue: &'a mut VecDeque<(u64, Request)>,
    /// The status of the response whose head is being read, and when it came.
    current: &'a mut Option<(Code, u64)>,
    out: &'a mut Vec<Exchange>,
}

/// `HTTP/1.x NNN[ reason]`.
fn status_line(line: &[u8]) -> Option<Code> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    match rest {
        [b'0' | b'1', b' ', d @ ..] if d.len() == 3 || d.get(3) == Some(&b' ') => {
            Some(Code::parse(&d[..3]))
        }
        _ => None,
    }
}

impl Sink for Responses<'_> {
    fn first_line(&mut self, line: &[u8], _overflow: bool, ns: u64) -> bool {
        match status_line(line) {
            Some(code) => {
                *self.current = Some((code, ns));
                true
            }
            None => false,
        }
    }

    fn head_done(&mut self, head: &Head) -> BodyLen {
        let Some((code, ns)) = self.current.take() else {
            return BodyLen::UntilClose;
        };
        let status = match code {
            Code::Status(s) => s,
            Code::Unknown => 0,
        };
        if (100..200).contains(&status) && status != 101 {
            return BodyLen::Again;
        }
        let request = self.queue.pop_front().map(|(_, r)| r);
        if let Some(r) = &request {
            self.out.push(r.exchange(code, Some(ns)));
        }
        let head_request = request.is_some_and(|r| r.method == Method::Head);
        if status == 101 {
            BodyLen::Upgrade
        } else if head_request || status == 204 || status == 304 {
            BodyLen::Fixed(0)
        } else if head.chunked {
            BodyLen::Chunked
        } else if let (Some(n), false) = (head.content_length, head.bad_length) {
            BodyLen::Fixed(n)
        } else {
            BodyLen::UntilClose
        }
    }

    fn body(&mut self, _bytes: &[u8]) {}

    fn body_lost(&mut self, _n: usize) {}

    fn cut(&mut self) {
        if let Some((code, ns)) = self.current.take() {
            if let Some((_, r)) = self.queue.pop_front() {
                self.out.push(r.exchange(code, Some(ns)));
            }
        }
    }

    fn lost_message(&mut self, _ns: u64) {
        if let Some((_, r)) = self.queue.pop_front() {
            self.out.push(r.exchange(Code::Unknown, None));
        }
    }
}

/// Both directions of an HTTP/1 connection.
pub(super) struct Http1 {
    kind: EndpointKind,
    requests: Reader,
    responses: Reader,
    queue: VecDeque<(u64, Request)>,
    next_seq: u64,
    request: Option<Request>,
    status: Option<(Code, u64)>,
}

impl fmt::Debug for Http1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1")
            .field("requests", &self.requests)
            .field("responses", &self.responses)
            .field("waiting", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Http1 {
    pub(super) fn new(kind: EndpointKind) -> Self {
        Http1 {
            kind,
            requests: Reader::new(),
            responses: Reader::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            request: None,
            status: None,
        }
    }

    pub(super) fn is_dead(&self) -> bool {
        self.requests.state == State::Dead || self.responses.state == State::Dead
    }

    pub(super) fn feed(
        &mut self,
        dir: Direction,
        ns: u64,
        captured: &[u8],
        lost: usize,
        out: &mut Vec<Exchange>,
    ) {
        match dir {
            Direction::Request => {
                let mut sink = Requests {
                    kind: self.kind,
                    queue: &mut self.queue,
                    next_seq: &mut self.next_seq,
                    current: &mut self.request,
                    out,
                };
                self.requests.feed(ns, captured, lost, &mut sink);
            }
            Direction::Response => {
                let mut sink = Responses {
                    queue: &mut self.queue,
                    current: &mut self.status,
                    out,
                };
                self.responses.feed(ns, captured, lost, &mut sink);
            }
        }
        if self.is_dead() {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<Exchange>) {
        let pending = self.queue.drain(..).map(|(_, r)| r);
        out.extend(
            pending
                .chain(self.request.take())
                .map(|r| r.exchange(Code::Unknown, None)),
        );
    }

    pub(super) fn close(mut self, out: &mut Vec<Exchange>) {
        self.flush(out);
    }
}
