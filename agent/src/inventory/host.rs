//! Host credentials: the files under the watch paths (files, directories, globs).
use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
};

use credwatch_common::file::InodeKey;

use super::{regular_file, walk::Walk, Beneath, Found, Scan};

/// Files are found at most this many directory levels below a watch root.
pub const MAX_DEPTH: usize = 8;
/// Files tracked per watch entry; beyond it files are skipped and counted as cardinality drops.
pub const MAX_FILES_PER_WATCH: usize = 4096;

const WALK: Walk = Walk {
    max_depth: MAX_DEPTH,
    skip_public_keys: true,
    keep_symlinks: false,
};

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

    /// The same entry as the agent finds it: below `host_root`, the node's `/` as the agent sees it.
    fn below(&self, host_root: &Path) -> WatchSpec {
        if host_root == Path::new("/") {
            return self.clone();
        }
        let under = |p: &Path| host_root.join(p.strip_prefix("/").unwrap_or(p));
        WatchSpec {
            pattern: under(Path::new(&self.pattern))
                .to_string_lossy()
                .into_owned(),
            glob: self.glob,
            literal_prefix: under(&self.literal_prefix),
        }
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

/// Every file under the watch entries; a file under two entries (a symlinked kubeconfig, say)
/// is one credential, the first entry's.
pub fn scan(specs: &[WatchSpec], host_root: &Path) -> Scan {
    let mut out = Scan::default();
    let mut inodes = HashSet::new();
    for spec in specs {
        scan_spec(&spec.below(host_root), host_root, &mut inodes, &mut out);
    }
    out
}

/// The node's path of a path below `host_root`: what labels and logs show.
fn node_path(host_root: &Path, p: &Path) -> String {
    match p.strip_prefix(host_root) {
        Ok(rel) if host_root != Path::new("/") => format!("/{}", rel.display()),
        _ => p.to_string_lossy().into_owned(),
    }
}

fn scan_spec(spec: &WatchSpec, host_root: &Path, inodes: &mut HashSet<InodeKey>, out: &mut Scan) {
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
    let pattern = Path::new(&spec.pattern);
    let files = if spec.glob {
        glob_files(spec, &root, &mut out.dirs)
    } else if pattern.exists() {
        // The operator named this path: it may be a symlink; nothing below it is followed.
        WALK.files(pattern, &mut out.dirs)
            .into_iter()
            .map(|rel| Beneath::new(pattern, rel))
            .collect()
    } else {
        out.missing.push(node_path(host_root, pattern));
        Vec::new()
    };
    let mut tracked = 0;
    for at in files {
        // Identified through the file itself, reached without symlinks: a symlink or a FIFO
        // planted below the root is not a credential.
        let Some((key, modified)) = regular_file(&at) else {
            continue;
        };
        if !inodes.insert(key) {
            continue;
        }
        if tracked >= MAX_FILES_PER_WATCH {
            out.skipped += 1;
            continue;
        }
        tracked += 1;
        let path = at.path();
        out.found.push(Found {
            pod_uid: "".into(),
            volume: node_path(host_root, &root).into(),
            file: path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned(),
            source: "host".into(),
            inode: key,
            modified,
            generations: None,
            path,
            at,
        });
    }
}

/// The files at or below every match of a glob entry, each below the entry's literal root: what
/// the glob matched is user ground (`/home/*`), so a match reached through a symlink is skipped.
/// Every directory level of the pattern is watched, so that new matches at any level are seen.
fn glob_files(spec: &WatchSpec, root: &Path, dirs: &mut BTreeSet<PathBuf>) -> Vec<Beneath> {
    let matches = |pattern: &str| -> Vec<PathBuf> {
        glob::glob(pattern)
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    };
    let parts: Vec<_> = Path::new(&spec.pattern).components().collect();
    for n in 2..parts.len() {
        let prefix: PathBuf = parts[..n].iter().collect();
        let prefix = prefix.to_string_lossy();
        if has_glob(&prefix) {
            // Real directories only: a user's symlink at a glob level is not followed, even to
            // watch it.
            dirs.extend(matches(&prefix).into_iter().filter(|m| {
                m.strip_prefix(root).is_ok_and(|rel| {
                    Beneath::new(root, rel)
                        .metadata()
                        .is_some_and(|md| md.is_dir())
                })
            }));
        }
    }
    let mut found = matches(&spec.pattern);
    found.sort();
    let mut files = Vec::new();
    for m in found {
        let Ok(rel) = m.strip_prefix(root) else {
            continue;
        };
        if Beneath::new(root, rel).metadata().is_none() {
            continue; // a symlink on the way
        }
        files.extend(WALK.files(&m, dirs).into_iter().map(|w| {
            let below = if w.as_os_str().is_empty() {
                rel.to_owned()
            } else {
                rel.join(w)
            };
            Beneath::new(root, below)
        }));
    }
    files
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
        let s = scan(&specs, Path::new("/"));
        let got: Vec<(String, String)> = s
            .found
            .iter()
            .map(|f| (f.volume.to_string(), f.file.clone()))
            .collect();
        // vol/token is a symlink: not followed below the `vol` entry, found through the entry
        // that names it exactly (the operator's choice).
        assert_eq!(
            got,
            vec![
                (format!("{r}/home"), "alice/.ssh/id_ed25519".to_owned()),
                (format!("{r}/vol"), "token".to_owned()),
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
    fn watch_paths_are_the_nodes_below_the_host_root() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        std::fs::create_dir_all(h.join("etc/kubernetes")).unwrap();
        std::fs::write(h.join("etc/kubernetes/admin.conf"), "k").unwrap();
        std::fs::create_dir_all(h.join("home/bob/.kube")).unwrap();
        std::fs::write(h.join("home/bob/.kube/config"), "k").unwrap();
        let (specs, _) = specs(&[
            "/etc/kubernetes/*.conf".to_owned(),
            "/home/*/.kube/config".to_owned(),
            "/run/secrets".to_owned(),
        ]);
        let s = scan(&specs, h);
        let got: Vec<(&str, &str)> = s
            .found
            .iter()
            .map(|f| (&*f.volume, f.file.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/etc/kubernetes", "admin.conf"),
                ("/home", "bob/.kube/config")
            ]
        );
        assert_eq!(s.found[0].at.path(), h.join("etc/kubernetes/admin.conf"));
        assert_eq!(s.missing, ["/run/secrets"]);
    }

    #[test]
    fn a_symlinked_home_is_neither_walked_nor_watched() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("elsewhere/.ssh")).unwrap();
        std::fs::write(r.join("elsewhere/.ssh/id_rsa"), "k").unwrap();
        std::fs::create_dir_all(r.join("home")).unwrap();
        std::os::unix::fs::symlink(r.join("elsewhere"), r.join("home/eve")).unwrap();
        let (specs, _) = specs(&[format!("{}/home/*/.ssh/id_*", r.display())]);
        let s = scan(&specs, Path::new("/"));
        assert!(s.found.is_empty(), "{:?}", s.found);
        assert!(!s.dirs.contains(&r.join("home/eve")), "{:?}", s.dirs);
        assert!(!s.dirs.contains(&r.join("home/eve/.ssh")), "{:?}", s.dirs);
    }

    #[test]
    fn scan_caps_files_per_watch() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(MAX_FILES_PER_WATCH + 3) {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let (specs, _) = specs(&[dir.path().to_string_lossy().into_owned()]);
        let s = scan(&specs, Path::new("/"));
        assert_eq!(s.found.len(), MAX_FILES_PER_WATCH);
        assert_eq!(s.skipped, 3);
    }
}
