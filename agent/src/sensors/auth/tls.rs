//! Finding every OpenSSL in use and putting the TLS uprobes on it.
//!
//! Each process's `/proc/<pid>/maps` names the libraries it mapped; a `libssl.so*` found there is
//! attached through `/proc/<pid>/map_files/<range>`, a magic link to the very file mapped (so a
//! copy inside a container image, in another mount namespace, is reached without resolving any
//! path or symlink of that image). Each distinct file (device, inode) is attached once. Processes
//! are looked at when the agent starts, again whenever one maps a file executable (the kernel
//! says so at once: `sys_enter_mmap`), and new ones every `RESCAN_EVERY` (should that word be lost).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::{
    programs::{ProgramError, UProbe},
    Ebpf,
};

use tokio::sync::mpsc;

use super::probe_points;
use crate::{config::TlsProbePoints, kernel::HookStatus};

pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// After a process maps a library, the loader maps the next ones within a few milliseconds, and
/// the kernel sends no event for them within `MAPPED_QUIET_NS`: waiting twice that long looks
/// at them all in one pass.
const MAPPED_SETTLE: Duration = Duration::from_nanos(2 * credwatch_common::auth::MAPPED_QUIET_NS);

/// Where distributions keep their shared libraries.
const SYSTEM_LIB_DIRS: [&str; 7] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// (program, function): the entry probes on the exported functions (where the library's internal
/// ones are not found, see `probe_points`), then the one return probe on each function.
const ENTRIES: [(&str, &str); 4] = [
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
];
/// The entry probe of OpenSSL 3.3's internal write (`flags` before `written`, as in `SSL_write_ex2`).
const WRITE_FLAGS: &str = "ssl_write_ex2";
const RETURN: &str = "ssl_return";
const FREE: (&str, &str) = ("ssl_free", "SSL_free");
const HANDSHAKE: (&str, &str) = ("ssl_do_handshake", "SSL_do_handshake");

/// A TLS library attached, or why not.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Library {
    /// The path as the first process that mapped it sees it.
    pub path: String,
    pub pid: u32,
    /// Where the probes went: `internal` (the functions the exported ones share) or `exported`.
    pub at: &'static str,
    pub error: Option<String>,
}

pub struct TlsProbes {
    ebpf: Arc<Mutex<Ebpf>>,
    /// Files attached (or refused), by (device, inode).
    files: HashMap<(u64, u64), Library>,
    /// Executables found not to export OpenSSL, by (device, inode); cleared past `MAX_CHECKED`.
    checked: HashSet<(u64, u64)>,
    /// Processes already looked at. A pid reused between two scans is not looked at again (the
    /// price of not reading every process's stat on every scan).
    seen: HashSet<u32>,
    loaded: bool,
    points: TlsProbePoints,
}

