//! The one directory walker of the inventory, for host watch roots and kubelet volumes alike.
//!
//! Names starting with `..` are skipped: they are the kubelet atomic writer's internals (the
//! visible names are symlinks into them). Below the root no symlink is followed, to a file or a
//! directory: the directories walked are ones pods and users write (see `beneath`). The root
//! itself, chosen by the operator or the kubelet, may be one. The walk only lists: what it finds
//! is opened and identified through `Beneath`, which holds even if the tree changes meanwhile.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

#[derive(Clone, Copy, Debug)]
pub struct Walk {
    /// Files at most this many levels below the root are found (the root's own entries are at 1).
    pub max_depth: usize,
    /// Leave out `*.pub` files: public keys are not credentials.
    pub skip_public_keys: bool,
    /// Report symlinks too (never followed): still a name a process may open (tracked, not
    /// watched).
    pub keep_symlinks: bool,
}

impl Walk {
    /// The regular files at or below `root` (and symlinks, with `keep_symlinks`), as paths below
    /// it (empty when the root is the file), in name order; every directory listed goes to
    /// `dirs`. Callers identify and open what it found through `Beneath`.
    pub fn files(&self, root: &Path, dirs: &mut BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        self.visit(root, Path::new(""), &mut out, dirs);
        out
    }

    fn visit(&self, root: &Path, rel: &Path, out: &mut Vec<PathBuf>, dirs: &mut BTreeSet<PathBuf>) {
        // `join("")` would add a trailing slash, which a file's path cannot take.
        let path = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        let depth = rel.components().count();
        let meta = if depth == 0 {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        };
        let Ok(meta) = meta else {
            return; // gone since listed
        };
        if meta.file_type().is_symlink() {
            if self.keep_symlinks {
                out.push(rel.to_owned());
            }
            return;
        }
        if meta.is_file() {
            if !(self.skip_public_keys && path.extension().is_some_and(|e| e == "pub")) {
                out.push(rel.to_owned());
            }
            return;
        }
        if !meta.is_dir() || depth >= self.max_depth {
            return;
        }
        dirs.insert(path.clone());
        let Ok(entries) = std::fs::read_dir(&path) else {
            return;
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            if !name.as_encoded_bytes().starts_with(b"..") {
                self.visit(root, &rel.join(name), out, dirs);
            }
        }
    }
}

/// The names in `dir` (lossily as UTF-8), sorted; nothing when it cannot be listed.
pub fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
