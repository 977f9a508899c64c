//! A FUSE file system whose credential files hang on read, like a stale NFS or CSI mount: the
//! end-to-end tests point the agent at it.
//!
//! usage: credwatch-hung-fs MOUNTPOINT
//!
//! Mounts a flat directory holding `token` (a JWT, read normally) and `id_rsa`, whose reads are
//! never answered. Lookup, getattr, open and readdir answer for every file. Each line on stdin
//! adds a file of that name that hangs too. Prints `mounted MOUNTPOINT` once mounted. When stdin
//! closes it detaches the mount and exits: closing `/dev/fuse` aborts the connection, so every
//! read still waiting fails and no reader stays stuck.
use std::{
    ffi::{CString, OsStr},
    io::BufRead,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};

/// Short, so that files added later are looked up again soon.
const TTL: Duration = Duration::from_millis(100);
/// What an `id_rsa` would weigh; only the size is ever seen.
const HANGING_SIZE: u64 = 1679;
/// `exp` of the readable token: 2100-01-01.
const TOKEN_EXP: u64 = 4_102_444_800;

struct HungFs {
    /// Readable file first (inode 2), then the hanging ones (inodes 3...).
    files: Arc<Mutex<Vec<String>>>,
    token: Vec<u8>,
    /// Reads never answered: a reply dropped would answer EIO, so they are kept.
    pending: Mutex<Vec<ReplyData>>,
    mounted: SystemTime,
}

impl HungFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = match ino {
            1 => (FileType::Directory, 0, 0o755),
            2 => (FileType::RegularFile, self.token.len() as u64, 0o600),
            n if n >= 3 && n - 2 < self.files.lock().unwrap().len() as u64 => {
                (FileType::RegularFile, HANGING_SIZE, 0o600)
            }
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted,
            mtime: self.mounted,
            ctime: self.mounted,
            crtime: self.mounted,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for HungFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let files = self.files.lock().unwrap();
        let found = (u64::from(parent) == 1)
            .then(|| files.iter().position(|f| OsStr::new(f) == name))
            .flatten();
        drop(files);
        match found.and_then(|i| self.attr(i as u64 + 2)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.into()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Without KEEP_CACHE every open drops the file's cached pages first, and waits (in D
        // state) for the page a hung read holds locked: only the agent may be stuck here.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        _size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if u64::from(ino) == 2 {
            let start = (offset as usize).min(self.token.len());
            reply.data(&self.token[start..]);
        } else {
            self.pending.lock().unwrap().push(reply);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let files = self.files.lock().unwrap();
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
        ]
        .into_iter()
        .chain(
            files
                .iter()
                .enumerate()
                .map(|(i, f)| (i as u64 + 2, FileType::RegularFile, f.as_str())),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A JWT whose claims say nothing secret: the agent parses it as a `jwt` expiring at `TOKEN_EXP`.
fn token() -> Vec<u8> {
    let part = |json: &str| URL_SAFE_NO_PAD.encode(json);
    format!(
        "{}.{}.{}",
        part(r#"{"alg":"RS256","typ":"JWT"}"#),
        part(&format!(r#"{{"sub":"hung-fs","exp":{TOKEN_EXP}}}"#)),
        part("not a signature"),
    )
    .into_bytes()
}

fn main() {
    let Some(mountpoint) = std::env::args().nth(1) else {
        eprintln!("usage: credwatch-hung-fs MOUNTPOINT");
        std::process::exit(2);
    };
    let files = Arc::new(Mutex::new(vec!["token".to_owned(), "id_rsa".to_owned()]));
    let fs = HungFs {
        files: files.clone(),
        token: token(),
        pending: Mutex::new(Vec::new()),
        mounted: SystemTime::now(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("credwatch-hung".into()),
    ];
    // Kept until exit: its drop would unmount, which a file still open makes fail (EBUSY).
    let _session = fuser::spawn_mount(fs, &mountpoint, &config).unwrap_or_else(|e| {
        eprintln!("credwatch-hung-fs: cannot mount on {mountpoint}: {e}");
        std::process::exit(1);
    });
    println!("mounted {mountpoint}");
    for line in std::io::stdin().lock().lines() {
        let Ok(name) = line else { break };
        let name = name.trim();
        if !name.is_empty() && !name.contains('/') {
            files.lock().unwrap().push(name.to_owned());
        }
    }
    let c = CString::new(mountpoint).expect("no NUL in the mount point");
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    std::process::exit(0);
}