impl TlsProbes {
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, points: TlsProbePoints) -> Self {
        Self {
            ebpf,
            points,
            files: HashMap::new(),
            seen: HashSet::new(),
            checked: HashSet::new(),
            loaded: false,
        }
    }

    /// Loads the programs (once); the statuses say whether the kernel took them.
    pub fn load(&mut self) -> Vec<HookStatus> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let names =
            ENTRIES
                .iter()
                .map(|(p, _)| *p)
                .chain([WRITE_FLAGS, RETURN, FREE.0, HANDSHAKE.0]);
        let statuses: Vec<HookStatus> = names
            .map(|name| {
                let r = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("program {name} missing from the object"))
                    .and_then(|p| {
                        let p: &mut UProbe =
                            p.try_into().map_err(|e: ProgramError| e.to_string())?;
                        p.load().map_err(|e| e.to_string())
                    });
                HookStatus {
                    probe: format!("uprobe/libssl/{name}"),
                    attached: r.is_ok(),
                    error: r.err(),
                }
            })
            .collect();
        self.loaded = statuses.iter().all(|s| s.attached);
        statuses
    }

    /// Attaches to the system's own OpenSSL (below `host_root`), whether or not a process maps
    /// it now: short-lived clients (curl, a CronJob) come and go between two scans, and every
    /// process that loads the same file is covered by one attachment (uprobes are per inode).
    pub fn attach_system(&mut self, host_root: &Path) -> Vec<Library> {
        if !self.loaded {
            return Vec::new();
        }
        let mut new = Vec::new();
        for dir in SYSTEM_LIB_DIRS {
            let dir = host_root.join(dir.trim_start_matches('/'));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if !name.to_string_lossy().starts_with("libssl.so") {
                    continue;
                }
                let path = e.path();
                // Host directories, root's: a symlink there (libssl.so -> libssl.so.3) is the
                // distribution's, and the inode check makes each file one attachment.
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.is_file() {
                    let (id, name) = ((meta.dev(), meta.ino()), path.display().to_string());
                    new.extend(self.attach_once(id, &path, name, 0));
                }
            }
        }
        new
    }

    /// Looks at processes not seen before; attaches to libraries not attached before. Returns
    /// the libraries newly attached or refused.
    pub fn scan(&mut self, proc_root: &Path) -> Vec<Library> {
        if !self.loaded {
            return Vec::new();
        }
        let mut live = HashSet::new();
        let mut new = Vec::new();
        for pid in pids(proc_root) {
            live.insert(pid);
            if !self.seen.contains(&pid) {
                new.extend(self.look_at(proc_root, pid));
            }
        }
        self.seen.retain(|pid| live.contains(pid));
        new
    }

    /// Looks at one process (again, if it was before): the libssl files it maps, and its
    /// executable if that exports OpenSSL.
    pub fn look_at(&mut self, proc_root: &Path, pid: u32) -> Vec<Library> {
        if !self.loaded {
            return Vec::new();
        }
        self.seen.insert(pid);
        let mut new = Vec::new();
        for (range, path) in ssl_mappings(proc_root, pid) {
            new.extend(self.attach_mapping(proc_root, pid, &range, &path));
        }
        new.extend(self.attach_static(proc_root, pid));
        new
    }

    fn attach_mapping(
        &mut self,
        proc_root: &Path,
        pid: u32,
        range: &str,
        path: &str,
    ) -> Option<Library> {
        let link = proc_root.join(format!("{pid}/map_files/{range}"));
        let meta = std::fs::metadata(&link).ok()?;
        self.attach_once((meta.dev(), meta.ino()), &link, path.to_owned(), pid)
    }

    /// An executable that links OpenSSL statically and exports it (Node.js): attached through
    /// `/proc/<pid>/exe`, which names the very file the process runs.
    fn attach_static(&mut self, proc_root: &Path, pid: u32) -> Option<Library> {
        let exe = proc_root.join(format!("{pid}/exe"));
        let meta = std::fs::metadata(&exe).ok()?;
        let id = (meta.dev(), meta.ino());
        if self.files.contains_key(&id) || self.checked.contains(&id) {
            return None;
        }
        if !exports_openssl(&exe) {
            if self.checked.len() >= MAX_CHECKED {
                self.checked.clear();
            }
            self.checked.insert(id);
            return None;
        }
        let path = std::fs::read_link(&exe)
            .map_or_else(|_| exe.display().to_string(), |p| p.display().to_string());
        self.attach_once(id, &exe, path, pid)
    }

    /// Attaches to file `id` through `target`, unless it was attached (or refused) before; the
    /// outcome is remembered under `path`, the name the process knows it by.
    fn attach_once(
        &mut self,
        id: (u64, u64),
        target: &Path,
        path: String,
        pid: u32,
    ) -> Option<Library> {
        if self.files.contains_key(&id) {
            return None;
        }
        let (at, result) = self.attach_file(target);
        let lib = Library {
            path,
            pid,
            at,
            error: result.err(),
        };
        self.files.insert(id, lib.clone());
        Some(lib)
    }

    /// Attaches the probes to `target`: on its internal write and read functions where they are
    /// found (and not turned off), else on the exported ones. Returns where, and the outcome.
    fn attach_file(&self, target: &Path) -> (&'static str, Result<(), String>) {
        let internal = match self.points {
            TlsProbePoints::Auto => probe_points::internal(target),
            TlsProbePoints::Exported => None,
        };
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let mut attach = |program: &str, point: UProbeAttachLocation| -> Result<(), String> {
            let p: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or("program missing")?
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            let name = match &point {
                UProbeAttachLocation::Symbol(f) => (*f).to_owned(),
                UProbeAttachLocation::AbsoluteOffset(o) => format!("offset {o:#x}"),
                other => format!("{other:?}"),
            };
            p.attach(point, target, UProbeScope::AllProcesses)
                .map(|_| ())
                .map_err(|e| format!("{name}: {e}"))
        };
        let result = match internal {
            Some(i) => {
                let write = if i.write_flags {
                    WRITE_FLAGS
                } else {
                    "ssl_write_ex"
                };
                [(write, i.write), ("ssl_read_ex", i.read)]
                    .into_iter()
                    .try_for_each(|(program, offset)| {
                        attach(program, offset.into())?;
                        attach(RETURN, offset.into())
                    })
            }
            // SSL_write is the one every OpenSSL has: without its symbol the library is not usable.
            None => ENTRIES.into_iter().try_for_each(|(program, function)| {
                attach(program, function.into())?;
                attach(RETURN, function.into())
            }),
        }
        .and_then(|()| attach(HANDSHAKE.0, HANDSHAKE.1.into()))
        .and_then(|()| attach(FREE.0, FREE.1.into()));
        let at = if internal.is_some() {
            "internal"
        } else {
            "exported"
        };
        (at, result)
    }

    /// Looks at each process `mapped` names as it comes, and scans for new ones every
    /// `RESCAN_EVERY`, until the agent ends.
    pub async fn run(mut self, proc_root: PathBuf, mut mapped: mpsc::Receiver<u32>) {
        let mut tick = tokio::time::interval(RESCAN_EVERY);
        loop {
            let pids = tokio::select! {
                _ = tick.tick() => None,
                Some(pid) = mapped.recv() => {
                    tokio::time::sleep(MAPPED_SETTLE).await;
                    let mut pids = BTreeSet::from([pid]);
                    while let Ok(pid) = mapped.try_recv() {
                        pids.insert(pid);
                    }
                    Some(pids)
                }
            };
            let found_by = if pids.is_some() { "mapping" } else { "scan" };
            let root = proc_root.clone();
            let (this, new) = match tokio::task::spawn_blocking(move || {
                let new = match pids {
                    None => self.scan(&root),
                    Some(pids) => pids
                        .into_iter()
                        .flat_map(|p| self.look_at(&root, p))
                        .collect(),
                };
                (self, new)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            self = this;
            log_libraries(&new, found_by);
        }
    }
}

/// Logs each library attached or refused; `found_by`: `start`, `mapping` (a process just mapped
/// it) or `scan` (the periodic one).
pub fn log_libraries(libs: &[Library], found_by: &str) {
    for l in libs {
        match &l.error {
            None => {
                tracing::info!(path = ?l.path, pid = l.pid, found_by, probes = l.at, "TLS library attached")
            }
            Some(e) => {
                tracing::warn!(path = ?l.path, pid = l.pid, found_by, error = ?e, "TLS library not attached (its calls are seen at L4 only)")
            }
        }
    }
}

/// Executables remembered as checked.
const MAX_CHECKED: usize = 65_536;

/// Whether an ELF file exports `SSL_write` and `SSL_read` in its dynamic symbols: read lazily
/// (section headers and the dynamic symbol table only), so a 100 MB binary costs a few reads.
pub fn exports_openssl(path: &Path) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return false;
    };
    let mut found = (false, false);
    for sym in elf.dynamic_symbols() {
        if sym.is_undefined() {
            continue;
        }
        match sym.name() {
            Ok("SSL_write") => found.0 = true,
            Ok("SSL_read") => found.1 = true,
            _ => {}
        }
        if found == (true, true) {
            return true;
        }
    }
    false
}

