//! HTTP/2 (RFC 9113): frames of both directions read across chunks, header blocks (HEADERS or
//! PUSH_PROMISE plus CONTINUATION) decoded by [`super::hpack`], streams matched by id.
//!
//! A request stream opens with its request header block and closes with the first final
//! `:status` of its response (an exchange), an RST_STREAM, a GOAWAY that excludes it, or the
//! connection's close (both with [`Code::Unknown`]). DATA is skipped, except the first KiB of an
//! STS request body, scanned for its action (see [`BodyScan`]). SETTINGS_HEADER_TABLE_SIZE of
//! one side limits the other side's header table; SETTINGS_MAX_FRAME_SIZE is used to judge frame
//! headers when resynchronising.
//!
//! Bytes that were not captured inside a frame are skipped (the frame length is known); when the
//! loss reaches past the frame, the frame boundaries are lost: the next chunk that starts with a
//! plausible frame header resumes reading, and the header table of that direction is marked
//! unknown until refilled (see [`super::hpack`]).

use std::fmt;

use super::classify::{BodyScan, EndpointKind, Method, PathClass};
use super::hpack::{Block, Decoder};
use super::wire::{Code, Direction, Exchange, Request};

/// The client connection preface (RFC 9113 3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams waiting for a response; beyond, the oldest comes out unknown.
const MAX_STREAMS: usize = 100;
const DEFAULT_MAX_FRAME: u32 = 16_384;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// The frame being read.
#[derive(Clone, Copy, Debug)]
struct Frame {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
    /// Payload bytes read (or lost) so far.
    pos: u32,
    /// Length of the fixed fields before the content (pad length, priority, promised id).
    head: u32,
    /// Where the content ends (the padding starts); known once the pad length is read.
    end: u32,
    /// Bytes of a fixed-size field being gathered (a SETTINGS entry, GOAWAY's last stream id).
    acc: [u8; 6],
    acc_len: u8,
    /// Part of the frame's fixed fields or content was not captured.
    lossy: bool,
}

impl Frame {
    fn parse(h: &[u8; 9]) -> Frame {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (ty, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let padded = u32::from(flags & PADDED != 0);
        let head = match ty {
            DATA => padded,
            HEADERS => padded + if flags & PRIORITY_FLAG != 0 { 5 } else { 0 },
            PUSH_PROMISE => padded + 4,
            _ => 0,
        };
        let mut frame = Frame {
            len,
            ty,
            flags,
            stream,
            pos: 0,
            head,
            end: len,
            acc: [0; 6],
            acc_len: 0,
            lossy: head > len,
        };
        if frame.lossy {
            frame.head = len;
        }
        frame
    }

    fn padded(&self) -> bool {
        matches!(self.ty, DATA | HEADERS | PUSH_PROMISE) && self.flags & PADDED != 0
    }

    fn is_block(&self) -> bool {
        matches!(self.ty, HEADERS | PUSH_PROMISE | CONTINUATION)
    }
}

/// Whether 9 bytes at the start of a chunk look like a frame header, when resynchronising.
fn plausible(h: &[u8; 9], max_frame: u32) -> bool {
    let f = Frame::parse(h);
    if h[5] & 0x80 != 0 || f.len > max_frame || f.lossy {
        return false;
    }
    match f.ty {
        DATA | HEADERS | PUSH_PROMISE => f.stream != 0,
        PRIORITY => f.stream != 0 && f.len == 5,
        RST_STREAM => f.stream != 0 && f.len == 4,
        SETTINGS => f.stream == 0 && f.len.is_multiple_of(6),
        PING => f.stream == 0 && f.len == 8,
        GOAWAY => f.stream == 0 && f.len >= 8,
        WINDOW_UPDATE => f.len == 4,
        // A CONTINUATION's block started in the lost bytes.
        _ => false,
    }
}

#[derive(Clone, Copy, Debug)]
enum Frames {
    /// Gathering a frame header.
    Header([u8; 9], u8),
    Payload(Frame),
    /// Frame boundaries lost: wait for a chunk that starts with a frame header.
    Resync,
}

/// The header block being read: its stream, whether it is a PUSH_PROMISE's, and when it began.
#[derive(Clone, Copy, Debug)]
struct BlockStart {
    stream: u32,
    push: bool,
    ns: u64,
}

/// What one direction's SETTINGS asked of the other direction.
#[derive(Clone, Copy, Debug, Default)]
struct Asked {
    table: Option<u32>,
    max_frame: Option<u32>,
}

/// One direction of the connection.
struct Side {
    dir: Direction,
    preface_left: usize,
    frames: Frames,
    hpack: Decoder,
    block: Option<BlockStart>,
    max_frame: u32,
    asked: Asked,
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frames = match self.frames {
            Frames::Header(_, n) => format!("header({n})"),
            Frames::Payload(fr) => format!("payload(type {}, {}/{})", fr.ty, fr.pos, fr.len),
            Frames::Resync => "resync".to_string(),
        };
        f.debug_struct("Side")
            .field("dir", &self.dir)
            .field("frames", &frames)
            .field("hpack", &self.hpack)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    id: u32,
    request: Request,
}

/// The streams, shared by both directions.
#[derive(Debug)]
struct Streams {
    kind: EndpointKind,
    open: Vec<Stream>,
}

impl Streams {
    fn find(&mut self, id: u32) -> Option<&mut Stream> {
        self.open.iter_mut().find(|s| s.id == id)
    }

