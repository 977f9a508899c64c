//! Where in an OpenSSL to put the TLS uprobes.
//!
//! A uprobe costs a trap on every call, in every process that maps the library, and a second one
//! when the kernel cannot emulate the probed instruction and must single-step a copy of it.
//! `SSL_write`, `SSL_read` and their `_ex` forms start with `sub $n,%rsp`, which x86 cannot
//! emulate: each call paid the breakpoint, the single-step trap (the dearest of the three under a
//! hypervisor, which intercepts debug exceptions) and the return probe's trap.
//!
//! All four are thin wrappers: OpenSSL 3 sends both write forms through one internal function
//! (`ssl_write_internal(s, buf, num, [flags,] size_t *written)`) and both read forms through
//! another (`ssl_read_internal(s, buf, num, size_t *readbytes)`), which start with `push`, an
//! instruction the kernel emulates. Probes there (entry and return on one breakpoint) see every
//! call of either form once, with no single-step. The internal functions are not exported: they
//! are found as the target of the first call in `SSL_write_ex` (`SSL_write_ex2` where it exists:
//! OpenSSL 3.3 added it, and the `flags` argument with it) and `SSL_read_ex`, and taken only if
//! that wrapper calls nothing else and the plain form calls the same function (or the `_ex`
//! form). Anything else (another compiler's code, Node's static OpenSSL, whose exported functions
//! start with an emulated `push %rbp` anyway) keeps the probes on the exported functions.
use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

/// The internal functions' file offsets, for the uprobes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Internal {
    pub write: u64,
    /// Whether the internal write takes `flags` before `written` (OpenSSL 3.3 and later).
    pub write_flags: bool,
    pub read: u64,
}

/// The internal write and read functions of the OpenSSL in `path`, if its code shows them.
pub fn internal(path: &Path) -> Option<Internal> {
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    if elf.architecture() != object::Architecture::X86_64 {
        return None;
    }
    // The five functions looked at, in one pass over the dynamic symbols (a static Node.js
    // exports ~100,000).
    const NAMES: [&str; 5] = [
        "SSL_write_ex2",
        "SSL_write_ex",
        "SSL_write",
        "SSL_read_ex",
        "SSL_read",
    ];
    let mut found: [Option<(u64, u64)>; 5] = [None; 5];
    for sym in elf.dynamic_symbols().filter(|s| !s.is_undefined()) {
        if let Some(i) = sym
            .name()
            .ok()
            .and_then(|n| NAMES.iter().position(|&w| w == n))
        {
            found[i] = Some((sym.address(), sym.size()));
        }
    }
    let symbol = |name: &str| found[NAMES.iter().position(|&n| n == name)?];
    let code = |(address, size): (u64, u64)| -> Option<Code> {
        let section = elf.sections().find(|s| {
            s.kind() == SectionKind::Text
                && (s.address()..s.address() + s.size()).contains(&address)
        })?;
        let bytes = section.data_range(address, size.max(16)).ok()??;
        Some(Code {
            address,
            bytes: bytes.to_vec(),
            text: section.address()..section.address() + section.size(),
            file_offset: section.file_range()?.0 + (address - section.address()),
        })
    };
    let write_ex2 = symbol("SSL_write_ex2");
    let write_ex = code(symbol("SSL_write_ex")?)?;
    let write = code(symbol("SSL_write")?)?;
    let (write_entry, write_flags) = match write_ex2 {
        Some(s) => (code(s)?, true),
        None => (write_ex.clone(), false),
    };
    let w = write_entry.first_call()?;
    let wrappers = [write_entry.address, write_ex.address];
    if !(write.reaches(w, &wrappers) && write_ex.reaches(w, &wrappers)) {
        return None;
    }
    let read_ex = code(symbol("SSL_read_ex")?)?;
    let read = code(symbol("SSL_read")?)?;
    let r = read_ex.first_call()?;
    if !read.reaches(r, &[read_ex.address]) || r == w {
        return None;
    }
    Some(Internal {
        write: write_entry.offset_of(w)?,
        write_flags,
        read: read_ex.offset_of(r)?,
    })
}

/// One exported function's machine code.
#[derive(Clone)]
struct Code {
    address: u64,
    bytes: Vec<u8>,
    /// The executable section it is in: a call's target must be there too (not a PLT stub).
    text: std::ops::Range<u64>,
    /// The file offset of `address`.
    file_offset: u64,
}

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
const SUB_RSP_IMM8: [u8; 3] = [0x48, 0x83, 0xec];
const CALL_REL32: u8 = 0xe8;
const JMP_REL32: u8 = 0xe9;

impl Code {
    /// The function a wrapper calls: it starts with `[endbr64] [sub $n,%rsp] call rel32` and
    /// calls or jumps nowhere else (a function that first calls a helper of its own, say a check,
    /// is no wrapper: its first call is not where the work is).
    fn first_call(&self) -> Option<u64> {
        let b = &self.bytes;
        let mut at = 0;
        if b.starts_with(&ENDBR64) {
            at += ENDBR64.len();
        }
        if b.get(at..)?.starts_with(&SUB_RSP_IMM8) {
            at += SUB_RSP_IMM8.len() + 1;
        }
        if *b.get(at)? != CALL_REL32 {
            return None;
        }
        let rest = at + 5..self.bytes.len();
        let more = rest
            .into_iter()
            .any(|i| matches!(self.bytes[i], CALL_REL32 | JMP_REL32) && self.target(i).is_some());
        if more {
            return None;
        }
        self.target(at)
    }

