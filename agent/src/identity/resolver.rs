//! Finding the cgroup v2 path of a cgroup id (the inode number of its directory, as
//! `bpf_get_current_cgroup_id` returns it), and so the reader behind it.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use dashmap::DashMap;

use super::{parse_cgroup_path, Reader};

/// Finds the cgroup v2 path of a cgroup id (the inode number of its directory).
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    cache: DashMap<u64, String>,
    /// Ids a tree walk did not find (a cgroup already removed), with when: not walked again soon.
    misses: DashMap<u64, std::time::Instant>,
}

/// Paths (and misses) remembered at most.
const MAX_CACHED: usize = 32_768;

/// How long a failed lookup is remembered before the tree is walked again for that id.
const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl CgroupResolver {
    pub fn new(cgroup2_mount: impl Into<PathBuf>) -> Self {
        Self {
            root: cgroup2_mount.into(),
            cache: DashMap::new(),
            misses: DashMap::new(),
        }
    }

    /// Resolves through `/proc/<tgid>/cgroup` when the process still lives (cheap), else by
    /// walking the cgroup tree; results are cached.
    pub fn path_of(&self, cgroup_id: u64, tgid: Option<u32>) -> Option<String> {
        if let Some(p) = self.cache.get(&cgroup_id) {
            return Some(p.clone());
        }
        if let Some(p) = tgid.and_then(|t| self.via_proc(cgroup_id, t)) {
            self.remember(cgroup_id, p.clone());
            return Some(p);
        }
        if self
            .misses
            .get(&cgroup_id)
            .is_some_and(|t| t.elapsed() < MISS_TTL)
        {
            return None;
        }
        let found = self.walk(cgroup_id);
        match &found {
            Some(p) => {
                self.remember(cgroup_id, p.clone());
                self.misses.remove(&cgroup_id);
            }
            None => {
                if self.misses.len() >= MAX_CACHED {
                    self.misses.clear();
                }
                self.misses.insert(cgroup_id, std::time::Instant::now());
            }
        }
        found
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

    /// Breadth-first search of the cgroup tree, caching every directory seen on the way.
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
            if !self.cache.contains_key(&meta.ino()) {
                self.remember(meta.ino(), rel_str.clone());
            }
            if meta.ino() == cgroup_id {
                return Some(rel_str);
            }
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

    /// The reader whose cgroup this is, from its path; `None` when the cgroup is gone (and was
    /// never resolved).
    pub fn reader(&self, cgroup_id: u64) -> Option<Reader> {
        self.path_of(cgroup_id, None).map(|p| parse_cgroup_path(&p))
    }

    /// Caches a path; the cache is bounded (a node's cgroup tree, walked whole, could fill it
    /// with directories no reader uses): past `MAX_CACHED` it starts over.
    fn remember(&self, cgroup_id: u64, path: String) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(cgroup_id, path);
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
        self.cache.remove(&cgroup_id);
        self.misses.remove(&cgroup_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
