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
    path::{Path, PathBuf},
    sync::Arc,
};

use credwatch_common::file::InodeKey;

use super::{
    regular_file,
    walk::{sorted_entries, Walk},
    Beneath, Found, GenFile, Generations, Scan,
};
use crate::identity::ids::is_pod_uid;

const SECRET: &str = "kubernetes.io~secret";
const PROJECTED: &str = "kubernetes.io~projected";
const CSI: &str = "kubernetes.io~csi";
const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// Files are found at most this many directory levels below a volume.
const MAX_DEPTH: usize = 7;
/// Files tracked per volume.
pub const MAX_FILES_PER_VOLUME: usize = 512;

const WALK: Walk = Walk {
    max_depth: MAX_DEPTH,
    skip_public_keys: false,
    keep_symlinks: true,
};

/// Generation numbers of the atomic writer's timestamped directories, per volume directory,
/// remembered across scans so that a new directory gets the next number.
#[derive(Debug, Default)]
pub struct GenerationNumbers {
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

/// Which volumes besides secret and projected ones hold credentials.
#[derive(Clone, Copy, Debug)]
pub struct VolumeKinds<'a> {
    /// emptyDir volume names used as credential sinks (a Vault agent's `vault-secrets`).
    pub sinks: &'a [String],
    /// CSI drivers whose volumes hold credentials.
    pub csi_drivers: &'a [String],
}

/// Adds every credential file under the kubelet root `root` to `out`.
pub fn scan(root: &Path, kinds: &VolumeKinds, numbers: &mut GenerationNumbers, out: &mut Scan) {
    let pods = root.join("pods");
    if !pods.is_dir() {
        return;
    }
    out.dirs.insert(root.to_owned());
    out.dirs.insert(pods.clone());
    let mut seen_volumes = BTreeSet::new();
    for uid in sorted_entries(&pods) {
        for volume in pod_volumes(&pods, &uid, kinds, out) {
            seen_volumes.insert(volume.dir.clone());
            numbers.scan_volume(&uid, &volume, out);
        }
    }
    numbers.volumes.retain(|v, _| seen_volumes.contains(v));
}

/// A credential volume of a pod.
struct Volume {
    name: String,
    /// `secret`, `projected`, `csi/<driver>`, `emptydir`.
    source: String,
    /// Where its files are (`<volume>/mount` for CSI).
    dir: PathBuf,
}

/// The credential volumes of the pod directory `<pods>/<uid>`.
fn pod_volumes(pods: &Path, uid: &str, kinds: &VolumeKinds, out: &mut Scan) -> Vec<Volume> {
    let pod = pods.join(uid);
    if !pod.is_dir() {
        return Vec::new();
    }
    if !is_pod_uid(uid) {
        out.problems.push(format!(
            "pod directory {uid:?} under {pods:?} is not named by a pod uid; its volumes are tracked under that name"
        ));
    }
    out.dirs.insert(pod.clone());
    let volumes = pod.join("volumes");
    if volumes.is_dir() {
        out.dirs.insert(volumes.clone());
    }
    let mut found = Vec::new();
    for plugin in [SECRET, PROJECTED, CSI, EMPTY_DIR] {
        let pdir = volumes.join(plugin);
        if !pdir.is_dir() {
            continue;
        }
        out.dirs.insert(pdir.clone());
        for name in sorted_entries(&pdir) {
            let vdir = pdir.join(&name);
            let (dir, source) = match plugin {
                SECRET => (vdir, "secret".to_owned()),
                PROJECTED => (vdir, "projected".to_owned()),
                CSI => {
                    // Only credential drivers: a data disk is neither walked nor watched.
                    out.dirs.insert(vdir.clone());
                    let driver = csi_driver(&vdir);
                    if !kinds.csi_drivers.contains(&driver) {
                        continue;
                    }
                    (vdir.join("mount"), format!("csi/{driver}"))
                }
                _ if kinds.sinks.contains(&name) => (vdir, "emptydir".to_owned()),
                _ => continue,
            };
            if dir.is_dir() {
                found.push(Volume { name, source, dir });
            }
        }
    }
    found
}

impl GenerationNumbers {
    fn scan_volume(&mut self, uid: &str, volume: &Volume, out: &mut Scan) {
        let dir = &volume.dir;
        out.dirs.insert(dir.to_owned());
        // Not a sink: the pod writes those itself and could fill the kernel's unseen-read map.
        if volume.source != "emptydir" {
            out.volume_devs.extend(own_tmpfs(dir));
        }
        let generations = if std::fs::symlink_metadata(dir.join("..data")).is_ok() {
            self.atomic_writer_generations(dir, out)
        } else {
            None
        };
        // The visible files are those of the current generation, whose directory the agent
        // found itself (never by following `..data`, which a pod may plant in its own volume).
        let mut files = match &generations {
            Some((cur, by_gen)) => WALK.files(&dir.join(&by_gen[cur]), &mut BTreeSet::new()),
            None => WALK.files(dir, &mut out.dirs),
        };
        if files.len() > MAX_FILES_PER_VOLUME {
            out.skipped += (files.len() - MAX_FILES_PER_VOLUME) as u64;
            files.truncate(MAX_FILES_PER_VOLUME);
        }
        let root: Arc<Path> = Arc::from(dir.as_path());
        let (uid, volume_name, source): (Arc<str>, Arc<str>, Arc<str>) = (
            uid.into(),
            volume.name.as_str().into(),
            volume.source.as_str().into(),
        );
        for rel in files {
            let at = match &generations {
                Some((cur, by_gen)) => Beneath::under(&root, Path::new(&by_gen[cur]).join(&rel)),
                None => Beneath::under(&root, &rel),
            };
            // A symlink (in a volume the pod writes) is tracked under its name, never followed.
            let (inode, modified) = regular_file(&at).unwrap_or((InodeKey::default(), 0.0));
            let gens = generations.as_ref().map(|(cur, by_gen)| Generations {
                current: *cur,
                files: by_gen
                    .iter()
                    .filter_map(|(g, name)| {
                        let at = Beneath::under(&root, Path::new(name).join(&rel));
                        regular_file(&at).map(|(inode, _)| GenFile {
                            generation: *g,
                            inode,
                            at,
                        })
                    })
                    .collect(),
            });
            out.found.push(Found {
                pod_uid: Arc::clone(&uid),
                volume: Arc::clone(&volume_name),
                file: rel.to_string_lossy().into_owned(),
                source: Arc::clone(&source),
                path: dir.join(&rel),
                at,
                inode,
                modified,
                generations: gens,
            });
        }
    }

