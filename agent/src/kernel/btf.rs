//! Kernel struct offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the file probe's pointer walk gets its field offsets
//! from here, passed to the programs as a read-only global, along with the ids of the kfunc and
//! type it casts descriptor-table slots with.
use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use credwatch_common::file::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse kernel BTF: {0}")]
    Parse(String),
    #[error("kernel BTF has no type `{0}`")]
    NoType(&'static str),
    #[error("kernel BTF: cannot find `{ty}.{field}`: {reason}")]
    NoField {
        ty: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("kernel BTF: `{ty}.{field}` is a bit field, expected a byte-aligned field")]
    BitField {
        ty: &'static str,
        field: &'static str,
    },
}

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::InvalidOffset,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// What the file probe needs from the kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeBtf {
    /// Field offsets (`file_slot_btf_id` and `uring_req_btf_id` are left 0 here: see `globals`).
    pub offsets: KernelOffsets,
    /// Set when the probe casts descriptor-table slots with `bpf_rdonly_cast`.
    pub rdonly_cast: Option<RdonlyCast>,
}

/// The BTF ids the `bpf_rdonly_cast` walk needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdonlyCast {
    /// The kfunc itself, for the call instruction the loader emits.
    pub func: u32,
    /// `struct kiocb`, whose first member is the `struct file *` read out of a slot.
    pub slot_type: u32,
    /// `struct io_kiocb`, an io_uring request (0 on a kernel without io_uring).
    pub uring_req_type: u32,
}

impl ProbeBtf {
    /// The probe's read-only global: the offsets, and the slot type when the kfunc is used.
    pub fn globals(&self) -> KernelOffsets {
        KernelOffsets {
            file_slot_btf_id: self.rdonly_cast.map_or(0, |c| c.slot_type),
            uring_req_btf_id: self.rdonly_cast.map_or(0, |c| c.uring_req_type),
            ..self.offsets
        }
    }

    /// The same without `bpf_rdonly_cast`: the walk of kernels before 6.2.
    pub fn without_kfuncs(&self) -> Self {
        Self {
            rdonly_cast: None,
            ..*self
        }
    }

    /// How the probe walks from a descriptor to its file, for `check` and the start-up log.
    pub fn file_walk(&self) -> &'static str {
        if self.rdonly_cast.is_some() {
            "direct loads (bpf_rdonly_cast)"
        } else {
            "direct loads for descriptors 0-63 of an unexpanded table, bpf_probe_read_kernel otherwise"
        }
    }
}

/// `helpers` makes the probe walk without `bpf_rdonly_cast` even where the kernel has it: an escape
/// hatch, and how the tests cover the walk older kernels use. `refused-kfunc` makes the loader emit
/// a call the verifier refuses (a kernel function that is not a kfunc), as a kernel that does not
/// allow the kfunc for tracepoints would: how the tests cover the agent's fallback to helpers.
pub const FILE_WALK_ENV: &str = "CREDWATCH_FILE_WALK";

/// Reads what the file probe needs from a BTF file; `bpf_rdonly_cast` is used when the kernel has
/// it, unless `CREDWATCH_FILE_WALK` says otherwise.
pub fn probe_btf(path: &Path) -> Result<ProbeBtf, Error> {
    let types = parse(path)?;
    let offsets = kernel_offsets(&types)?;
    let rdonly_cast = match std::env::var(FILE_WALK_ENV).as_deref() {
        Ok("helpers") => None,
        Ok("refused-kfunc") => refused_cast(&types),
        Ok(other) if !other.is_empty() => {
            tracing::warn!(
                value = other,
                "{FILE_WALK_ENV} is neither `helpers` nor `refused-kfunc`; ignored"
            );
            rdonly_cast(&types)
        }
        _ => rdonly_cast(&types),
    };
    Ok(ProbeBtf {
        offsets,
        rdonly_cast,
    })
}

impl ProbeBtf {
    /// The same with a `bpf_rdonly_cast` call the verifier refuses (see `FILE_WALK_ENV`).
    pub fn with_refused_kfunc(&self, path: &Path) -> Result<Self, Error> {
        let types = parse(path)?;
        Ok(Self {
            rdonly_cast: Some(refused_cast(&types).ok_or(Error::NoType("vfs_open"))?),
            ..*self
        })
    }
}

/// `vfs_open`: a kernel function in BTF that is not a kfunc, so the verifier refuses a call of it;
/// with the real slot type, so that only the call is wrong.
fn refused_cast(types: &TypeInformation) -> Option<RdonlyCast> {
    let func = types.id_of("vfs_open")?;
    matches!(types.from_id(func)?, TypeVariant::Func(_)).then_some(())?;
    Some(RdonlyCast {
        func,
        slot_type: types.id_of("kiocb")?,
        uring_req_type: struct_id(types, "io_kiocb").unwrap_or(0),
    })
}

