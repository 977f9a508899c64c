//! Finding the cgroup v2 path of a cgroup id (the inode number of its directory, as
//! `bpf_get_current_cgroup_id` returns it), and so the reader behind it.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{parse_cgroup_path, Reader};

/// Finds the cgroup v2 path of a cgroup id (the inode number of its directory).
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    caches: Mutex<Caches>,
}

/// Least recently used entries go first. A tree walk sees every directory of the node, most of
/// which no reader will ask for: those wait in `walked`, a tier of their own, and move to `paths`
/// when asked for, so that a walk over a tree larger than the cache never evicts a path that
/// readers use (and a cgroup seen on a walk still resolves without another).
#[derive(Debug)]
struct Caches {
    /// Paths asked for: by `/proc`, found by a walk, or asked for again after a walk saw them.
    paths: Lru<String>,
    /// Directories a walk went through.
    walked: Lru<String>,
    /// Ids a tree walk did not find (a cgroup already removed), with when: not walked again soon.
    misses: Lru<Instant>,
}

/// An LRU by cgroup id that allocates as it fills: `LruCache::new` reserves its whole capacity
/// up front (1 MiB for these three before the first reader).
#[derive(Debug)]
struct Lru<V> {
    cache: LruCache<u64, V>,
    cap: usize,
}

impl<V> Lru<V> {
    fn new(cap: usize) -> Self {
        Self {
            cache: LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    fn put(&mut self, id: u64, v: V) {
        self.cache.put(id, v);
        if self.cache.len() > self.cap {
            self.cache.pop_lru();
        }
    }
}

impl<V> std::ops::Deref for Lru<V> {
    type Target = LruCache<u64, V>;
    fn deref(&self) -> &Self::Target {
        &self.cache
    }
}

impl<V> std::ops::DerefMut for Lru<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.cache
    }
}

/// Paths asked for, remembered at most.
const MAX_CACHED: usize = 32_768;
/// Directories seen by walks, remembered at most (apart from those).
const MAX_WALKED: usize = 8_192;
/// Failed lookups remembered at most.
const MAX_MISSES: usize = 4_096;

/// How long a failed lookup is remembered before the tree is walked again for that id.
const MISS_TTL: Duration = Duration::from_secs(60);

impl CgroupResolver {
    pub fn new(cgroup2_mount: impl Into<PathBuf>) -> Self {
        Self::with_capacity(cgroup2_mount, MAX_CACHED, MAX_WALKED, MAX_MISSES)
    }

    fn with_capacity(root: impl Into<PathBuf>, paths: usize, walked: usize, misses: usize) -> Self {
        Self {
            root: root.into(),
            caches: Mutex::new(Caches {
                paths: Lru::new(paths),
                walked: Lru::new(walked),
                misses: Lru::new(misses),
            }),
        }
    }

    fn caches(&self) -> MutexGuard<'_, Caches> {
        // Every update leaves the caches consistent: a panic elsewhere cannot spoil them.
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves through `/proc/<tgid>/cgroup` when the process still lives (cheap), else by
    /// walking the cgroup tree; results are cached.
    pub fn path_of(&self, cgroup_id: u64, tgid: Option<u32>) -> Option<String> {
        if let Some(p) = self.cached(cgroup_id) {
            return Some(p);
        }
        if let Some(p) = tgid.and_then(|t| self.via_proc(cgroup_id, t)) {
            self.caches().paths.put(cgroup_id, p.clone());
            return Some(p);
        }
        if self
            .caches()
            .misses
            .peek(&cgroup_id)
            .is_some_and(|t| t.elapsed() < MISS_TTL)
        {
            return None;
        }
        // No lock held while walking: other lookups go on meanwhile.
        let found = self.walk(cgroup_id);
        let mut caches = self.caches();
        match &found {
            Some(p) => {
                caches.walked.pop(&cgroup_id);
                caches.paths.put(cgroup_id, p.clone());
                caches.misses.pop(&cgroup_id);
            }
            None => {
                caches.misses.put(cgroup_id, Instant::now());
            }
        }
        found
    }

    /// A cached path; one a walk saw moves up to the paths asked for.
    fn cached(&self, cgroup_id: u64) -> Option<String> {
        let mut caches = self.caches();
        if let Some(p) = caches.paths.get(&cgroup_id) {
            return Some(p.clone());
        }
        let p = caches.walked.pop(&cgroup_id)?;
        caches.paths.put(cgroup_id, p.clone());
        Some(p)
    }

    fn ino(&self, rel: &str) -> Option<u64> {
        std::fs::metadata(self.root.join(rel.trim_start_matches('/')))
            .ok()
            .map(|m| m.ino())
    }

    fn via_proc(&self, cgroup_id: u64, tgid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        (self.ino(rel) == Some(cgroup_id)).then(|| rel.to_owned())
    }

