//! Kubernetes-mode inventory: the credential volumes under the kubelet root.
//!
//! `<root>/pods/<pod uid>/volumes/<plugin>/<volume>/...` for the plugins that carry credentials:
//! `kubernetes.io~secret`, `kubernetes.io~projected` (service-account tokens), `kubernetes.io~csi`
//! (files under `<volume>/mount`, e.g. the Secrets Store CSI driver) and `kubernetes.io~empty-dir`
//! volumes configured as credential sinks.
//!
//! Secret and projected volumes are written by the kubelet's atomic writer: the files live in a
//! `..<timestamp>` directory, `..data` points to the current one, the visible names are symlinks
//! through `..data`. An update writes a new timestamped directory, renames `..data_tmp` over
//! `..data`, then removes the old directory. Each timestamped directory is a generation; its files
//! are watched for as long as it exists, so a process that still opens an old path is counted
//! against the old generation.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use credwatch_common::InodeKey;

use crate::{
    inventory::{modified, Scan},
    state::{Found, GenFile, Generations},
    sys,
};

const SECRET: &str = "kubernetes.io~secret";
const PROJECTED: &str = "kubernetes.io~projected";
const CSI: &str = "kubernetes.io~csi";
const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// Directory levels searched inside one volume.
const MAX_DEPTH: usize = 6;
/// Files tracked per volume.
pub const MAX_FILES_PER_VOLUME: usize = 512;

/// Generation numbers of the atomic writer's timestamped directories, per volume directory,
/// remembered across scans so that a new directory gets the next number.
#[derive(Debug, Default)]
pub struct Scanner {
    volumes: HashMap<PathBuf, VolumeGenerations>,
}

#[derive(Debug, Default)]
struct VolumeGenerations {
    by_dir: BTreeMap<String, u32>,
    next: u32,
}

impl VolumeGenerations {
    /// Numbers new directories in name order (the names are UTC timestamps); forgets removed ones.
    fn update(&mut self, dirs: &[String]) {
        self.by_dir.retain(|d, _| dirs.contains(d));
        let mut new: Vec<&String> = dirs
            .iter()
            .filter(|d| !self.by_dir.contains_key(*d))
            .collect();
        new.sort();
        for d in new {
            self.by_dir.insert(d.clone(), self.next);
            self.next += 1;
        }
    }
}

/// True for the shapes the kubelet gives pod directories: a UUID, or a static pod's 32-hex hash.
pub fn looks_like_pod_uid(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = name.split('-').collect();
    (parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && hex(p)))
        || (name.len() == 32 && hex(name))
}

fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Regular files below `dir` (relative paths), skipping the atomic writer's `..` entries.
fn files_below(
    dir: &Path,
    rel: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let here = dir.join(rel);
    if depth > 0 || here.is_dir() {
        dirs.insert(here.clone());
    }
    for name in sorted_entries(&here) {
        if name.starts_with("..") {
            continue;
        }
        let r = rel.join(&name);
        let p = dir.join(&r);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => out.push(r),
            Ok(m) if m.is_dir() => files_below(dir, &r, depth + 1, out, dirs),
            // A dangling symlink is still a name a process may try; track it (unwatchable).
            Err(_) if std::fs::symlink_metadata(&p).is_ok() => out.push(r),
            _ => {}
        }
    }
}

fn inode_of(path: &Path) -> Option<(InodeKey, f64)> {
    let m = std::fs::metadata(path).ok()?;
    m.is_file().then(|| {
        (
            InodeKey::new(sys::kernel_dev(m.dev()), m.ino()),
            modified(&m),
        )
    })
}

impl Scanner {
    /// Adds every credential file under `root` to `out`.
    pub fn scan(&mut self, root: &Path, sinks: &[String], out: &mut Scan) {
        let pods = root.join("pods");
        if !pods.is_dir() {
            return;
        }
        out.dirs.insert(root.to_owned());
        out.dirs.insert(pods.clone());
        let mut seen_volumes = BTreeSet::new();
        for uid in sorted_entries(&pods) {
            let pod = pods.join(&uid);
            if !pod.is_dir() {
                continue;
            }
            if !looks_like_pod_uid(&uid) {
                out.problems.push(format!(
                    "pod directory {:?} under {} is not named by a pod uid; its volumes are tracked under that name",
                    uid,
                    pods.display()
                ));
            }
            out.dirs.insert(pod.clone());
            let volumes = pod.join("volumes");
            if volumes.is_dir() {
                out.dirs.insert(volumes.clone());
            }
            for plugin in [SECRET, PROJECTED, CSI, EMPTY_DIR] {
                let pdir = volumes.join(plugin);
                if !pdir.is_dir() {
                    continue;
                }
                out.dirs.insert(pdir.clone());
                for vol in sorted_entries(&pdir) {
                    let vdir = pdir.join(&vol);
                    let (content, source) = match plugin {
                        SECRET => (vdir.clone(), "secret".to_owned()),
                        PROJECTED => (vdir.clone(), "projected".to_owned()),
                        CSI => (vdir.join("mount"), format!("csi/{}", csi_driver(&vdir))),
                        _ if sinks.contains(&vol) => (vdir.clone(), "emptydir".to_owned()),
                        _ => continue,
                    };
                    if plugin == CSI {
                        out.dirs.insert(vdir.clone());
                    }
                    if !content.is_dir() {
                        continue;
                    }
                    seen_volumes.insert(content.clone());
                    self.scan_volume(&uid, &vol, &source, &content, out);
                }
            }
        }
        self.volumes.retain(|v, _| seen_volumes.contains(v));
    }

