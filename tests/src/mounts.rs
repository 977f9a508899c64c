//! Mounts the harness and its helper binaries make: a private mount namespace, tmpfs mounts,
//! and detaching them again.
use std::{ffi::CString, io, path::Path};

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(rc: i32) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves the calling thread (and what it starts afterwards) into a mount namespace of its own
/// whose mounts propagate nowhere: they go when its last process does.
pub fn private_namespace() -> io::Result<()> {
    let root = c_path(Path::new("/"))?;
    let null = std::ptr::null();
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        check(libc::mount(null, root.as_ptr(), null, flags, null.cast()))
    }
}

/// Mounts a fresh tmpfs on `dir` with mount `options` (`mode=0755`; empty for none).
pub fn tmpfs(dir: &Path, options: &str) -> io::Result<()> {
    let (src, target) = (CString::new("tmpfs")?, c_path(dir)?);
    let opts = CString::new(options)?;
    // SAFETY: valid NUL-terminated strings.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    })
}

/// Detaches the mount on `dir` (`MNT_DETACH` never blocks on a busy mount); nothing when `dir`
/// is no mount point.
pub fn detach(dir: &Path) {
    if let Ok(c) = c_path(dir) {
        // SAFETY: a valid NUL-terminated path; EINVAL when it is no mount point.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
