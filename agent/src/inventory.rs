//! Host-mode inventory: finds credential files under the watch paths (files, directories, globs),
//! keeps `Credentials` and the kernel's `WATCHED` map in step with them, and follows creation,
//! replacement and deletion with inotify (plus a periodic rescan as a safety net).
use std::{
    collections::{BTreeSet, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use credwatch_common::InodeKey;
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};

use crate::{
    credential, kubelet,
    state::{Found, MapOp, State},
    sys,
};

/// Deepest directory level searched below a watch root.
pub const MAX_DEPTH: usize = 8;
/// Files tracked per watch entry; beyond it files are skipped and counted as cardinality drops.
pub const MAX_FILES_PER_WATCH: usize = 4096;
/// Rescan even without inotify events (a missed event, an unwatchable directory).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Events arriving within this window are folded into one rescan.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// One `--watch` entry: a file, directory or glob. Its root (the directory part before any glob
/// character, or the entry itself when it is a directory) is the `volume` label; a file's path
/// below it is the `file` label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub pattern: String,
    glob: bool,
    /// Components up to the first one with a glob character.
    literal_prefix: PathBuf,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl WatchSpec {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("watch path {pattern:?} is not absolute"));
        }
        let glob = has_glob(pattern);
        if glob {
            glob::Pattern::new(pattern).map_err(|e| format!("watch glob {pattern:?}: {e}"))?;
        }
        let mut literal_prefix = PathBuf::from("/");
        for c in Path::new(pattern).components().skip(1) {
            if has_glob(&c.as_os_str().to_string_lossy()) {
                break;
            }
            literal_prefix.push(c);
        }
        let trimmed = pattern.trim_end_matches('/');
        Ok(Self {
            pattern: if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            },
            glob,
            literal_prefix,
        })
    }

    /// Decided at each scan: a path that does not exist yet is taken as a file, and becomes its
    /// own root if it appears as a directory.
    pub fn root(&self) -> PathBuf {
        let p = &self.literal_prefix;
        if self.glob || p.is_dir() {
            p.clone()
        } else {
            p.parent().unwrap_or(Path::new("/")).to_owned()
        }
    }
}

/// What one pass over the watch paths found.
#[derive(Debug, Default)]
pub struct Scan {
    pub found: Vec<Found>,
    /// Directories to watch with inotify (existing ones only).
    pub dirs: BTreeSet<PathBuf>,
    /// Watch entries with nothing on disk yet.
    pub missing: Vec<String>,
    /// Files skipped by `MAX_FILES_PER_WATCH` / `kubelet::MAX_FILES_PER_VOLUME`.
    pub skipped: u64,
    /// Odd things worth a log line (each is logged once while it lasts).
    pub problems: Vec<String>,
}

/// A file's modification time in Unix seconds.
pub fn modified(m: &std::fs::Metadata) -> f64 {
    m.mtime() as f64 + m.mtime_nsec() as f64 / 1e9
}

pub fn scan(specs: &[WatchSpec]) -> Scan {
    let mut out = Scan::default();
    let mut inodes = HashSet::new();
    for spec in specs {
        let root = spec.root();
        // Watch the nearest existing ancestor of the root so that its creation is seen.
        let mut anchor = root.as_path();
        while !anchor.is_dir() {
            match anchor.parent() {
                Some(p) => anchor = p,
                None => break,
            }
        }
        out.dirs.insert(anchor.to_owned());
        let mut files = Vec::new();
        if spec.glob {
            // Every directory level of the pattern, so new matches at any level are seen.
            let parts: Vec<_> = Path::new(&spec.pattern).components().collect();
            for n in 2..parts.len() {
                let prefix: PathBuf = parts[..n].iter().collect();
                if has_glob(&prefix.to_string_lossy()) {
                    for m in glob::glob(&prefix.to_string_lossy())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if m.is_dir() {
                            out.dirs.insert(m);
                        }
                    }
                }
            }
            let mut matches: Vec<PathBuf> = glob::glob(&spec.pattern)
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            matches.sort();
            for m in matches {
                visit(&m, 0, &mut files, &mut out.dirs);
            }
        } else if Path::new(&spec.pattern).exists() {
            visit(Path::new(&spec.pattern), 0, &mut files, &mut out.dirs);
        }
        if files.is_empty() && !Path::new(&spec.pattern).exists() && !spec.glob {
            out.missing.push(spec.pattern.clone());
        }
        let mut tracked = 0;
        for (path, meta) in files {
            let key = InodeKey::new(sys::kernel_dev(meta.dev()), meta.ino());
            // The same file under two watch entries (a symlinked kubeconfig, say) is one credential.
            if !inodes.insert(key) {
                continue;
            }
            if tracked >= MAX_FILES_PER_WATCH {
                out.skipped += 1;
                continue;
            }
            let file = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            tracked += 1;
            out.found.push(Found {
                pod_uid: String::new(),
                volume: root.to_string_lossy().into_owned(),
                file,
                source: "host".to_owned(),
                path,
                inode: key,
                modified: modified(&meta),
                generations: None,
            });
        }
    }
    out
}