    fn scan_volume(&mut self, uid: &str, vol: &str, source: &str, dir: &Path, out: &mut Scan) {
        out.dirs.insert(dir.to_owned());
        let data = dir.join("..data");
        let atomic = std::fs::symlink_metadata(&data).is_ok();
        let mut rels = Vec::new();
        let mut generations: Option<(u32, BTreeMap<u32, PathBuf>)> = None;
        if atomic {
            let ts_dirs: Vec<String> = sorted_entries(dir)
                .into_iter()
                .filter(|n| {
                    n.starts_with("..")
                        && n != "..data"
                        && n != "..data_tmp"
                        && dir.join(n).is_dir()
                })
                .collect();
            let gens = self.volumes.entry(dir.to_owned()).or_default();
            gens.update(&ts_dirs);
            let current = std::fs::read_link(&data)
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                .and_then(|name| gens.by_dir.get(&name).copied());
            match current {
                Some(cur) => {
                    let by_gen = gens.by_dir.iter().map(|(d, g)| (*g, dir.join(d))).collect();
                    generations = Some((cur, by_gen));
                    // The visible files are those of the current generation.
                    files_below(&data, Path::new(""), 0, &mut rels, &mut BTreeSet::new());
                }
                None => {
                    out.problems.push(format!(
                        "{}: ..data does not point to an existing timestamped directory; its files are tracked as opaque and cannot be watched",
                        dir.display()
                    ));
                    files_below(dir, Path::new(""), 0, &mut rels, &mut out.dirs);
                }
            }
        } else {
            files_below(dir, Path::new(""), 0, &mut rels, &mut out.dirs);
        }
        if rels.len() > MAX_FILES_PER_VOLUME {
            out.skipped += (rels.len() - MAX_FILES_PER_VOLUME) as u64;
            rels.truncate(MAX_FILES_PER_VOLUME);
        }
        for rel in rels {
            let path = dir.join(&rel);
            let (inode, modified) = inode_of(&path).unwrap_or((InodeKey::default(), 0.0));
            let gens = generations.as_ref().map(|(cur, by_gen)| Generations {
                current: *cur,
                files: by_gen
                    .iter()
                    .filter_map(|(g, gdir)| {
                        let p = gdir.join(&rel);
                        inode_of(&p).map(|(inode, _)| GenFile {
                            generation: *g,
                            inode,
                            path: p,
                        })
                    })
                    .collect(),
            });
            out.found.push(Found {
                pod_uid: uid.to_owned(),
                volume: vol.to_owned(),
                file: rel.to_string_lossy().into_owned(),
                source: source.to_owned(),
                path,
                inode,
                modified,
                generations: gens,
            });
        }
    }
}

