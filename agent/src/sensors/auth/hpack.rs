//! HPACK (RFC 7541) decoding of header blocks, fed in pieces of any size, keeping no header value.
//!
//! Only what classification needs comes out of a block ([`Block`]): `:method`, the class of
//! `:path` (classified the moment it is decoded, then dropped), `:status`, and whether an auth
//! header was present. The dynamic table holds, per entry, that same summary ([`Field`]) and the
//! entry's sizes, never a name or value: sizes are all eviction needs.
//!
//! Lost capture: when bytes of a header block were not captured, the table's content is no
//! longer known (the lost part may have inserted entries). The table then forgets its entries and
//! marks an unknown tail: references into it decode as [`Field::Unknown`]; entries inserted after
//! the loss are known again (they sit at the front), and once they fill the table the unknown tail
//! has been evicted and the table is exact again (a size update to 0 does the same at once).

use std::collections::VecDeque;

use super::classify::{classify_path, is_auth_header, EndpointKind, Method, PathClass};
use super::huffman::Huffman;
use super::wire::Code;

/// The table's size limit when the peer asks for more (SETTINGS_HEADER_TABLE_SIZE above it).
const HARD_LIMIT: u32 = 65_536;
/// RFC 7541 4.1: each entry counts 32 bytes on top of its name and value.
const ENTRY_OVERHEAD: u32 = 32;
/// Integers above this are not HPACK from any real encoder.
const MAX_INT: u64 = 1 << 28;

/// Decoded bytes kept of a name (longer names are none of those classification looks for).
const KEEP_NAME: usize = 64;
const KEEP_METHOD: usize = 16;
const KEEP_STATUS: usize = 8;
/// Decoded bytes of `:path` classified; a longer path classifies as unknown.
const KEEP_PATH: usize = 4096;

/// What a header field is, as far as classification cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Method(Method),
    Path(PathClass),
    Status(Code),
    Auth,
    Other,
    /// A reference into the part of the table lost with uncaptured bytes.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Method,
    Path,
    Status,
    Auth,
    Other,
    Unknown,
}

impl Field {
    fn name(self) -> Name {
        match self {
            Field::Method(_) => Name::Method,
            Field::Path(_) => Name::Path,
            Field::Status(_) => Name::Status,
            Field::Auth => Name::Auth,
            Field::Other => Name::Other,
            Field::Unknown => Name::Unknown,
        }
    }
}

fn name_of(bytes: &[u8]) -> Name {
    match bytes {
        b":method" => Name::Method,
        b":path" => Name::Path,
        b":status" => Name::Status,
        _ if is_auth_header(bytes) => Name::Auth,
        _ => Name::Other,
    }
}

/// The names of the static table (RFC 7541 Appendix A), indexes 1 to 61.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The `:status` values of static entries 8 to 14.
const STATIC_STATUS: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];

/// One dynamic table entry: its summary and sizes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    field: Field,
    name_len: u32,
    size: u32,
}

enum Lookup {
    Found(Field, Option<u32>),
    Invalid,
}

/// The dynamic table of one direction of one connection.
#[derive(Debug)]
struct Table {
    entries: VecDeque<Entry>,
    size: u32,
    max: u32,
    limit: u32,
    /// Entries older than `entries` may exist whose content was lost.
    unknown_tail: bool,
}

impl Table {
    fn new() -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max: 4096,
            limit: 4096,
            unknown_tail: false,
        }
    }

    fn evict_to(&mut self, room: u32) {
        while self.size > room {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }

    /// No unknown entry is left once the known ones leave no room for one.
    fn settle(&mut self) {
        if self.size + ENTRY_OVERHEAD > self.max {
            self.unknown_tail = false;
        }
    }

    fn resize(&mut self, max: u64) {
        self.max = max.min(u64::from(self.limit)) as u32;
        self.evict_to(self.max);
        self.settle();
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max {
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
            return;
        }
        self.evict_to(self.max - entry.size);
        self.entries.push_front(entry);
        self.size += entry.size;
        self.settle();
    }

    fn forget(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
    }

    /// Entry `index` (62 and up) of the dynamic table.
    fn get(&self, index: u64) -> Lookup {
        let i = usize::try_from(index - 62).unwrap_or(usize::MAX);
        match self.entries.get(i) {
            Some(e) => Lookup::Found(e.field, Some(e.name_len)),
            None if self.unknown_tail => Lookup::Found(Field::Unknown, None),
            None => Lookup::Invalid,
        }
    }
}

/// What one header block said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Block {
    pub(super) method: Option<Method>,
    pub(super) path: Option<PathClass>,
    pub(super) status: Option<Code>,
    pub(super) auth: bool,
    /// Part of the block could not be decoded (lost bytes, unknown table entries, bad coding).
    pub(super) unknown: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntFor {
    Indexed,
    NameIndex,
    SizeUpdate,
    NameLen,
    ValueLen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a field representation.
    Start,
    /// Reading the continuation bytes of an integer.
    Int(IntFor),
    /// At the first byte of a string's length.
    StrLen { value: bool },
    /// Reading a string's bytes.
    Str { value: bool },
}