    fn take(&mut self, id: u32) -> Option<Stream> {
        let i = self.open.iter().position(|s| s.id == id)?;
        Some(self.open.remove(i))
    }

    fn block(&mut self, dir: Direction, start: BlockStart, b: Block, out: &mut Vec<Exchange>) {
        if start.push {
            return;
        }
        match dir {
            Direction::Request => {
                let known = b.method.is_some() || b.path.is_some() || b.unknown;
                if self.find(start.stream).is_some() || !known {
                    return; // trailers, or nothing to go on
                }
                if self.open.len() >= MAX_STREAMS {
                    let old = self.open.remove(0);
                    out.push(old.request.exchange(Code::Unknown, None));
                }
                self.open.push(Stream {
                    id: start.stream,
                    request: Request {
                        method: b.method.unwrap_or(Method::Other),
                        class: b.path.unwrap_or(PathClass::Unknown),
                        auth: b.auth,
                        body: BodyScan::default(),
                        ns: start.ns,
                    },
                });
            }
            Direction::Response => {
                let code = match b.status {
                    Some(Code::Status(100..=199)) => return,
                    Some(code) => code,
                    None if b.unknown => Code::Unknown,
                    None => return,
                };
                if let Some(s) = self.take(start.stream) {
                    out.push(s.request.exchange(code, Some(start.ns)));
                }
            }
        }
    }

    fn reset(&mut self, id: u32, out: &mut Vec<Exchange>) {
        if let Some(s) = self.take(id) {
            out.push(s.request.exchange(Code::Unknown, None));
        }
    }

    /// The server will not process streams above `last`.
    fn goaway(&mut self, last: u32, out: &mut Vec<Exchange>) {
        self.open.retain(|s| {
            if s.id > last {
                out.push(s.request.exchange(Code::Unknown, None));
            }
            s.id <= last
        });
    }
}

impl Side {
    fn new(dir: Direction, kind: EndpointKind) -> Self {
        Side {
            dir,
            preface_left: if dir == Direction::Request {
                PREFACE.len()
            } else {
                0
            },
            frames: Frames::Header([0; 9], 0),
            hpack: Decoder::new(kind),
            block: None,
            max_frame: DEFAULT_MAX_FRAME,
            asked: Asked::default(),
        }
    }