/// The CSI driver's name from the kubelet's `vol_data.json` beside the volume's `mount` dir.
fn csi_driver(vdir: &Path) -> String {
    std::fs::read(vdir.join("vol_data.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("driverName")?.as_str().map(str::to_owned))
        .filter(|d| !d.is_empty() && d.len() <= 253)
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uid_shapes() {
        assert!(looks_like_pod_uid("8f1a2b3c-1111-2222-3333-444455556666"));
        assert!(
            looks_like_pod_uid("0123456789abcdef0123456789abcdef"),
            "static pod config hash"
        );
        for bad in [
            "",
            "pod",
            "8f1a2b3c-1111-2222-3333",
            "zz1a2b3c-1111-2222-3333-444455556666",
            "a b",
        ] {
            assert!(!looks_like_pod_uid(bad), "{bad}");
        }
    }

    #[test]
    fn generations_follow_directory_names() {
        let mut g = VolumeGenerations::default();
        g.update(&["..2026_01_01_00_00_00.1".into()]);
        g.update(&[
            "..2026_01_01_00_00_00.1".into(),
            "..2026_01_01_01_00_00.2".into(),
        ]);
        g.update(&["..2026_01_01_01_00_00.2".into()]);
        assert_eq!(g.by_dir.get("..2026_01_01_01_00_00.2"), Some(&1));
        // A directory seen for the first time after several updates were missed: the next number.
        g.update(&["..2026_01_01_03_00_00.3".into()]);
        assert_eq!(g.by_dir.get("..2026_01_01_03_00_00.3"), Some(&2));
        assert_eq!(g.by_dir.len(), 1);
    }

    /// The kubelet's atomic writer, step by step (pkg/volume/util/atomic_writer.go).
    fn write_generation(vol: &Path, ts: &str, files: &[(&str, &str)]) {
        let tsdir = vol.join(ts);
        std::fs::create_dir_all(&tsdir).unwrap();
        for (name, content) in files {
            std::fs::write(tsdir.join(name), content).unwrap();
        }
        let old = std::fs::read_link(vol.join("..data")).ok();
        std::os::unix::fs::symlink(ts, vol.join("..data_tmp")).unwrap();
        std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
        for (name, _) in files {
            let _ = std::os::unix::fs::symlink(format!("..data/{name}"), vol.join(name));
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(vol.join(old)).unwrap();
        }
    }

    #[test]
    fn scans_volumes_and_follows_generations() {
        let root = tempfile::tempdir().unwrap();
        let uid = "8f1a2b3c-1111-2222-3333-444455556666";
        let vols = root.path().join("pods").join(uid).join("volumes");
        let sa = vols.join(PROJECTED).join("kube-api-access-x");
        std::fs::create_dir_all(&sa).unwrap();
        write_generation(
            &sa,
            "..2026_01_01_00_00_00.1",
            &[("token", "t1"), ("ca.crt", "c")],
        );
        let csi = vols.join(CSI).join("vault");
        std::fs::create_dir_all(csi.join("mount")).unwrap();
        std::fs::write(
            csi.join("vol_data.json"),
            r#"{"driverName":"secrets-store.csi.k8s.io"}"#,
        )
        .unwrap();
        std::fs::write(csi.join("mount/db-pass"), "p").unwrap();
        let ed = vols.join(EMPTY_DIR);
        std::fs::create_dir_all(ed.join("vault-secrets")).unwrap();
        std::fs::create_dir_all(ed.join("cache")).unwrap();
        std::fs::write(ed.join("vault-secrets/token"), "v").unwrap();
        std::fs::write(ed.join("cache/junk"), "j").unwrap();

        let mut s = Scanner::default();
        let mut out = Scan::default();
        s.scan(root.path(), &["vault-secrets".into()], &mut out);
        let ids: Vec<(String, String, String)> = out
            .found
            .iter()
            .map(|f| (f.volume.clone(), f.file.clone(), f.source.clone()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (
                    "kube-api-access-x".into(),
                    "ca.crt".into(),
                    "projected".into()
                ),
                (
                    "kube-api-access-x".into(),
                    "token".into(),
                    "projected".into()
                ),
                (
                    "vault".into(),
                    "db-pass".into(),
                    "csi/secrets-store.csi.k8s.io".into()
                ),
                ("vault-secrets".into(), "token".into(), "emptydir".into()),
            ]
        );
        let token = &out.found[1];
        assert_eq!(token.pod_uid, uid);
        assert_eq!(token.generations.as_ref().unwrap().current, 0);
        assert!(out.problems.is_empty(), "{:?}", out.problems);

        // Mid-rotation: the new directory exists, ..data not yet swapped.
        std::fs::create_dir_all(sa.join("..2026_01_01_01_00_00.2")).unwrap();
        std::fs::write(sa.join("..2026_01_01_01_00_00.2/token"), "t2").unwrap();
        let mut out = Scan::default();
        s.scan(root.path(), &[], &mut out);
        let g = out
            .found
            .iter()
            .find(|f| f.file == "token")
            .unwrap()
            .generations
            .clone()
            .unwrap();
        assert_eq!(
            (g.current, g.files.len()),
            (0, 2),
            "both generations watched"
        );
        // Swap and remove the old one.
        std::os::unix::fs::symlink("..2026_01_01_01_00_00.2", sa.join("..data_tmp")).unwrap();
        std::fs::rename(sa.join("..data_tmp"), sa.join("..data")).unwrap();
        std::fs::remove_dir_all(sa.join("..2026_01_01_00_00_00.1")).unwrap();
        let mut out = Scan::default();
        s.scan(root.path(), &[], &mut out);
        let token = out.found.iter().find(|f| f.file == "token").unwrap();
        let g = token.generations.clone().unwrap();
        assert_eq!((g.current, g.files.len()), (1, 1));
        assert_eq!(token.inode, g.files[0].inode);
        // ca.crt vanished from the new generation: it is no longer found.
        assert!(!out.found.iter().any(|f| f.file == "ca.crt"));
    }

    #[test]
    fn odd_trees_are_reported_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let vol = root
            .path()
            .join("pods/not a uid/volumes")
            .join(SECRET)
            .join("creds");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("..2026_gone", vol.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/password", vol.join("password")).unwrap();
        let mut out = Scan::default();
        Scanner::default().scan(root.path(), &[], &mut out);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("not named by a pod uid"));
        assert!(out.problems[1].contains("..data does not point"));
        assert_eq!(out.found.len(), 1);
        assert_eq!(
            out.found[0].inode,
            InodeKey::default(),
            "dangling: unwatchable"
        );
        assert_eq!(out.found[0].pod_uid, "not a uid");
        // No kubelet root at all: nothing, no error.
        let mut out = Scan::default();
        Scanner::default().scan(&root.path().join("missing"), &[], &mut out);
        assert!(out.found.is_empty() && out.problems.is_empty());
    }
}
