//! Loading the eBPF object, attaching its programs, and the typed handles to its maps. Lives in
//! the library so that `credwatch check`, the benchmark and the tests run exactly what the agent runs.
use std::sync::Mutex;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};
use credwatch_common::{
    globals, maps, Credential, InodeKey, LostStage, ReadKey, ReadStats, RDONLY_CAST_PLACEHOLDER,
};

use crate::{
    btf::ProbeBtf,
    state::{MapOp, ProbeStatus},
};

/// The eBPF object built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/credwatch"));

/// A tracepoint program and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct TracepointProbe {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
}

const fn syscall_exit(program: &'static str, name: &'static str) -> TracepointProbe {
    TracepointProbe {
        program,
        category: "syscalls",
        name,
    }
}

/// The file probes: the exits of every syscall that returns a new descriptor for a path.
/// (`creat` is left out: it always opens write-only, so it can never be a read.)
pub const FILE_PROBES: [TracepointProbe; 4] = [
    syscall_exit("sys_exit_openat", "sys_exit_openat"),
    syscall_exit("sys_exit_openat2", "sys_exit_openat2"),
    syscall_exit("sys_exit_open", "sys_exit_open"),
    syscall_exit("sys_exit_open_by_handle_at", "sys_exit_open_by_handle_at"),
];

