//! The eBPF object: embedding it, rewriting its kfunc calls for this kernel, and loading it with
//! the kernel's offsets and its links token filled in (and, with pins, the pinned maps).
use aya::{Ebpf, EbpfLoader};
use credwatch_common::{file::RDONLY_CAST_PLACEHOLDER, globals};

use super::{btf::ProbeBtf, pin::Pins, Error, Result};

/// The object built by `build.rs` from the `ebpf/` crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/credwatch"));

/// Test support: the benchmark's floor, empty programs on the file sensor's tracepoints
/// (`ebpf/src/floor.rs`). The agent never loads it; the linker drops it from the agent binary.
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/credwatch-floor"));

/// Loads the object with the kernel offsets and its links token filled in and its
/// `bpf_rdonly_cast` calls emitted (see `patch_kfunc_calls`); with `pins`, the maps of
/// `pin::PINNED_MAPS` are the pinned ones (made and pinned if not there yet). Programs are
/// verified when attached.
pub fn load(btf: &ProbeBtf, links_token: u64, pins: Option<&Pins>) -> Result<Ebpf> {
    raise_memlock_limit();
    let object = patch_kfunc_calls(EBPF_OBJECT, btf.rdonly_cast.map(|c| c.func))?;
    let reads = super::maps::reads_entries(super::maps::possible_cpus());
    let offsets = btf.globals();
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(credwatch_common::file::maps::READS, reads)
        .override_global(
            credwatch_common::file::globals::KERNEL_OFFSETS,
            &offsets,
            true,
        )
        .override_global(globals::LINKS_TOKEN, &links_token, true);
    for name in pins.map_or(&[][..], |_| &super::pin::PINNED_MAPS[..]) {
        let path = pins.map(|p| p.map_path(name)).unwrap_or_default();
        loader.map_pin_path(name, path);
    }
    Ok(loader.load(object.bytes())?)
}

/// On kernels that charge BPF memory to the memory cgroup (5.11+) the limit does not matter;
/// on older ones raising it is required. Failure is only worth a note.
pub fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed (fine on kernels that account BPF memory to memcg)"
        );
    }
}

/// Size of one eBPF instruction.
const INSN: usize = 8;

/// `call RDONLY_CAST_PLACEHOLDER`: opcode BPF_JMP|BPF_CALL, no registers, offset 0, the number.
const PLACEHOLDER_CALL: [u8; INSN] = {
    let n = RDONLY_CAST_PLACEHOLDER.to_le_bytes();
    [0x85, 0x00, 0, 0, n[0], n[1], n[2], n[3]]
};