/// The processes under `proc_root`, by pid.
pub fn pids(proc_root: &Path) -> impl Iterator<Item = u32> {
    std::fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The mappings of files named `libssl.so*`: (address range as `map_files` names it, path).
pub fn ssl_mappings(proc_root: &Path, pid: u32) -> Vec<(String, String)> {
    let Ok(maps) = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))) else {
        return Vec::new();
    };
    parse_ssl_mappings(&maps)
}

fn parse_ssl_mappings(maps: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(_dev), Some(_ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: String = f.collect::<Vec<_>>().join(" ");
        let name = path.rsplit('/').next().unwrap_or("");
        if name.starts_with("libssl.so") && !out.iter().any(|(_, p)| *p == path) {
            out.push((range.to_owned(), path));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_mappings_are_found_once_each() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r--p 00000000 fe:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
7f0000007000-7f0000008000 r--p 00000000 fe:01 125 /opt/my app/libssl.so.1.1 (deleted)
";
        assert_eq!(
            parse_ssl_mappings(maps),
            [
                (
                    "7f0000000000-7f0000001000".to_owned(),
                    "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned()
                ),
                (
                    "7f0000007000-7f0000008000".to_owned(),
                    "/opt/my app/libssl.so.1.1 (deleted)".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn only_binaries_exporting_openssl_count() {
        assert!(
            !exports_openssl(Path::new("/proc/self/exe")),
            "the test binary"
        );
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if lib.exists() {
            assert!(exports_openssl(lib));
        }
        assert!(!exports_openssl(Path::new("/nonexistent")));
    }
}
