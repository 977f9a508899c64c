//! Who a reader is, from its cgroup: a container (with pod uid when the path shows one) or a host
//! process (`_node`, with its systemd unit kept for logs).
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use dashmap::DashMap;
use serde::Serialize;

/// The `container` label of host processes.
pub const NODE: &str = "_node";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reader {
    /// A process of the host; `unit` is its systemd unit or scope when the path names one.
    Node { unit: Option<String> },
    Container {
        container_id: String,
        runtime: String,
        pod_uid: Option<String>,
    },
}

impl Reader {
    /// The `container` label: `_node` for host processes, else the first 12 characters of the
    /// container id (until pod metadata names it).
    pub fn container_label(&self) -> String {
        match self {
            Reader::Node { .. } => NODE.to_owned(),
            Reader::Container { container_id, .. } => container_id.chars().take(12).collect(),
        }
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `cri-containerd-<id>.scope` and friends: (runtime, id).
fn runtime_scope(component: &str) -> Option<(&str, &str)> {
    let stem = component.strip_suffix(".scope")?;
    let (runtime, id) = stem.rsplit_once('-')?;
    let runtime = match runtime {
        "cri-containerd" | "containerd" => "containerd",
        "crio" => "cri-o",
        "docker" => "docker",
        "libpod" => "podman",
        _ => return None,
    };
    is_hex_id(id).then_some((runtime, id))
}

/// The pod uid in `kubepods-<qos>-pod<uid with _>.slice` or cgroupfs `pod<uid>`.
fn pod_uid(component: &str) -> Option<String> {
    let uid = if let Some(stem) = component.strip_suffix(".slice") {
        let (_, uid) = stem.rsplit_once("-pod")?;
        if !stem.starts_with("kubepods") {
            return None;
        }
        uid.replace('_', "-")
    } else {
        component.strip_prefix("pod")?.to_owned()
    };
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// Interprets a cgroup v2 path (relative to the cgroup2 mount, as in `/proc/<pid>/cgroup`).
pub fn parse_cgroup_path(path: &str) -> Reader {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_at = parts.iter().position(|p| pod_uid(p).is_some());
    // The container is the deepest runtime scope, or a bare 64-hex directory below a pod;
    // anything below it (sub-cgroups the workload makes) belongs to it.
    for (i, part) in parts.iter().enumerate() {
        let found = runtime_scope(part)
            .map(|(rt, id)| (rt.to_owned(), id.to_owned()))
            .or_else(|| {
                (pod_at.is_some_and(|p| i > p) && is_hex_id(part))
                    .then(|| ("unknown".to_owned(), part.to_string()))
            });
        if let Some((runtime, container_id)) = found {
            return Reader::Container {
                container_id,
                runtime,
                pod_uid: pod_at.filter(|&p| p < i).and_then(|p| pod_uid(parts[p])),
            };
        }
    }
    let unit = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .map(|p| p.to_string());
    Reader::Node { unit }
}

/// Finds the cgroup v2 path of a cgroup id (the inode number of its directory).
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    cache: DashMap<u64, String>,
    /// Ids a tree walk did not find (a cgroup already removed), with when: not walked again soon.
    misses: DashMap<u64, std::time::Instant>,
}

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
            self.cache.insert(cgroup_id, p.clone());
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
                self.cache.insert(cgroup_id, p.clone());
                self.misses.remove(&cgroup_id);
            }
            None => {
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
            self.cache
                .entry(meta.ino())
                .or_insert_with(|| rel_str.clone());
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

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn container(id: &str, runtime: &str, pod: Option<&str>) -> Reader {
        Reader::Container {
            container_id: id.into(),
            runtime: runtime.into(),
            pod_uid: pod.map(Into::into),
        }
    }

    #[test]
    fn cgroup_paths() {
        let uid = "8f1a2b3c-1111-2222-3333-444455556666";
        let cases: Vec<(String, Reader)> = vec![
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f1a2b3c_1111_2222_3333_444455556666.slice/cri-containerd-{ID}.scope"),
                container(ID, "containerd", Some(uid)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod8f1a2b3c_1111_2222_3333_444455556666.slice/crio-{ID}.scope"),
                container(ID, "cri-o", Some(uid)),
            ),
            (
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
                container(ID, "unknown", Some(uid)),
            ),
            (
                format!("/kubepods/pod{uid}/{ID}/nested/sub"),
                container(ID, "unknown", Some(uid)),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                container(ID, "docker", None),
            ),
            (
                "/system.slice/ssh.service".into(),
                Reader::Node { unit: Some("ssh.service".into()) },
            ),
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                Reader::Node { unit: Some("session-3.scope".into()) },
            ),
            // A 64-hex name outside any pod is not a container.
            (format!("/system.slice/{ID}"), Reader::Node { unit: None }),
            ("/".into(), Reader::Node { unit: None }),
            ("".into(), Reader::Node { unit: None }),
            ("/kubepods.slice/kubepods-podnothex.slice/x".into(), Reader::Node { unit: None }),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(Reader::Node { unit: None }.container_label(), "_node");
        assert_eq!(
            container(ID, "containerd", None).container_label(),
            "0123456789ab"
        );
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