/// A header block decoder for one direction of one connection.
pub(super) struct Decoder {
    kind: EndpointKind,
    table: Table,
    state: State,
    int: u64,
    shift: u32,
    /// Current representation: insert into the table, its name and the name's length (unknown
    /// when the name came from a lost entry).
    indexing: bool,
    name: Name,
    name_len: Option<u32>,
    /// Current string: Huffman-coded, bytes left, decoded length, how much of it to keep.
    huffman: bool,
    huff: Huffman,
    left: u64,
    count: u64,
    keep: usize,
    /// The kept bytes of the current string (a name, `:method`, `:path` or `:status`), cleared
    /// as soon as the string is classified.
    scratch: Vec<u8>,
    overflow: bool,
    block: Block,
    /// The rest of the current block cannot be decoded.
    broken: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("state", &self.state)
            .field("table_entries", &self.table.entries.len())
            .field("table_size", &self.table.size)
            .field("table_max", &self.table.max)
            .field("unknown_tail", &self.table.unknown_tail)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    pub(super) fn new(kind: EndpointKind) -> Self {
        Decoder {
            kind,
            table: Table::new(),
            state: State::Start,
            int: 0,
            shift: 0,
            indexing: false,
            name: Name::Other,
            name_len: None,
            huffman: false,
            huff: Huffman::default(),
            left: 0,
            count: 0,
            keep: 0,
            scratch: Vec::new(),
            overflow: false,
            block: Block::default(),
            broken: false,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask for.
    pub(super) fn set_limit(&mut self, limit: u32) {
        self.table.limit = limit.min(HARD_LIMIT);
    }

    /// Header blocks were lost whole (frames not captured): the table is no longer known.
    pub(super) fn forget(&mut self) {
        self.table.forget();
    }

    /// Bytes of the current block were not captured.
    pub(super) fn lost(&mut self) {
        self.table.forget();
        self.fail();
    }

    /// Ends the current block and returns what it said.
    pub(super) fn end(&mut self) -> Block {
        if self.state != State::Start && !self.broken {
            // A block must end between representations.
            self.table.forget();
            self.block.unknown = true;
        }
        self.clear_scratch();
        self.state = State::Start;
        self.broken = false;
        std::mem::take(&mut self.block)
    }

    fn fail(&mut self) {
        self.broken = true;
        self.block.unknown = true;
        self.clear_scratch();
    }

    fn clear_scratch(&mut self) {
        self.scratch.fill(0);
        self.scratch.clear();
        self.overflow = false;
    }

    /// Feeds the next bytes of the current block.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            let used = match self.state {
                State::Start => {
                    self.start(bytes[0]);
                    1
                }
                State::Int(target) => self.int_bytes(bytes, target),
                State::StrLen { value } => {
                    let b = bytes[0];
                    self.huffman = b & 0x80 != 0;
                    let target = if value {
                        IntFor::ValueLen
                    } else {
                        IntFor::NameLen
                    };
                    self.prefixed(b, 7, target);
                    1
                }
                State::Str { value } => self.str_bytes(bytes, value),
            };
            bytes = &bytes[used..];
        }
    }

    fn start(&mut self, b: u8) {
        if b & 0x80 != 0 {
            self.prefixed(b, 7, IntFor::Indexed);
        } else if b & 0x40 != 0 {
            self.indexing = true;
            self.prefixed(b, 6, IntFor::NameIndex);
        } else if b & 0x20 != 0 {
            self.prefixed(b, 5, IntFor::SizeUpdate);
        } else {
            self.indexing = false;
            self.prefixed(b, 4, IntFor::NameIndex);
        }
    }

    /// The first byte of an integer with an `n`-bit prefix (RFC 7541 5.1).
    fn prefixed(&mut self, b: u8, n: u32, target: IntFor) {
        let mask = (1u8 << n) - 1;
        let v = b & mask;
        if v < mask {
            self.int_done(u64::from(v), target);
        } else {
            self.int = u64::from(mask);
            self.shift = 0;
            self.state = State::Int(target);
        }
    }

    fn int_bytes(&mut self, bytes: &[u8], target: IntFor) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            self.int += u64::from(b & 0x7f) << self.shift;
            self.shift += 7;
            if self.int > MAX_INT {
                self.table.forget();
                self.fail();
                return i + 1;
            }
            if b & 0x80 == 0 {
                self.int_done(self.int, target);
                return i + 1;
            }
        }
        bytes.len()
    }

    fn int_done(&mut self, v: u64, target: IntFor) {
        self.state = State::Start;
        match target {
            IntFor::Indexed => match self.lookup(v) {
                Some((field, _)) => self.emit(field),
                None => self.invalid(),
            },
            IntFor::NameIndex if v == 0 => self.state = State::StrLen { value: false },
            IntFor::NameIndex => match self.lookup(v) {
                Some((field, name_len)) => {
                    self.name = field.name();
                    self.name_len = name_len;
                    self.state = State::StrLen { value: true };
                }
                None => self.invalid(),
            },
            IntFor::SizeUpdate => self.table.resize(v),
            IntFor::NameLen | IntFor::ValueLen => self.begin_string(v, target == IntFor::ValueLen),
        }
    }

    /// A bad reference: the table is not what the encoder thinks.
    fn invalid(&mut self) {
        self.table.forget();
        self.fail();
    }

    fn lookup(&self, index: u64) -> Option<(Field, Option<u32>)> {
        match index {
            0 => None,
            1..=61 => {
                let i = index as usize;
                let name = STATIC_NAMES[i - 1];
                let field = match i {
                    2 => Field::Method(Method::Get),
                    3 => Field::Method(Method::Post),
                    4 => Field::Path(classify_path(self.kind, b"/")),
                    5 => Field::Path(classify_path(self.kind, b"/index.html")),
                    8..=14 => Field::Status(Code::Status(STATIC_STATUS[i - 8])),
                    _ if name_of(name.as_bytes()) == Name::Auth => Field::Auth,
                    _ => Field::Other,
                };
                Some((field, Some(name.len() as u32)))
            }
            _ => match self.table.get(index) {
                Lookup::Found(field, name_len) => Some((field, name_len)),
                Lookup::Invalid => None,
            },
        }
    }

    fn begin_string(&mut self, len: u64, value: bool) {
        self.left = len;
        self.count = 0;
        self.huff = Huffman::default();
        self.keep = match (value, self.name) {
            (false, _) => KEEP_NAME,
            (true, Name::Method) => KEEP_METHOD,
            (true, Name::Path) => KEEP_PATH,
            (true, Name::Status) => KEEP_STATUS,
            (true, _) => 0,
        };
        self.state = State::Str { value };
        if len == 0 {
            self.end_string(value);
        }
    }

    fn str_bytes(&mut self, bytes: &[u8], value: bool) -> usize {
        let n = bytes
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let piece = &bytes[..n];
        self.left -= n as u64;
        // The decoded length matters only for what is kept or inserted into the table.
        let needed = self.keep > 0 || self.indexing || !value;
        if !self.huffman {
            self.count += n as u64;
            self.keep_bytes(piece);
        } else if needed {
            let (keep, scratch, count) = (self.keep, &mut self.scratch, &mut self.count);
            let mut overflow = false;
            let result = self.huff.feed(piece, |b| {
                *count += 1;
                if scratch.len() < keep {
                    scratch.push(b);
                } else if keep > 0 {
                    overflow = true;
                }
            });
            self.overflow |= overflow;
            if result.is_err() {
                self.invalid();
                return n;
            }
        }
        if self.left == 0 {
            if self.huffman && needed && self.huff.finish().is_err() {
                self.invalid();
                return n;
            }
            self.end_string(value);
        }
        n
    }

    fn keep_bytes(&mut self, piece: &[u8]) {
        let room = self.keep.saturating_sub(self.scratch.len());
        self.scratch
            .extend_from_slice(&piece[..piece.len().min(room)]);
        if piece.len() > room && self.keep > 0 {
            self.overflow = true;
        }
    }

    fn end_string(&mut self, value: bool) {
        self.state = State::Start;
        if !value {
            self.name = if self.overflow {
                Name::Other
            } else {
                self.scratch.make_ascii_lowercase();
                name_of(&self.scratch)
            };
            self.name_len = u32::try_from(self.count).ok();
            self.clear_scratch();
            self.state = State::StrLen { value: true };
            return;
        }
        let field = match self.name {
            Name::Method => Field::Method(Method::parse(&self.scratch)),
            Name::Path if self.overflow => Field::Path(PathClass::Unknown),
            Name::Path => Field::Path(classify_path(self.kind, &self.scratch)),
            Name::Status => Field::Status(Code::parse(&self.scratch)),
            Name::Auth => Field::Auth,
            Name::Other => Field::Other,
            Name::Unknown => Field::Unknown,
        };
        self.clear_scratch();
        self.emit(field);
        if self.indexing {
            match self.name_len {
                Some(name_len) => self.table.insert(Entry {
                    field,
                    name_len,
                    size: (u64::from(name_len) + self.count + u64::from(ENTRY_OVERHEAD))
                        .min(u64::from(u32::MAX)) as u32,
                }),
                // An entry of unknown size: which ones it evicts is unknown too.
                None => self.table.forget(),
            }
        }
    }

    fn emit(&mut self, field: Field) {
        match field {
            Field::Method(m) => self.block.method = Some(m),
            Field::Path(p) => self.block.path = Some(p),
            Field::Status(s) => self.block.status = Some(s),
            Field::Auth => self.block.auth = true,
            Field::Other => {}
            Field::Unknown => self.block.unknown = true,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sensors::auth::classify::Operation;

    /// Bytes written as hex pairs, spaces ignored (as RFC 7541's examples print them).
    pub(in crate::sensors::auth) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Decodes one whole block.
    fn decode(d: &mut Decoder, block: &[u8]) -> Block {
        d.feed(block);
        d.end()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        // RFC 7541 C.4.1 - C.4.3, verbatim.
        let c41 = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        let c42 = hex("8286 84be 5886 a8eb 1064 9cbf");
        let c43 = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        let mut d = Decoder::new(EndpointKind::Other);
        let b = decode(&mut d, &c41);
        assert_eq!(b.method, Some(Method::Get));
        assert_eq!(b.path, Some(PathClass::Any(Operation::Other)));
        assert!(!b.unknown && !b.auth);
        assert_eq!((d.table.entries.len(), d.table.size), (1, 57));
        let b = decode(&mut d, &c42);
        assert_eq!(b.method, Some(Method::Get));
        assert!(!b.unknown);
        assert_eq!((d.table.entries.len(), d.table.size), (2, 110));
        let b = decode(&mut d, &c43);
        assert!(!b.unknown);
        assert_eq!((d.table.entries.len(), d.table.size), (3, 164));
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman_and_eviction() {
        // RFC 7541 C.6.1 - C.6.3, verbatim, with a 256-byte table.
        let c61 = hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        );
        let c62 = hex("4883 640e ff c1 c0 bf");
        let c63 = hex(
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        );
        let mut d = Decoder::new(EndpointKind::Other);
        d.set_limit(256);
        d.feed(&[0x3f, 0xe1, 0x01]); // size update to 256
        assert_eq!(d.end(), Block::default());
        let b = decode(&mut d, &c61);
        assert_eq!(b.status, Some(Code::Status(302)));
        assert!(!b.unknown);
        assert_eq!((d.table.entries.len(), d.table.size), (4, 222));
        let b = decode(&mut d, &c62);
        assert_eq!(b.status, Some(Code::Status(307)));
        assert!(!b.unknown);
        assert_eq!((d.table.entries.len(), d.table.size), (4, 222));
        // C.6.3 references the entry `:status: 302` inserted by C.6.1 as index 63 (c1 = 65 ...).
        let b = decode(&mut d, &c63);
        assert_eq!(b.status, Some(Code::Status(200)));
        assert!(!b.unknown);
        assert_eq!((d.table.entries.len(), d.table.size), (3, 215));
        // Every split of each block into two pieces decodes alike.
        let blocks = [&c61, &c62, &c63];
        for k in 0..blocks.len() {
            for split in 0..blocks[k].len() {
                let mut a = Decoder::new(EndpointKind::Other);
                a.set_limit(256);
                a.feed(&[0x3f, 0xe1, 0x01]);
                a.end();
                for earlier in &blocks[..k] {
                    a.feed(earlier);
                    a.end();
                }
                a.feed(&blocks[k][..split]);
                a.feed(&blocks[k][split..]);
                let got = a.end();
                assert!(
                    !got.unknown && got.status.is_some(),
                    "block {k} split {split}"
                );
            }
        }
    }

    #[test]
    fn lost_bytes_make_references_unknown_until_refilled() {
        let c41 = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        let mut d = Decoder::new(EndpointKind::Other);
        decode(&mut d, &c41);
        d.feed(&[0x82]);
        d.lost();
        let b = d.end();
        assert_eq!(b.method, Some(Method::Get));
        assert!(b.unknown);
        // `be` (index 62) is now unknown; static references still decode.
        let b = decode(&mut d, &hex("8286 84be"));
        assert_eq!(b.method, Some(Method::Get));
        assert!(b.unknown);
        // A new literal with indexing is known again at index 62.
        let b = decode(&mut d, &hex("418c f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
        assert!(!b.unknown);
        let b = decode(&mut d, &hex("be"));
        assert!(!b.unknown);
        // Index 63 is in the unknown tail.
        let b = decode(&mut d, &hex("bf"));
        assert!(b.unknown);
        // A size update to 0 empties the table: it is exact again, and 62 is invalid.
        decode(&mut d, &[0x20]);
        assert!(!d.table.unknown_tail);
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decoder::new(EndpointKind::Vault);
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut block = Vec::new();
            for _ in 0..(x % 64) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                block.push((x >> 16) as u8);
            }
            d.feed(&block);
            let _ = d.end();
        }
        assert!(d.table.size <= d.table.max);
    }
}