    /// An atomic-writer volume's current generation and every generation's directory name,
    /// numbering new `..<timestamp>` directories; `None` (a problem) when `..data` does not name
    /// one of them. Only real directories count: a `..x -> /` symlink is not a generation.
    fn atomic_writer_generations(
        &mut self,
        dir: &Path,
        out: &mut Scan,
    ) -> Option<(u32, BTreeMap<u32, String>)> {
        let ts_dirs: Vec<String> = sorted_entries(dir)
            .into_iter()
            .filter(|n| {
                n.starts_with("..")
                    && n != "..data"
                    && n != "..data_tmp"
                    && std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.is_dir())
            })
            .collect();
        let gens = self.volumes.entry(dir.to_owned()).or_default();
        gens.update(&ts_dirs);
        // `..data` must name one of them, as a plain name: never a path elsewhere.
        let current = std::fs::read_link(dir.join("..data"))
            .ok()
            .and_then(|t| t.to_str().map(str::to_owned))
            .and_then(|name| gens.by_dir.get(&name).copied());
        let Some(current) = current else {
            out.problems.push(format!(
                "{dir:?}: ..data does not point to an existing timestamped directory; its files are tracked as opaque and cannot be watched"
            ));
            return None;
        };
        Some((
            current,
            gens.by_dir.iter().map(|(d, g)| (*g, d.clone())).collect(),
        ))
    }
}

/// The kernel device number of `dir` when it is the root of a mount of its own on an anonymous
/// device (tmpfs: major 0), as the kubelet mounts secret and projected volumes.
fn own_tmpfs(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::symlink_metadata(dir).ok()?;
    let parent = std::fs::symlink_metadata(dir.parent()?).ok()?;
    let dev = crate::sys::kernel_dev(me.dev());
    (me.is_dir() && me.dev() != parent.dev() && dev >> 20 == 0).then_some(dev)
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

    const NONE: VolumeKinds = VolumeKinds {
        sinks: &[],
        csi_drivers: &[],
    };

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
        // A data disk: its driver is not a credential driver, its files are not credentials.
        let disk = vols.join(CSI).join("pgdata");
        std::fs::create_dir_all(disk.join("mount")).unwrap();
        std::fs::write(
            disk.join("vol_data.json"),
            r#"{"driverName":"ebs.csi.aws.com"}"#,
        )
        .unwrap();
        std::fs::write(disk.join("mount/table.dat"), "rows").unwrap();
        let ed = vols.join(EMPTY_DIR);
        std::fs::create_dir_all(ed.join("vault-secrets")).unwrap();
        std::fs::create_dir_all(ed.join("cache")).unwrap();
        std::fs::write(ed.join("vault-secrets/token"), "v").unwrap();
        std::fs::write(ed.join("cache/junk"), "j").unwrap();

        let mut s = GenerationNumbers::default();
        let mut out = Scan::default();
        let sinks = ["vault-secrets".to_owned()];
        let drivers = ["secrets-store.csi.k8s.io".to_owned()];
        let kinds = VolumeKinds {
            sinks: &sinks,
            csi_drivers: &drivers,
        };
        scan(root.path(), &kinds, &mut s, &mut out);
        let ids: Vec<(String, String, String)> = out
            .found
            .iter()
            .map(|f| (f.volume.to_string(), f.file.clone(), f.source.to_string()))
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
        assert_eq!(&*token.pod_uid, uid);
        assert_eq!(token.generations.as_ref().unwrap().current, 0);
        assert!(out.problems.is_empty(), "{:?}", out.problems);

        // Mid-rotation: the new directory exists, ..data not yet swapped.
        std::fs::create_dir_all(sa.join("..2026_01_01_01_00_00.2")).unwrap();
        std::fs::write(sa.join("..2026_01_01_01_00_00.2/token"), "t2").unwrap();
        let mut out = Scan::default();
        scan(root.path(), &NONE, &mut s, &mut out);
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
        scan(root.path(), &NONE, &mut s, &mut out);
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
        scan(
            root.path(),
            &NONE,
            &mut GenerationNumbers::default(),
            &mut out,
        );
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("not named by a pod uid"));
        assert!(out.problems[1].contains("..data does not point"));
        assert_eq!(out.found.len(), 1);
        assert_eq!(
            out.found[0].inode,
            InodeKey::default(),
            "dangling: unwatchable"
        );
        assert_eq!(&*out.found[0].pod_uid, "not a uid");
        // No kubelet root at all: nothing, no error.
        let mut out = Scan::default();
        scan(
            &root.path().join("missing"),
            &NONE,
            &mut GenerationNumbers::default(),
            &mut out,
        );
        assert!(out.found.is_empty() && out.problems.is_empty());
    }
}