/// Empty programs on the same tracepoints: the benchmark's floor.
pub const FLOOR_PROBES: [TracepointProbe; 4] = [
    syscall_exit("floor_sys_exit_openat", "sys_exit_openat"),
    syscall_exit("floor_sys_exit_openat2", "sys_exit_openat2"),
    syscall_exit("floor_sys_exit_open", "sys_exit_open"),
    syscall_exit(
        "floor_sys_exit_open_by_handle_at",
        "sys_exit_open_by_handle_at",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading the eBPF object: {0}")]
    Object(String),
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Loads the object with the kernel offsets and the agent's tgid filled in and its `bpf_rdonly_cast`
/// calls emitted (see `patch_kfunc_calls`). Programs are verified when attached.
pub fn load(btf: &ProbeBtf, agent_tgid: u32) -> Result<Ebpf> {
    // On kernels that charge BPF memory to the memory cgroup (5.11+) the limit does not matter;
    // on older ones raising it is required. Failure is only worth a note.
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
    let object = patch_kfunc_calls(EBPF_OBJECT, btf.rdonly_cast.map(|c| c.func))?;
    Ok(EbpfLoader::new()
        .override_global(globals::KERNEL_OFFSETS, &btf.globals(), true)
        .override_global(globals::AGENT_TGID, &agent_tgid, true)
        .load(object.bytes())?)
}

/// Loads the object and attaches the file probes. If the kernel refuses them with the
/// `bpf_rdonly_cast` walk (a kernel whose verifier does not allow the kfunc for tracepoints), loads
/// it again with the helper walk rather than run blind. Returns the walk that was used.
pub fn load_file_probes(
    btf: &ProbeBtf,
    agent_tgid: u32,
) -> Result<(Ebpf, Vec<ProbeStatus>, ProbeBtf)> {
    let mut ebpf = load(btf, agent_tgid)?;
    let statuses = attach(&mut ebpf, &FILE_PROBES);
    if btf.rdonly_cast.is_none() || statuses.iter().any(|s| s.attached) {
        return Ok((ebpf, statuses, *btf));
    }
    let fallback = btf.without_kfuncs();
    tracing::warn!(
        error = statuses[0].error.as_deref().unwrap_or(""),
        "the kernel refused the file probes with bpf_rdonly_cast; retrying with helper reads"
    );
    drop(ebpf);
    let mut ebpf = load(&fallback, agent_tgid)?;
    let statuses = attach(&mut ebpf, &FILE_PROBES);
    Ok((ebpf, statuses, fallback))
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

fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            format!(
                "verifier rejected it ({io_error}); last lines of its log:\n  {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            )
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

/// Loads and attaches each probe; a failure is reported per probe, not fatal here.
pub fn attach(ebpf: &mut Ebpf, probes: &[TracepointProbe]) -> Vec<ProbeStatus> {
    probes
        .iter()
        .map(|p| {
            let result = (|| -> std::result::Result<(), String> {
                let prog: &mut TracePoint = ebpf
                    .program_mut(p.program)
                    .ok_or_else(|| format!("program {} missing from the object", p.program))?
                    .try_into()
                    .map_err(|e: ProgramError| describe(&e))?;
                prog.load().map_err(|e| describe(&e))?;
                prog.attach(p.category, p.name).map_err(|e| describe(&e))?;
                Ok(())
            })();
            ProbeStatus {
                probe: format!("tracepoint/{}/{}", p.category, p.name),
                attached: result.is_ok(),
                error: result.err(),
            }
        })
        .collect()
}

/// Typed handles to the object's maps, shared by the inventory (writes `WATCHED`), the metrics
/// collector (reads `READS`, `LOST`) and the event reader (`EVENTS`, taken separately).
pub struct KernelMaps {
    watched: Mutex<HashMap<MapData, InodeKey, Credential>>,
    reads: Mutex<PerCpuHashMap<MapData, ReadKey, ReadStats>>,
    lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelMaps")
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::NoMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// The summed read counter of one (cgroup, credential, generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTotal {
    pub key: ReadKey,
    pub count: u64,
    pub last_read_ns: u64,
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, RingBuf<MapData>)> {
        Ok((
            Self {
                watched: Mutex::new(take(ebpf, maps::WATCHED)?),
                reads: Mutex::new(take(ebpf, maps::READS)?),
                lost: take(ebpf, maps::LOST)?,
            },
            take(ebpf, maps::EVENTS)?,
        ))
    }

    /// Applies inventory changes. Returns how many `Watch`es failed (the map is full).
    pub fn apply(&self, ops: &[MapOp]) -> u64 {
        let mut failed = 0;
        for op in ops {
            match *op {
                MapOp::Watch(key, cred) => {
                    let r = self
                        .watched
                        .lock()
                        .expect("watched lock")
                        .insert(key, cred, 0);
                    if let Err(e) = r {
                        tracing::error!(error = %e, "cannot watch a credential: WATCHED map full?");
                        failed += 1;
                    }
                }
                MapOp::Unwatch(key) => {
                    let _ = self.watched.lock().expect("watched lock").remove(&key);
                }
                MapOp::Purge(cred_id) => {
                    let mut reads = self.reads.lock().expect("reads lock");
                    let stale: Vec<ReadKey> = reads
                        .keys()
                        .flatten()
                        .filter(|k| k.cred_id == cred_id)
                        .collect();
                    for k in stale {
                        let _ = reads.remove(&k);
                    }
                }
            }
        }
        failed
    }

    /// Every read counter, summed over CPUs (`last_read_ns` is the latest CPU's).
    pub fn read_totals(&self) -> Vec<ReadTotal> {
        let reads = self.reads.lock().expect("reads lock");
        reads
            .iter()
            .flatten()
            .map(|(key, per_cpu)| ReadTotal {
                key,
                count: per_cpu.iter().map(|s| s.count).sum(),
                last_read_ns: per_cpu.iter().map(|s| s.last_read_ns).max().unwrap_or(0),
            })
            .collect()
    }

    /// Removes every counter of a reader cgroup and returns their last totals.
    pub fn purge_cgroup(&self, cgroup_id: u64) -> Vec<ReadTotal> {
        let mut reads = self.reads.lock().expect("reads lock");
        let gone: Vec<ReadTotal> = reads
            .iter()
            .flatten()
            .filter(|(k, _)| k.cgroup_id == cgroup_id)
            .map(|(key, per_cpu)| ReadTotal {
                key,
                count: per_cpu.iter().map(|s| s.count).sum(),
                last_read_ns: per_cpu.iter().map(|s| s.last_read_ns).max().unwrap_or(0),
            })
            .collect();
        for t in &gone {
            let _ = reads.remove(&t.key);
        }
        gone
    }

    /// Kernel-side drops by stage, summed over CPUs.
    pub fn lost(&self, stage: LostStage) -> u64 {
        self.lost
            .get(&(stage as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
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

    /// A kernel that refuses the kfunc call gets the helper walk, not a blind agent. Simulated with
    /// the id of a kernel function that is not a kfunc (`vfs_open`), which the verifier refuses.
    #[test]
    fn a_refused_kfunc_falls_back_to_the_helper_walk() {
        let vmlinux = std::path::Path::new(crate::btf::VMLINUX_BTF);
        if let Some(why) = crate::sys::missing_privileges() {
            eprintln!("skipped: loading programs needs root ({why})");
            return;
        }
        let Ok(real) = crate::btf::probe_btf(vmlinux) else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let not_a_kfunc = crate::btf::func_id(vmlinux, "vfs_open").expect("vfs_open in BTF");
        let refused = ProbeBtf {
            rdonly_cast: Some(crate::btf::RdonlyCast {
                func: not_a_kfunc,
                slot_type: real.rdonly_cast.map_or(1, |c| c.slot_type),
            }),
            ..real
        };
        let (_ebpf, statuses, used) = load_file_probes(&refused, std::process::id()).unwrap();
        assert!(statuses.iter().all(|s| s.attached), "{statuses:?}");
        assert_eq!(used, real.without_kfuncs());
    }

    #[test]
    fn an_object_without_placeholders_or_not_elf_is_an_error() {
        let Err(err) = patch_kfunc_calls(b"not an ELF file", None) else {
            panic!("garbage parsed as an eBPF object");
        };
        assert!(err.to_string().contains("reading the eBPF object"), "{err}");
    }
}