    /// The target of the `call`/`jmp rel32` at byte `at`, if it lies in this code's section.
    fn target(&self, at: usize) -> Option<u64> {
        let rel = i32::from_le_bytes(self.bytes.get(at + 1..at + 5)?.try_into().ok()?);
        let next = self.address + at as u64 + 5;
        let target = next.checked_add_signed(i64::from(rel))?;
        self.text.contains(&target).then_some(target)
    }

    /// Whether this function calls or jumps to `target`, or to one of `wrappers` (which do).
    /// Read byte by byte, not decoded: a false match needs four bytes that happen to encode one
    /// of these few addresses.
    fn reaches(&self, target: u64, wrappers: &[u64]) -> bool {
        (0..self.bytes.len()).any(|at| {
            matches!(self.bytes[at], CALL_REL32 | JMP_REL32)
                && self
                    .target(at)
                    .is_some_and(|t| t == target || wrappers.contains(&t))
        })
    }

    /// The file offset of `address`, in this code's section.
    fn offset_of(&self, address: u64) -> Option<u64> {
        let section_start = self.address.checked_sub(self.file_offset)?;
        address.checked_sub(section_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(address: u64, bytes: &[u8]) -> Code {
        Code {
            address,
            bytes: bytes.to_vec(),
            text: 0x1000..0x9000,
            file_offset: address - 0x1000,
        }
    }

    fn rel(from_next: u64, to: u64) -> [u8; 4] {
        (to.wrapping_sub(from_next) as i32).to_le_bytes()
    }

    #[test]
    fn a_wrappers_first_call_is_found_behind_endbr_and_a_stack_adjustment() {
        // SSL_write_ex as GCC emits it: sub $8,%rsp; call ssl_write_internal.
        let mut b = vec![0x48, 0x83, 0xec, 0x08, 0xe8];
        b.extend(rel(0x2009, 0x1800));
        b.extend([0x31, 0xd2, 0xc3]);
        assert_eq!(code(0x2000, &b).first_call(), Some(0x1800));
        let mut with_endbr = ENDBR64.to_vec();
        with_endbr.push(0xe8);
        with_endbr.extend(rel(0x2009, 0x3000));
        assert_eq!(code(0x2000, &with_endbr).first_call(), Some(0x3000));
    }

    #[test]
    fn anything_but_a_call_first_is_no_wrapper() {
        // push %rbx; call ...: the function does work of its own before the call.
        let mut b = vec![0x53, 0xe8];
        b.extend(rel(0x2006, 0x1800));
        assert_eq!(code(0x2000, &b).first_call(), None);
        // A call through the PLT (outside the text section) is not the internal function.
        let mut plt = vec![0xe8];
        plt.extend(rel(0x2005, 0x500));
        assert_eq!(code(0x2000, &plt).first_call(), None);
        assert_eq!(code(0x2000, &[0x48, 0x83]).first_call(), None);
        // call check; ...; call work: the first call is not the one that does the work.
        let mut two = vec![0x48, 0x83, 0xec, 0x08, 0xe8];
        two.extend(rel(0x2009, 0x1800));
        two.extend([0x85, 0xc0, 0xe8]);
        two.extend(rel(0x2010, 0x1900));
        two.push(0xc3);
        assert_eq!(code(0x2000, &two).first_call(), None);
    }

    #[test]
    fn the_plain_form_must_reach_the_internal_function_or_the_wrapper() {
        // SSL_write: sub $0x18,%rsp; ...; call ssl_write_internal; ...
        let mut b = vec![0x48, 0x83, 0xec, 0x18, 0x85, 0xd2, 0xe8];
        b.extend(rel(0x200b, 0x1800));
        b.push(0xc3);
        let plain = code(0x2000, &b);
        assert!(plain.reaches(0x1800, &[]));
        assert!(!plain.reaches(0x1900, &[]));
        assert!(plain.reaches(0x1900, &[0x1800]), "through a wrapper");
        // A tail jump counts too.
        let mut j = vec![0xe9];
        j.extend(rel(0x2005, 0x1800));
        assert!(code(0x2000, &j).reaches(0x1800, &[]));
    }

    #[test]
    fn the_systems_openssl_3_shows_its_internal_functions() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            return;
        }
        let found = internal(lib).expect("Debian's libssl 3 is GCC's wrappers around internals");
        assert_ne!(found.write, found.read);
        // Both start with a push (41 5x: push %r12..%r15; 5x: push of the others): emulated.
        let bytes = std::fs::read(lib).unwrap();
        for at in [found.write, found.read] {
            let op = &bytes[at as usize..at as usize + 2];
            assert!(
                matches!(op, [0x41, 0x50..=0x57] | [0x50..=0x57, _]),
                "{op:02x?} at {at:#x}"
            );
        }
        assert_eq!(internal(Path::new("/proc/self/exe")), None);
        assert_eq!(internal(Path::new("/nonexistent")), None);
    }
}
