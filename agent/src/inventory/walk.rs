//! The one directory walker of the inventory, for host watch roots and kubelet volumes alike.
//!
//! Names starting with `..` are skipped: they are the kubelet atomic writer's internals (the
//! visible names are symlinks into them). A symlinked directory below the root is not entered
//! (loops, and files outside the root); the root itself may be a symlink (a volume's `..data`).
use std::{
    collections::BTreeSet,
    fs::Metadata,
    path::{Path, PathBuf},
};

#[derive(Clone, Copy, Debug)]
pub struct Walk {
    /// Files at most this many levels below the root are found (the root's own entries are at 1).
    pub max_depth: usize,
    /// Leave out `*.pub` files: public keys are not credentials.
    pub skip_public_keys: bool,
    /// Report dangling symlinks too: still a name a process may try (tracked, unwatchable).
    pub keep_dangling: bool,
}

/// A file the walk found.
#[derive(Debug)]
pub struct Walked {
    pub path: PathBuf,
    /// The path below the root (empty when the root is the file).
    pub rel: PathBuf,
    /// `None` for a dangling symlink.
    pub meta: Option<Metadata>,
}

impl Walk {
    /// The regular files at or below `root`, in name order; every directory listed goes to `dirs`.
    pub fn files(&self, root: &Path, dirs: &mut BTreeSet<PathBuf>) -> Vec<Walked> {
        let mut out = Vec::new();
        self.visit(root, Path::new(""), &mut out, dirs);
        out
    }

    fn visit(&self, root: &Path, rel: &Path, out: &mut Vec<Walked>, dirs: &mut BTreeSet<PathBuf>) {
        // `join("")` would add a trailing slash, which a file's path cannot take.
        let path = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        let depth = rel.components().count();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(_) => {
                // A dangling symlink, or gone since listed.
                if self.keep_dangling && std::fs::symlink_metadata(&path).is_ok() {
                    out.push(Walked {
                        path,
                        rel: rel.to_owned(),
                        meta: None,
                    });
                }
                return;
            }
        };
        if meta.is_file() {
            if !(self.skip_public_keys && path.extension().is_some_and(|e| e == "pub")) {
                out.push(Walked {
                    path,
                    rel: rel.to_owned(),
                    meta: Some(meta),
                });
            }
            return;
        }
        if !meta.is_dir() || depth >= self.max_depth {
            return;
        }
        if depth > 0 && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
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