    fn feed(
        &mut self,
        ns: u64,
        captured: &[u8],
        lost: usize,
        streams: &mut Streams,
        out: &mut Vec<Exchange>,
    ) {
        let skip = self.preface_left.min(captured.len());
        self.preface_left -= skip;
        let mut bytes = &captured[skip..];
        if let Frames::Resync = self.frames {
            match bytes.first_chunk::<9>() {
                Some(h) if plausible(h, self.max_frame) => self.frames = Frames::Header([0; 9], 0),
                _ => return,
            }
        }
        while !bytes.is_empty() {
            let used = self.step(bytes, ns, streams, out);
            bytes = &bytes[used..];
        }
        if lost > 0 {
            self.lose(lost, streams, out);
        }
    }

    fn step(
        &mut self,
        bytes: &[u8],
        ns: u64,
        streams: &mut Streams,
        out: &mut Vec<Exchange>,
    ) -> usize {
        match &mut self.frames {
            Frames::Header(buf, have) => {
                let have_n = usize::from(*have);
                let n = (9 - have_n).min(bytes.len());
                buf[have_n..have_n + n].copy_from_slice(&bytes[..n]);
                *have += n as u8;
                if *have == 9 {
                    let frame = Frame::parse(buf);
                    self.begin(frame, ns, streams, out);
                }
                n
            }
            Frames::Payload(_) => self.payload(bytes, streams, out),
            Frames::Resync => bytes.len(),
        }
    }

    fn begin(&mut self, frame: Frame, ns: u64, streams: &mut Streams, out: &mut Vec<Exchange>) {
        if let Some(start) = self.block {
            if frame.ty != CONTINUATION || frame.stream != start.stream {
                // A header block must continue with its CONTINUATION frames.
                self.hpack.lost();
                self.finish_block(streams, out);
            }
        }
        if matches!(frame.ty, HEADERS | PUSH_PROMISE) {
            self.block = Some(BlockStart {
                stream: frame.stream,
                push: frame.ty == PUSH_PROMISE,
                ns,
            });
        }
        self.frames = Frames::Payload(frame);
        if frame.len == 0 {
            self.frame_done(streams, out);
        }
    }

    fn payload(&mut self, bytes: &[u8], streams: &mut Streams, out: &mut Vec<Exchange>) -> usize {
        let Frames::Payload(mut f) = self.frames else {
            return bytes.len();
        };
        let n = bytes.len().min((f.len - f.pos) as usize);
        let mut i = 0;
        while i < n {
            let rest = (n - i) as u32;
            let take = if f.pos < f.head {
                if f.pos == 0 && f.padded() {
                    let pad = u32::from(bytes[i]);
                    f.end = f.len.saturating_sub(pad).max(f.head);
                    f.lossy |= f.head + pad > f.len;
                }
                (f.head - f.pos).min(rest)
            } else if f.pos < f.end {
                let take = (f.end - f.pos).min(rest);
                self.content(&mut f, &bytes[i..i + take as usize], streams, out);
                take
            } else {
                (f.len - f.pos).min(rest)
            };
            f.pos += take;
            i += take as usize;
        }
        self.frames = Frames::Payload(f);
        if f.pos == f.len {
            self.frame_done(streams, out);
        }
        n
    }