    /// Breadth-first search of the cgroup tree, caching every directory seen on the way (in the
    /// walked tier).
    fn walk(&self, cgroup_id: u64) -> Option<String> {
        const MAX_DIRS: usize = 100_000;
        let mut queue = std::collections::VecDeque::from([PathBuf::from("/")]);
        let mut visited = 0;
        while let Some(rel) = queue.pop_front() {
            visited += 1;
            if visited > MAX_DIRS {
                break;
            }
            let abs = self.root.join(rel.strip_prefix("/").unwrap_or(&rel));
            let Ok(meta) = std::fs::metadata(&abs) else {
                continue;
            };
            let rel_str = rel.to_string_lossy().into_owned();
            if meta.ino() == cgroup_id {
                return Some(rel_str);
            }
            self.walked_through(meta.ino(), rel_str);
            let Ok(entries) = std::fs::read_dir(&abs) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(rel.join(e.file_name()));
                }
            }
        }
        None
    }

    /// A directory a walk went through, unless it is among the paths asked for already.
    fn walked_through(&self, cgroup_id: u64, path: String) {
        let mut caches = self.caches();
        if !caches.paths.contains(&cgroup_id) {
            caches.walked.put(cgroup_id, path);
        }
    }

    /// The reader whose cgroup this is, from its path; `None` when the cgroup is gone (and was
    /// never resolved).
    pub fn reader(&self, cgroup_id: u64) -> Option<Reader> {
        self.path_of(cgroup_id, None).map(|p| parse_cgroup_path(&p))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the cgroup still exists (its directory is there, with that inode).
    pub fn exists(&self, cgroup_id: u64) -> bool {
        self.path_of(cgroup_id, None)
            .is_some_and(|p| self.ino(&p) == Some(cgroup_id))
    }

    /// Drops what is remembered about a removed cgroup.
    pub fn forget(&self, cgroup_id: u64) {
        let mut caches = self.caches();
        caches.paths.pop(&cgroup_id);
        caches.walked.pop(&cgroup_id);
        caches.misses.pop(&cgroup_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl CgroupResolver {
        /// Which tier holds `id`, without touching the order.
        fn tier(&self, id: u64) -> Option<&'static str> {
            let c = self.caches();
            match (c.paths.contains(&id), c.walked.contains(&id)) {
                (true, _) => Some("paths"),
                (_, true) => Some("walked"),
                _ => None,
            }
        }
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    /// A tree of `n` directories, each with one below it: `d<i>/sub`.
    fn tree(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::create_dir_all(dir.path().join(format!("d{i:03}/sub"))).unwrap();
        }
        dir
    }

    #[test]
    fn capacity_is_respected_and_recently_used_paths_survive() {
        let dir = tree(10);
        let r = CgroupResolver::with_capacity(dir.path(), 3, 2, 2);
        let id = |i: usize| ino(&dir.path().join(format!("d{i:03}")));
        for i in 0..3 {
            assert_eq!(r.path_of(id(i), None), Some(format!("/d{i:03}")));
        }
        // d000 used again: d001 is now the least recently used.
        assert!(r.path_of(id(0), None).is_some());
        assert!(r.path_of(id(3), None).is_some());
        assert_eq!(r.tier(id(0)), Some("paths"));
        assert_ne!(
            r.tier(id(1)),
            Some("paths"),
            "d001 was the least recently used"
        );
        for i in 4..10 {
            r.path_of(id(i), None);
        }
        let c = r.caches();
        assert_eq!((c.paths.len(), c.walked.len()), (3, 2));
        drop(c);
        // Misses are bounded the same way.
        for gone in 1..=5 {
            assert_eq!(r.path_of(u64::MAX - gone, None), None);
        }
        assert_eq!(r.caches().misses.len(), 2);
    }

    #[test]
    fn a_walk_over_a_tree_larger_than_the_cache_keeps_what_was_just_used() {
        let dir = tree(50);
        let r = CgroupResolver::with_capacity(dir.path(), 4, 8, 4);
        let used = ino(&dir.path().join("d007/sub"));
        assert_eq!(r.path_of(used, None).as_deref(), Some("/d007/sub"));
        // A walk through all 101 directories for a cgroup that is not there.
        assert_eq!(r.path_of(u64::MAX, None), None);
        assert_eq!(r.tier(used), Some("paths"));
        assert_eq!(r.caches().walked.len(), 8);
        // A directory that walk saw resolves from the cache (its directory is gone by now) and
        // moves up to the paths asked for.
        let seen = {
            let c = r.caches();
            let (&id, path) = c.walked.peek_lru().unwrap();
            (id, path.clone())
        };
        std::fs::remove_dir(dir.path().join(seen.1.trim_start_matches('/'))).unwrap();
        assert_eq!(r.path_of(seen.0, None), Some(seen.1));
        assert_eq!(r.tier(seen.0), Some("paths"));
        assert_eq!(r.tier(used), Some("paths"));
    }

    #[test]
    fn resolves_own_cgroup() {
        let Some(mount) = crate::sys::cgroup2_mount() else {
            eprintln!("no cgroup2 mount here; nothing to check");
            return;
        };
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let ino = std::fs::metadata(Path::new(&mount).join(rel.trim_start_matches('/')))
            .unwrap()
            .ino();
        let r = CgroupResolver::new(&mount);
        assert_eq!(
            r.path_of(ino, Some(std::process::id())).as_deref(),
            Some(rel)
        );
        let r = CgroupResolver::new(&mount);
        assert_eq!(
            r.path_of(ino, None).as_deref(),
            Some(rel),
            "by walking the tree"
        );
    }
}