/// An eBPF object copied into 8-byte aligned memory, as the ELF parser wants it.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn new(bytes: &[u8]) -> Self {
        let mut this = Self {
            words: vec![0u64; bytes.len().div_ceil(8)],
            len: bytes.len(),
        };
        this.bytes_mut().copy_from_slice(bytes);
        this
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the u64 buffer holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `new`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Rewrites each placeholder call in the object's code into a call of the kfunc with BTF id
/// `kfunc` (src_reg BPF_PSEUDO_KFUNC_CALL, the id in vmlinux's BTF), or, without one, into
/// `r0 = 0`: the probe only reaches the cast when the kfunc exists, and the verifier must never see
/// a call of a helper that does not exist. aya (0.14) cannot emit kfunc calls itself.
pub fn patch_kfunc_calls(object: &[u8], kfunc: Option<u32>) -> Result<AlignedObject> {
    use object::{Object as _, ObjectSection as _, SectionFlags};
    let mut out = AlignedObject::new(object);
    let replacement: [u8; INSN] = match kfunc {
        Some(id) => {
            let n = id.to_le_bytes();
            [0x85, 0x20, 0, 0, n[0], n[1], n[2], n[3]]
        }
        // BPF_ALU64|BPF_MOV|BPF_K, dst r0, imm 0.
        None => [0xb7, 0, 0, 0, 0, 0, 0, 0],
    };
    let elf = object::File::parse(out.bytes()).map_err(|e| Error::Object(e.to_string()))?;
    let code_ranges: Vec<(usize, usize)> = elf
        .sections()
        .filter(|s| {
            matches!(s.flags(), SectionFlags::Elf { sh_flags }
                if sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0)
        })
        .filter_map(|s| s.file_range())
        .map(|(start, len)| (start as usize, len as usize))
        .collect();
    let mut patched = 0;
    let bytes = out.bytes_mut();
    for (start, len) in code_ranges {
        let code = bytes
            .get_mut(start..start + len)
            .ok_or_else(|| Error::Object("section past the end of the file".into()))?;
        for insn in code.chunks_exact_mut(INSN) {
            if insn == PLACEHOLDER_CALL {
                insn.copy_from_slice(&replacement);
                patched += 1;
            }
        }
    }
    if patched == 0 {
        return Err(Error::Object(
            "no bpf_rdonly_cast placeholder call in the eBPF object (built from other sources?)"
                .into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(object: &[u8], insn: [u8; INSN]) -> usize {
        // Instructions are 8-byte aligned within their sections, and sections within the file.
        object.chunks_exact(INSN).filter(|c| *c == insn).count()
    }

    #[test]
    fn placeholder_calls_become_kfunc_calls_or_zero_moves() {
        let placeholders = count(EBPF_OBJECT, PLACEHOLDER_CALL);
        assert!(placeholders > 0, "the probe calls bpf_rdonly_cast");

        let with = patch_kfunc_calls(EBPF_OBJECT, Some(0x0001_2345)).unwrap();
        assert_eq!(count(with.bytes(), PLACEHOLDER_CALL), 0);
        let kfunc_call = [0x85, 0x20, 0, 0, 0x45, 0x23, 0x01, 0x00];
        assert_eq!(count(with.bytes(), kfunc_call), placeholders);
        assert_eq!(with.bytes().len(), EBPF_OBJECT.len());

        let without = patch_kfunc_calls(EBPF_OBJECT, None).unwrap();
        assert_eq!(count(without.bytes(), PLACEHOLDER_CALL), 0);
        // Everything else is untouched.
        let changed = EBPF_OBJECT
            .chunks_exact(INSN)
            .zip(without.bytes().chunks_exact(INSN))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, placeholders);
    }

    #[test]
    fn an_object_without_placeholders_or_not_elf_is_an_error() {
        let Err(err) = patch_kfunc_calls(b"not an ELF file", None) else {
            panic!("garbage parsed as an eBPF object");
        };
        assert!(err.to_string().contains("reading the eBPF object"), "{err}");
    }

    /// The kernel side names each map after its static: every name userspace takes must be there.
    #[test]
    fn the_object_has_every_map_userspace_takes() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let elf = object::File::parse(EBPF_OBJECT).unwrap();
        let maps = elf.section_by_name("maps").expect("a maps section").index();
        let names: Vec<&str> = elf
            .symbols()
            .filter(|s| s.section_index() == Some(maps))
            .filter_map(|s| s.name().ok())
            .collect();
        for want in [
            credwatch_common::maps::EVENTS,
            credwatch_common::maps::LOST,
            credwatch_common::maps::CONTROL,
            credwatch_common::file::maps::WATCHED,
            credwatch_common::file::maps::WATCHED_FILTER,
            credwatch_common::file::maps::KEPT,
            credwatch_common::file::maps::IDENTITIES,
            credwatch_common::file::maps::READS,
            credwatch_common::auth::maps::ENDPOINTS,
            credwatch_common::auth::maps::CONNECTS,
            credwatch_common::auth::maps::SOCKS,
            credwatch_common::auth::maps::ENDPOINT_SOCKS,
            credwatch_common::auth::maps::PLAINTEXT_PORTS,
            credwatch_common::auth::maps::TLS_CALLS,
            credwatch_common::auth::maps::TLS_SOCKS,
            credwatch_common::auth::maps::AUTH_EVENTS,
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
    }
}