    fn content(
        &mut self,
        f: &mut Frame,
        piece: &[u8],
        streams: &mut Streams,
        out: &mut Vec<Exchange>,
    ) {
        match f.ty {
            HEADERS | PUSH_PROMISE | CONTINUATION if self.block.is_some() && !f.lossy => {
                self.hpack.feed(piece);
            }
            DATA if self.dir == Direction::Request && streams.kind == EndpointKind::AwsSts => {
                if let Some(s) = streams.find(f.stream) {
                    s.request.body.feed(piece);
                }
            }
            SETTINGS | GOAWAY if !f.lossy => {
                for (k, &b) in piece.iter().enumerate() {
                    if f.ty == GOAWAY && f.pos as usize + k >= 4 {
                        break;
                    }
                    f.acc[usize::from(f.acc_len)] = b;
                    f.acc_len += 1;
                    if f.ty == SETTINGS && f.acc_len == 6 {
                        self.setting(f.acc);
                        f.acc_len = 0;
                    } else if f.ty == GOAWAY && f.acc_len == 4 && self.dir == Direction::Response {
                        let last = u32::from_be_bytes([f.acc[0], f.acc[1], f.acc[2], f.acc[3]]);
                        streams.goaway(last & 0x7fff_ffff, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn setting(&mut self, entry: [u8; 6]) {
        let id = u16::from_be_bytes([entry[0], entry[1]]);
        let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
        match id {
            SETTINGS_HEADER_TABLE_SIZE => self.asked.table = Some(value),
            SETTINGS_MAX_FRAME_SIZE => self.asked.max_frame = Some(value),
            _ => {}
        }
    }

    fn frame_done(&mut self, streams: &mut Streams, out: &mut Vec<Exchange>) {
        let Frames::Payload(f) = self.frames else {
            return;
        };
        self.frames = Frames::Header([0; 9], 0);
        if f.is_block() && self.block.is_some() {
            if f.lossy {
                self.hpack.lost();
            }
            if f.flags & END_HEADERS != 0 {
                self.finish_block(streams, out);
            }
        } else if f.ty == RST_STREAM {
            streams.reset(f.stream, out);
        }
    }

    fn finish_block(&mut self, streams: &mut Streams, out: &mut Vec<Exchange>) {
        let block = self.hpack.end();
        if let Some(start) = self.block.take() {
            streams.block(self.dir, start, block, out);
        }
    }

    /// `n` bytes after the captured ones were not captured.
    fn lose(&mut self, n: usize, streams: &mut Streams, out: &mut Vec<Exchange>) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Frames::Payload(mut f) = self.frames {
            let rest = f.len - f.pos;
            if n <= rest {
                if f.pos < f.end {
                    f.lossy = true;
                    if f.ty == DATA {
                        if let Some(s) = streams.find(f.stream) {
                            s.request.body.skip(n as usize);
                        }
                    }
                }
                f.pos += n;
                self.frames = Frames::Payload(f);
                if f.pos == f.len {
                    self.frame_done(streams, out);
                }
                return;
            }
        }
        // Frame boundaries are lost, and with them any header block in them.
        if self.block.is_some() {
            self.hpack.lost();
            self.finish_block(streams, out);
        }
        self.hpack.forget();
        self.frames = Frames::Resync;
    }
}

/// Both directions of an HTTP/2 connection.
pub(super) struct Http2 {
    requests: Side,
    responses: Side,
    streams: Streams,
}

impl fmt::Debug for Http2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2")
            .field("requests", &self.requests)
            .field("responses", &self.responses)
            .field("open_streams", &self.streams.open.len())
            .finish()
    }
}

impl Http2 {
    pub(super) fn new(kind: EndpointKind) -> Self {
        Http2 {
            requests: Side::new(Direction::Request, kind),
            responses: Side::new(Direction::Response, kind),
            streams: Streams {
                kind,
                open: Vec::new(),
            },
        }
    }

    pub(super) fn feed(
        &mut self,
        dir: Direction,
        ns: u64,
        captured: &[u8],
        lost: usize,
        out: &mut Vec<Exchange>,
    ) {
        let (side, other) = match dir {
            Direction::Request => (&mut self.requests, &mut self.responses),
            Direction::Response => (&mut self.responses, &mut self.requests),
        };
        side.feed(ns, captured, lost, &mut self.streams, out);
        let asked = std::mem::take(&mut side.asked);
        if let Some(table) = asked.table {
            other.hpack.set_limit(table);
        }
        if let Some(max) = asked.max_frame {
            other.max_frame = max.clamp(DEFAULT_MAX_FRAME, (1 << 24) - 1);
        }
    }

    pub(super) fn close(self, out: &mut Vec<Exchange>) {
        out.extend(
            self.streams
                .open
                .iter()
                .map(|s| s.request.exchange(Code::Unknown, None)),
        );
    }
}
