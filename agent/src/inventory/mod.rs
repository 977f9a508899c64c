//! What credentials are on disk, and what each one is: host watch paths (`host`), the kubelet's
//! pod volumes (`kubelet`), one directory walker for both (`walk`), what a file's content says
//! (`content`: JWT claims and certificate dates, never the value), and following all of it with
//! inotify and periodic rescans (`watcher`). Produces `Scan`s; it keeps no agent state.
pub mod beneath;
pub mod content;
pub mod host;
pub mod kubelet;
pub mod walk;
pub mod watcher;

use std::{
    collections::{BTreeSet, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use credwatch_common::file::InodeKey;

pub use beneath::Beneath;
pub use host::{specs, WatchSpec};

use crate::sys;

/// One file of an atomic-writer generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenFile {
    pub generation: u32,
    pub inode: InodeKey,
    /// Its file in the generation's `..<timestamp>` directory.
    pub at: Beneath,
}

/// The generations of a file in an atomic-writer volume that are on disk now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generations {
    pub current: u32,
    pub files: Vec<GenFile>,
}

/// One file a scan found: its identity (pod uid, volume, file) and what it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Empty for host credentials. (This and `volume`, `source` are shared by a volume's files.)
    pub pod_uid: Arc<str>,
    pub volume: Arc<str>,
    pub file: String,
    /// `host`, `secret`, `projected`, `csi/<driver>`, `emptydir`.
    pub source: Arc<str>,
    /// The visible path.
    pub path: PathBuf,
    /// How the agent opens the current file: below a trusted root, no symlink followed.
    pub at: Beneath,
    /// The current inode; `InodeKey::default()` when the file cannot be resolved (a dangling
    /// symlink): tracked, not watched.
    pub inode: InodeKey,
    pub modified: f64,
    /// Atomic-writer volumes: the generations on disk. Elsewhere a new inode is a new generation.
    pub generations: Option<Generations>,
}

/// What one pass over the watch paths found.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    /// Directories to watch with inotify (existing ones only).
    pub dirs: BTreeSet<PathBuf>,
    /// Watch entries with nothing on disk yet.
    pub missing: Vec<String>,
    /// Files skipped by `host::MAX_FILES_PER_WATCH` / `kubelet::MAX_FILES_PER_VOLUME`.
    pub skipped: u64,
    /// Odd things worth a log line (each is logged once while it lasts).
    pub problems: Vec<String>,
    /// Files found under a second identity (see `one_identity_per_inode`).
    pub shared: u64,
    /// Kernel device numbers of the tmpfs mounts that hold kubelet credential volumes (each
    /// such volume is a mount of its own): reads of files there that are not watched yet are
    /// counted by inode until a scan names them.
    pub volume_devs: BTreeSet<u32>,
}

/// Where credentials are looked for.
#[derive(Clone, Debug)]
pub struct Sources {
    pub specs: Vec<WatchSpec>,
    /// The node's `/` as the agent sees it (`/host` in the DaemonSet): the specs' paths are below.
    pub host_root: PathBuf,
    pub kubelet_root: Option<PathBuf>,
    pub sink_volumes: Vec<String>,
    /// CSI drivers whose volumes hold credentials.
    pub csi_drivers: Vec<String>,
    /// How long series of a credential that is gone are kept.
    pub grace: Duration,
}

impl Sources {
    /// Where the configuration says to look; a bad watch entry is an error naming each.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, String> {
        let (specs, errors) = specs(&cfg.watch);
        if !errors.is_empty() {
            return Err(format!("bad watch entries: {}", errors.join("; ")));
        }
        Ok(Sources {
            specs,
            host_root: cfg.host_root.clone(),
            kubelet_root: Some(cfg.kubelet_root.clone()),
            sink_volumes: cfg.credential_sink_volumes.clone(),
            csi_drivers: cfg.credential_csi_drivers.clone(),
            grace: cfg.series_grace,
        })
    }
}

/// Scans host watch paths and the kubelet root; a file under both is one credential (the host's).
pub fn scan_all(sources: &Sources, generations: &mut kubelet::GenerationNumbers) -> Scan {
    let mut out = host::scan(&sources.specs, &sources.host_root);
    if let Some(root) = &sources.kubelet_root {
        let mut k = Scan::default();
        let kinds = kubelet::VolumeKinds {
            sinks: &sources.sink_volumes,
            csi_drivers: &sources.csi_drivers,
        };
        kubelet::scan(root, &kinds, generations, &mut k);
        let host: HashSet<InodeKey> = out.found.iter().map(|f| f.inode).collect();
        out.found.extend(
            k.found
                .into_iter()
                .filter(|f| f.inode == InodeKey::default() || !host.contains(&f.inode)),
        );
        out.dirs.extend(k.dirs);
        out.skipped += k.skipped;
        out.problems.extend(k.problems);
        out.volume_devs.extend(k.volume_devs);
    }
    one_identity_per_inode(&mut out);
    out
}

/// One inode, one credential: the first identity that holds a file (host entries, then pods in
/// uid order) counts its reads; the same inode under another identity (a ReadWriteMany volume
/// two pods mount, a hard link) is tracked there but not watched, logged and counted in
/// `Scan::shared`. Without this the kernel map would hold whichever came last, and one pod's
/// reads would be counted as another's.
fn one_identity_per_inode(scan: &mut Scan) {
    let mut owner: std::collections::HashMap<InodeKey, String> = std::collections::HashMap::new();
    for f in &mut scan.found {
        let me = format!("{}/{}/{}", f.pod_uid, f.volume, f.file);
        let inodes = std::iter::once(f.inode).chain(
            f.generations
                .iter()
                .flat_map(|g| g.files.iter().map(|gf| gf.inode)),
        );
        let taken: Vec<(InodeKey, String)> = inodes
            .filter(|i| *i != InodeKey::default())
            .filter_map(|i| owner.get(&i).filter(|o| **o != me).map(|o| (i, o.clone())))
            .collect();
        if let Some((_, first)) = taken.first() {
            scan.problems.push(format!(
                "{me:?} is the same file as {first:?} (a volume two pods mount, or a hard link): its reads are counted for the first"
            ));
            scan.shared += 1;
            if taken.iter().any(|(i, _)| *i == f.inode) {
                f.inode = InodeKey::default();
            }
            if let Some(g) = &mut f.generations {
                g.files
                    .retain(|gf| !taken.iter().any(|(i, _)| *i == gf.inode));
            }
        }
        for i in std::iter::once(f.inode)
            .chain(
                f.generations
                    .iter()
                    .flat_map(|g| g.files.iter().map(|gf| gf.inode)),
            )
            .filter(|i| *i != InodeKey::default())
        {
            owner.entry(i).or_insert_with(|| me.clone());
        }
    }
}

/// A regular file's identity and write time, reached without following a symlink below its
/// root; `None` for anything else (a symlink, a FIFO, gone).
pub fn regular_file(at: &Beneath) -> Option<(InodeKey, f64)> {
    let m = at.metadata()?;
    m.is_file().then(|| (inode_key(&m), modified(&m)))
}

/// A file's identity as the kernel sees it: `(s_dev, i_ino)`.
pub fn inode_key(m: &std::fs::Metadata) -> InodeKey {
    InodeKey::new(sys::kernel_dev(m.dev()), m.ino())
}

/// A file's modification time in Unix seconds.
pub fn modified(m: &std::fs::Metadata) -> f64 {
    m.mtime() as f64 + m.mtime_nsec() as f64 / 1e9
}
