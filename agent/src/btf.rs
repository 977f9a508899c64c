//! Kernel struct offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the file probe's pointer walk gets its field offsets
//! from here, passed to the programs as a read-only global.
use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use credwatch_common::KernelOffsets;

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

/// Reads the offsets the file probe needs from a BTF file.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, Error> {
    let data = std::fs::read(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    let types = TypeInformation::new(&Bytes(data)).map_err(|e| Error::Parse(format!("{e:?}")))?;
    let field = |ty: &'static str, field: &'static str| -> Result<u32, Error> {
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
    };
    Ok(KernelOffsets {
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
        file_f_inode: field("file", "f_inode")?,
        file_f_mode: field("file", "f_mode")?,
        inode_i_ino: field("inode", "i_ino")?,
        inode_i_sb: field("inode", "i_sb")?,
        sb_s_dev: field("super_block", "s_dev")?,
        files_fd_array: field("files_struct", "fd_array")?,
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
        let off = kernel_offsets(path).expect("offsets");
        // The walk's first field cannot be at offset 0 of task_struct (thread_info/state is).
        assert!(off.task_files > 0, "{off:?}");
        assert!(off.file_f_inode > 0 && off.inode_i_ino > 0, "{off:?}");
        assert_ne!(off.inode_i_ino, off.inode_i_sb);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, b"not btf at all").unwrap();
        let err = kernel_offsets(&p).unwrap_err().to_string();
        assert!(err.contains("cannot parse kernel BTF"), "{err}");
        let err = kernel_offsets(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