/// Collects regular files at or below `path`. Names starting with `..` are the kubelet atomic
/// writer's internals (the visible names are symlinks into them); `.pub` files are public keys.
fn visit(
    path: &Path,
    depth: usize,
    files: &mut Vec<(PathBuf, std::fs::Metadata)>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    let Ok(meta) = std::fs::metadata(path) else {
        return; // dangling symlink, or gone since listed
    };
    if meta.is_file() {
        if path.extension().is_none_or(|e| e != "pub") {
            files.push((path.to_owned(), meta));
        }
        return;
    }
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return;
    }
    // Do not descend through symlinked directories (loops, and files outside the root).
    if depth > 0 && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return;
    }
    dirs.insert(path.to_owned());
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if name.to_string_lossy().starts_with("..") {
            continue;
        }
        visit(&path.join(name), depth + 1, files, dirs);
    }
}

pub fn specs(patterns: &[String]) -> (Vec<WatchSpec>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for p in patterns {
        match WatchSpec::new(p) {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// Where credentials are looked for.
#[derive(Clone, Debug)]
pub struct Sources {
    pub specs: Vec<WatchSpec>,
    pub kubelet_root: Option<PathBuf>,
    pub sink_volumes: Vec<String>,
    /// How long series of a credential that is gone are kept.
    pub grace: Duration,
}

/// Scans host watch paths and the kubelet root; a file under both is one credential.
pub fn scan_all(sources: &Sources, kubelet: &mut kubelet::Scanner) -> Scan {
    let mut out = scan(&sources.specs);
    if let Some(root) = &sources.kubelet_root {
        let mut k = Scan::default();
        kubelet.scan(root, &sources.sink_volumes, &mut k);
        let host: HashSet<InodeKey> = out.found.iter().map(|f| f.inode).collect();
        out.found.extend(
            k.found
                .into_iter()
                .filter(|f| f.inode == InodeKey::default() || !host.contains(&f.inode)),
        );
        out.dirs.extend(k.dirs);
        out.skipped += k.skipped;
        out.problems.extend(k.problems);
    }
    out
}

/// Applies a scan to the shared state and returns the kernel map changes. Parsing problems
/// (a truncated token, a broken certificate) are logged here, without content.
pub fn apply(state: &State, scan: &Scan, grace: Duration) -> Vec<MapOp> {
    let mut creds = state.credentials.lock().expect("credentials lock");
    creds.apply(
        &scan.found,
        |path| {
            let parsed = credential::parse_file(path);
            if let Some(problem) = &parsed.problem {
                tracing::warn!(path = %path.display(), %problem, "credential tracked as opaque");
            }
            parsed
        },
        Instant::now(),
        sys::unix_now(),
        grace,
    )
}

/// Applies inventory changes to the kernel's maps.
pub type MapSink = Box<dyn Fn(&[MapOp]) + Send + Sync>;

/// Keeps the inventory current until the process ends. `sink` applies map changes to the kernel.
pub struct Watcher {
    sources: Sources,
    kubelet: kubelet::Scanner,
    warned_problems: HashSet<String>,
    state: Arc<State>,
    sink: MapSink,
    inotify_dirs: HashSet<PathBuf>,
    warned_missing: HashSet<String>,
    last_skipped: u64,
}

impl Watcher {
    pub fn new(sources: Sources, state: Arc<State>, sink: MapSink) -> Self {
        Self {
            sources,
            kubelet: kubelet::Scanner::default(),
            warned_problems: HashSet::new(),
            state,
            sink,
            inotify_dirs: HashSet::new(),
            warned_missing: HashSet::new(),
            last_skipped: 0,
        }
    }

    /// One full pass: scan, apply, update kernel maps. Returns the directories to watch.
    pub fn rescan(&mut self) -> BTreeSet<PathBuf> {
        let scan = scan_all(&self.sources, &mut self.kubelet);
        for p in &scan.problems {
            if self.warned_problems.insert(p.clone()) {
                tracing::warn!("{p}");
            }
        }
        self.warned_problems.retain(|p| scan.problems.contains(p));
        for m in &scan.missing {
            if self.warned_missing.insert(m.clone()) {
                // Most hosts lack most of the built-in locations: only configured paths warn.
                if crate::config::DEFAULT_WATCH.contains(&m.as_str()) {
                    tracing::debug!(path = %m, "built-in watch path does not exist (yet)");
                } else {
                    tracing::warn!(path = %m, "watch path does not exist (yet); it will be watched when it appears");
                }
            }
        }
        self.warned_missing.retain(|m| scan.missing.contains(m));
        if scan.skipped > self.last_skipped {
            self.state
                .lost
                .cardinality
                .fetch_add(scan.skipped - self.last_skipped, Ordering::Relaxed);
            tracing::warn!(
                skipped = scan.skipped,
                limit = MAX_FILES_PER_WATCH,
                "too many files under a watch path; the rest are not tracked"
            );
        }
        self.last_skipped = scan.skipped;
        let ops = apply(&self.state, &scan, self.sources.grace);
        for op in &ops {
            if let MapOp::Watch(_, c) = op {
                let creds = self.state.credentials.lock().expect("credentials lock");
                if let Some(r) = creds.get(c.cred_id) {
                    tracing::info!(pod_uid = %r.pod_uid, volume = %r.volume, file = %r.file, kind = r.kind.as_str(), generation = c.generation, "watching credential");
                }
            }
        }
        (self.sink)(&ops);
        scan.dirs
    }

    /// Runs forever: rescans on inotify events (debounced) and every `RESCAN_INTERVAL`.
    pub async fn run(mut self, first_dirs: BTreeSet<PathBuf>) -> std::io::Result<()> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let mut add = |dirs: &BTreeSet<PathBuf>, known: &mut HashSet<PathBuf>| {
            known.retain(|d| dirs.contains(d));
            for d in dirs {
                if !known.contains(d) && watches.add(d, mask).is_ok() {
                    known.insert(d.clone());
                }
            }
        };
        add(&first_dirs, &mut self.inotify_dirs);
        let mut stream = inotify.into_event_stream([0u8; 8192])?;
        // Rescan often enough that series of removed credentials go soon after their grace period.
        let period = RESCAN_INTERVAL
            .min(self.sources.grace / 2)
            .max(Duration::from_millis(500));
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = stream.next() => {
                    if ev.is_none() { return Ok(()); }
                    // Fold a burst (an atomic writer's several steps) into one pass.
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {}
                }
                _ = tick.tick() => {}
            }
            let dirs = self.rescan();
            add(&dirs, &mut self.inotify_dirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_roots() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let s = WatchSpec::new(d).unwrap();
        assert_eq!(s.root(), dir.path());
        let s = WatchSpec::new(&format!("{d}/later")).unwrap();
        assert_eq!(s.root(), dir.path(), "missing: taken as a file");
        std::fs::create_dir(dir.path().join("later")).unwrap();
        assert_eq!(
            s.root(),
            dir.path().join("later"),
            "appeared as a directory"
        );
        let s = WatchSpec::new("/home/*/.kube/config").unwrap();
        assert_eq!(s.root(), PathBuf::from("/home"));
        let s = WatchSpec::new("/etc/kubernetes/*.conf").unwrap();
        assert_eq!(s.root(), PathBuf::from("/etc/kubernetes"));
        assert!(WatchSpec::new("relative/path")
            .unwrap_err()
            .contains("not absolute"));
        assert!(WatchSpec::new("/a/[b").is_err());
    }

    #[test]
    fn scan_finds_files_dedupes_inodes_and_skips_internals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("vol/..2026_01_01")).unwrap();
        std::fs::write(root.join("vol/..2026_01_01/token"), "t").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", root.join("vol/..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", root.join("vol/token")).unwrap();
        std::fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
        std::fs::write(root.join("home/alice/.ssh/id_ed25519"), "k").unwrap();
        std::fs::write(root.join("home/alice/.ssh/id_ed25519.pub"), "p").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("vol/dangling")).unwrap();
        let r = root.to_str().unwrap();
        let (specs, errs) = specs(&[
            format!("{r}/vol"),
            format!("{r}/home/*/.ssh/id_*"),
            format!("{r}/vol/token"), // same inode as vol/token above
            format!("{r}/not/there/yet"),
        ]);
        assert!(errs.is_empty());
        let s = scan(&specs);
        let got: Vec<(String, String)> = s
            .found
            .iter()
            .map(|f| (f.volume.clone(), f.file.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (format!("{r}/vol"), "token".to_owned()),
                (format!("{r}/home"), "alice/.ssh/id_ed25519".to_owned()),
            ]
        );
        assert_eq!(s.missing, vec![format!("{r}/not/there/yet")]);
        assert!(
            s.dirs.contains(&root.join("home/alice/.ssh")),
            "{:?}",
            s.dirs
        );
        assert!(
            s.dirs.contains(&root.join("home/alice")),
            "glob levels are watched: {:?}",
            s.dirs
        );
        assert!(
            s.dirs.contains(root),
            "nearest existing ancestor of a missing path: {:?}",
            s.dirs
        );
    }

    #[test]
    fn scan_caps_files_per_watch() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(MAX_FILES_PER_WATCH + 3) {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let (specs, _) = specs(&[dir.path().to_string_lossy().into_owned()]);
        let s = scan(&specs);
        assert_eq!(s.found.len(), MAX_FILES_PER_WATCH);
        assert_eq!(s.skipped, 3);
    }
}