fn parse(path: &Path) -> Result<TypeInformation, Error> {
    let data = std::fs::read(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    TypeInformation::new(&Bytes(data)).map_err(|e| Error::Parse(format!("{e:?}")))
}

/// The `bpf_rdonly_cast` kfunc's id and the id of `struct kiocb`, whose first member is the
/// `struct file *` the probe reads out of a descriptor-table slot; None when either is missing.
fn rdonly_cast(types: &TypeInformation) -> Option<RdonlyCast> {
    let func = types.id_of("bpf_rdonly_cast")?;
    if !matches!(types.from_id(func)?, TypeVariant::Func(_)) {
        return None;
    }
    let kiocb = struct_id(types, "kiocb")?;
    let (member, offset) = types.offset_of(kiocb, "ki_filp").ok()?;
    let pointee = types.pointee_tid(member).ok()?;
    (offset == Offset::ByteOffset(0) && types.name_of(pointee).as_deref() == Some("file"))
        .then_some(RdonlyCast {
            func,
            slot_type: kiocb,
            uring_req_type: struct_id(types, "io_kiocb").unwrap_or(0),
        })
}

/// The BTF id of `struct <name>`.
fn struct_id(types: &TypeInformation, name: &str) -> Option<u32> {
    let id = types.id_of(name)?;
    matches!(types.from_id(id)?, TypeVariant::Struct(_)).then_some(id)
}

/// The byte offset of `ty.field`.
fn field(types: &TypeInformation, ty: &'static str, field: &'static str) -> Result<u32, Error> {
    let id = types.id_of(ty).ok_or(Error::NoType(ty))?;
    match types.offset_of(id, field) {
        Ok((_, Offset::ByteOffset(off))) => Ok(off),
        Ok((_, Offset::BitOffsetAndSize(..))) => Err(Error::BitField { ty, field }),
        Err(e) => Err(Error::NoField {
            ty,
            field,
            reason: format!("{e:?}"),
        }),
    }
}

/// Where a completing io_uring request keeps its opcode, its result and, for an open, the
/// fixed-file slot it asked for: `(opcode, res, file_slot)` offsets in `struct io_kiocb`. The
/// open's command (`struct io_open`) overlays the request's first bytes (`io_kiocb_to_cmd`);
/// None when the kernel has no io_uring or the layout is not that one.
fn uring_offsets(types: &TypeInformation) -> Option<(u32, u32, u32)> {
    let opcode = field(types, "io_kiocb", "opcode").ok()?;
    let res = field(types, "io_kiocb", "cqe").ok()? + field(types, "io_cqe", "res").ok()?;
    let cmd = field(types, "io_kiocb", "cmd").ok()?;
    let slot = field(types, "io_open", "file_slot").ok()?;
    (cmd == 0 && opcode > 0 && res > 0).then_some((opcode, res, slot))
}

fn kernel_offsets(types: &TypeInformation) -> Result<KernelOffsets, Error> {
    let field = |ty, f| field(types, ty, f);
    let (uring_req_opcode, uring_req_res, uring_open_file_slot) =
        uring_offsets(types).unwrap_or_default();
    Ok(KernelOffsets {
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
        file_f_inode: field("file", "f_inode")?,
        file_f_mode: field("file", "f_mode")?,
        inode_i_ino: field("inode", "i_ino")?,
        inode_i_sb: field("inode", "i_sb")?,
        inode_i_mode: field("inode", "i_mode")?,
        sb_s_dev: field("super_block", "s_dev")?,
        files_fd_array: field("files_struct", "fd_array")?,
        skb_len: field("sk_buff", "len")?,
        skb_data: field("sk_buff", "data")?,
        sock_protocol: field("sock", "sk_protocol")?,
        // Absent from kernels built without IPv6: the auth-call sensor then skips IPv6 connects,
        // and the file sensor, which shares these offsets, loads all the same.
        sock_v6_daddr: field("sock_common", "skc_v6_daddr").unwrap_or(0),
        file_slot_btf_id: 0,
        uring_req_opcode,
        uring_req_res,
        uring_open_file_slot,
        uring_req_btf_id: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("no {VMLINUX_BTF} on this machine; nothing to check");
            return;
        }
        let btf = probe_btf(path).expect("offsets");
        let off = btf.offsets;
        // The walk's first field cannot be at offset 0 of task_struct (thread_info/state is).
        assert!(off.task_files > 0, "{off:?}");
        assert!(off.file_f_inode > 0 && off.inode_i_ino > 0, "{off:?}");
        assert_ne!(off.inode_i_ino, off.inode_i_sb);
        assert_eq!(off.file_slot_btf_id, 0, "set only by globals(): {btf:?}");
        assert_eq!(off.uring_req_btf_id, 0, "set only by globals(): {btf:?}");
        assert_eq!(
            btf.without_kfuncs().globals().uring_req_btf_id,
            0,
            "helper reads without the kfunc"
        );
        // io_uring: where the kernel has it, the three offsets are all there (a request starts
        // with its file/command union, so none is 0 but the slot's own small offset).
        if std::path::Path::new("/proc/sys/kernel/io_uring_disabled").exists() {
            assert!(off.uring_req_opcode > 0 && off.uring_req_res > 0, "{off:?}");
            assert!(
                off.uring_open_file_slot > 0 && off.uring_open_file_slot < 64,
                "{off:?}"
            );
            if let Some(cast) = btf.rdonly_cast {
                assert!(cast.uring_req_type > 0, "{cast:?}");
            }
        }
        if let Some(cast) = btf.rdonly_cast {
            assert_ne!(cast.func, cast.slot_type);
            assert_eq!(btf.globals().file_slot_btf_id, cast.slot_type);
            assert_eq!(btf.globals().uring_req_btf_id, cast.uring_req_type);
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, b"not btf at all").unwrap();
        let err = probe_btf(&p).unwrap_err().to_string();
        assert!(err.contains("cannot parse kernel BTF"), "{err}");
        let err = probe_btf(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
