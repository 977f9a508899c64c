//! The agent's shared state: known credentials, readers seen, probe status, userspace drops.
//! Kernel counters are not mirrored here; the metrics collector reads them at scrape time.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use credwatch_common::{Credential, InodeKey};
use dashmap::DashMap;
use serde::Serialize;

use crate::{
    credential::{Kind, Parsed},
    identity::Reader,
};

/// How long a credential whose file disappeared (or whose pod went away) keeps its series, so the
/// last counts get scraped and a file that comes back continues its counters. `--series-grace`.
pub const REMOVED_GRACE: Duration = Duration::from_secs(300);
/// Distinct reader cgroups remembered; beyond this new readers are still counted in the kernel
/// but not described (counted as `events_lost_total{stage="cardinality"}`).
pub const MAX_READERS: usize = 16_384;
/// First-read records kept per reader, newest last.
pub const MAX_FIRST_READS_PER_READER: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct CredentialRecord {
    pub id: u32,
    pub namespace: String,
    /// The pod's name, or its uid until pod metadata is known; empty for host credentials.
    pub pod: String,
    pub pod_uid: String,
    pub service_account: String,
    /// The watch root (host) or volume name (Kubernetes).
    pub volume: String,
    /// Path below the volume.
    pub file: String,
    pub path: PathBuf,
    pub kind: Kind,
    pub source: String,
    /// The current generation's inode.
    #[serde(skip)]
    pub inode: InodeKey,
    pub generation: u32,
    pub rotations: u64,
    /// Unix time the current generation was first seen.
    pub generation_seen_at: f64,
    /// Modification time of the current generation's file (its write time).
    pub modified: f64,
    /// What the current generation's content says (claims and dates only, never the value).
    pub parsed: Parsed,
    /// Expiry of each generation seen (newest `MAX_GENERATIONS_KEPT`), for readers that hold an
    /// old one.
    pub generation_expiry: BTreeMap<u32, Option<f64>>,
    /// Every (inode, generation) of this credential in `WATCHED`.
    #[serde(skip)]
    pub watched: Vec<(InodeKey, u32)>,
    /// Set while the file is gone, until the grace period passes.
    #[serde(skip)]
    pub removed_at: Option<Instant>,
    pub present: bool,
}

/// Generations whose expiry is remembered per credential.
pub const MAX_GENERATIONS_KEPT: usize = 32;

impl CredentialRecord {
    /// When the kubelet should have refreshed a projected service-account token: when it is older
    /// than 80% of its lifetime, or older than 24 hours (pkg/kubelet/token/token_manager.go).
    pub fn refresh_due(&self) -> Option<f64> {
        if self.kind != Kind::ServiceaccountToken
            || self.source.starts_with("host")
            || self.pod_uid.is_empty()
        {
            return None;
        }
        let (iat, exp) = (self.parsed.issued?, self.parsed.expiry?);
        Some(iat + ((exp - iat) * 0.8).min(24.0 * 3600.0))
    }

    /// JWT iat / certificate NotBefore, else the generation's write time.
    pub fn issued(&self) -> f64 {
        self.parsed.issued.unwrap_or(if self.modified > 0.0 {
            self.modified
        } else {
            self.generation_seen_at
        })
    }
}

/// A change the kernel's `WATCHED` / `READS` maps must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    Watch(InodeKey, Credential),
    Unwatch(InodeKey),
    /// Forget a credential's read counters (it has been gone longer than the grace period).
    Purge(u32),
}

/// One file of an atomic-writer generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenFile {
    pub generation: u32,
    pub inode: InodeKey,
    pub path: PathBuf,
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
    /// Empty for host credentials.
    pub pod_uid: String,
    pub volume: String,
    pub file: String,
    /// `host`, `secret`, `projected`, `csi/<driver>`, `emptydir`.
    pub source: String,
    /// The visible path.
    pub path: PathBuf,
    /// The current inode; `InodeKey::default()` when the file cannot be resolved (a dangling
    /// symlink): tracked, not watched.
    pub inode: InodeKey,
    pub modified: f64,
    /// Atomic-writer volumes: the generations on disk. Elsewhere a new inode is a new generation.
    pub generations: Option<Generations>,
}

type Identity = (String, String, String);

#[derive(Default, Debug)]
pub struct Credentials {
    by_id: BTreeMap<u32, CredentialRecord>,
    by_identity: HashMap<Identity, u32>,
    next_id: u32,
}

impl Credentials {
    pub fn get(&self, id: u32) -> Option<&CredentialRecord> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &CredentialRecord> {
        self.by_id.values()
    }

    /// Brings the records in line with a complete scan: new files get an id; a new generation
    /// (a new timestamped directory in atomic-writer volumes, a new inode elsewhere) is a
    /// rotation; every generation still on disk stays watched; a file that is gone is unwatched
    /// at once and forgotten after `grace`. Returns the kernel map changes, new inodes first.
    pub fn apply(
        &mut self,
        found: &[Found],
        parse: impl Fn(&Path) -> Parsed,
        now: Instant,
        unix_now: f64,
        grace: Duration,
    ) -> Vec<MapOp> {
        let mut watch_ops = Vec::new();
        let mut unwatch = Vec::new();
        let mut seen = HashSet::new();
        for f in found {
            let identity = (f.pod_uid.clone(), f.volume.clone(), f.file.clone());
            let id = *self.by_identity.entry(identity).or_insert_with(|| {
                self.next_id += 1;
                self.next_id - 1
            });
            seen.insert(id);
            let (current, wanted): (u32, Vec<(InodeKey, u32, PathBuf)>) =
                match (&f.generations, self.by_id.get(&id)) {
                    (Some(g), _) => (
                        g.current,
                        g.files
                            .iter()
                            .map(|gf| (gf.inode, gf.generation, gf.path.clone()))
                            .collect(),
                    ),
                    (None, Some(rec)) if rec.inode == f.inode => (
                        rec.generation,
                        vec![(f.inode, rec.generation, f.path.clone())],
                    ),
                    (None, Some(rec)) => (
                        rec.generation + 1,
                        vec![(f.inode, rec.generation + 1, f.path.clone())],
                    ),
                    (None, None) => (0, vec![(f.inode, 0, f.path.clone())]),
                };
            let rec = self.by_id.entry(id).or_insert_with(|| CredentialRecord {
                id,
                namespace: String::new(),
                pod: f.pod_uid.clone(),
                pod_uid: f.pod_uid.clone(),
                service_account: String::new(),
                volume: f.volume.clone(),
                file: f.file.clone(),
                path: f.path.clone(),
                kind: Kind::Opaque,
                source: f.source.clone(),
                inode: InodeKey::default(),
                generation: current,
                rotations: 0,
                generation_seen_at: unix_now,
                modified: f.modified,
                parsed: Parsed::default(),
                generation_expiry: BTreeMap::new(),
                watched: Vec::new(),
                removed_at: None,
                present: false,
            });
            let first = !rec.present && rec.watched.is_empty() && rec.generation_expiry.is_empty();
            if current != rec.generation || rec.inode != f.inode || first {
                if current > rec.generation {
                    rec.rotations += u64::from(current - rec.generation);
                }
                if current != rec.generation || first {
                    rec.generation_seen_at = unix_now;
                }
                rec.generation = current;
                rec.inode = f.inode;
                rec.path = f.path.clone();
                rec.modified = f.modified;
                rec.parsed = if f.inode == InodeKey::default() {
                    Parsed::default()
                } else {
                    parse(&f.path)
                };
                rec.kind = rec.parsed.kind;
                rec.generation_expiry.insert(current, rec.parsed.expiry);
            }
            for (inode, generation, path) in &wanted {
                if *inode == InodeKey::default() {
                    continue;
                }
                if !rec.watched.contains(&(*inode, *generation)) {
                    watch_ops.push(MapOp::Watch(
                        *inode,
                        Credential {
                            cred_id: id,
                            generation: *generation,
                        },
                    ));
                }
                if !rec.generation_expiry.contains_key(generation) {
                    rec.generation_expiry
                        .insert(*generation, parse(path).expiry);
                }
            }
            while rec.generation_expiry.len() > MAX_GENERATIONS_KEPT {
                rec.generation_expiry.pop_first();
            }
            for (inode, generation) in &rec.watched {
                if !wanted.iter().any(|(i, g, _)| i == inode && g == generation) {
                    unwatch.push(*inode);
                }
            }
            rec.watched = wanted
                .into_iter()
                .filter(|(i, _, _)| *i != InodeKey::default())
                .map(|(i, g, _)| (i, g))
                .collect();
            rec.present = true;
            rec.removed_at = None;
        }
        let mut forget = Vec::new();
        for rec in self.by_id.values_mut() {
            if seen.contains(&rec.id) {
                continue;
            }
            if rec.present {
                rec.present = false;
                rec.removed_at = Some(now);
                unwatch.extend(rec.watched.drain(..).map(|(i, _)| i));
            } else if rec
                .removed_at
                .is_some_and(|t| now.duration_since(t) >= grace)
            {
                forget.push(rec.id);
            }
        }
        // Service accounts: a pod's projected token names it; every credential of the pod gets it.
        let mut pod_sa: HashMap<String, String> = HashMap::new();
        for rec in self.by_id.values() {
            if let (false, Some(sa)) = (rec.pod_uid.is_empty(), &rec.parsed.service_account) {
                if rec.kind == Kind::ServiceaccountToken && rec.present {
                    pod_sa.insert(rec.pod_uid.clone(), sa.clone());
                }
            }
        }
        for rec in self.by_id.values_mut() {
            if let Some(sa) = pod_sa.get(&rec.pod_uid) {
                rec.service_account = sa.clone();
                if rec.kind == Kind::ServiceaccountToken && rec.source == "projected" {
                    rec.source = format!("serviceaccount/{sa}");
                }
            }
        }
        // Never unwatch an inode that a record watches now.
        let watched: HashSet<InodeKey> = self
            .by_id
            .values()
            .flat_map(|r| r.watched.iter().map(|(i, _)| *i))
            .collect();
        let mut ops = watch_ops;
        ops.extend(
            unwatch
                .into_iter()
                .filter(|k| !watched.contains(k))
                .map(MapOp::Unwatch),
        );
        for id in forget {
            if let Some(rec) = self.by_id.remove(&id) {
                self.by_identity
                    .remove(&(rec.pod_uid, rec.volume, rec.file));
                ops.push(MapOp::Purge(id));
            }
        }
        ops
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FirstRead {
    pub credential_id: u32,
    pub volume: String,
    pub file: String,
    pub generation: u32,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// Unix time of the read.
    pub at: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReaderRecord {
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub reader: Reader,
    /// The `container` label value.
    pub container: String,
    pub first_reads: Vec<FirstRead>,
}

/// Drops in userspace, exported with the kernel's in `events_lost_total`.
#[derive(Default, Debug)]
pub struct UserLost {
    /// The decoder's queue was full.
    pub channel: AtomicU64,
    /// A bound on distinct files or readers was reached.
    pub cardinality: AtomicU64,
    /// `WATCHED` was full: a credential could not be watched.
    pub watched_map: AtomicU64,
    /// An event from the kernel did not decode.
    pub decode: AtomicU64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub credentials: Mutex<Credentials>,
    pub readers: DashMap<u64, ReaderRecord>,
    pub lost: UserLost,
    pub probes: Mutex<Vec<ProbeStatus>>,
    /// Reads of purged reader cgroups under aggregate labels (`_node`, `_other_pod`), kept so
    /// those counters never go down: (credential id, label) -> reads.
    pub retired: Mutex<HashMap<(u32, String), crate::metrics::ReaderReads>>,
    pub inventory_done: AtomicBool,
    pub probes_attached: AtomicBool,
}

impl State {
    pub fn ready(&self) -> bool {
        self.inventory_done.load(Ordering::Acquire) && self.probes_attached.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(file: &str, ino: u64) -> Found {
        Found {
            pod_uid: String::new(),
            volume: "/v".into(),
            file: file.into(),
            source: "host".into(),
            path: PathBuf::from("/v").join(file),
            inode: InodeKey::new(1, ino),
            modified: 0.0,
            generations: None,
        }
    }

    fn apply(c: &mut Credentials, f: &[Found], now: Instant) -> Vec<MapOp> {
        c.apply(f, |_| Parsed::default(), now, 0.0, REMOVED_GRACE)
    }

    fn w(cred_id: u32, ino: u64, generation: u32) -> MapOp {
        MapOp::Watch(
            InodeKey::new(1, ino),
            Credential {
                cred_id,
                generation,
            },
        )
    }

    #[test]
    fn lifecycle_new_rotate_remove_return_forget() {
        let mut c = Credentials::default();
        let t0 = Instant::now();
        let k = |ino| InodeKey::new(1, ino);
        assert_eq!(apply(&mut c, &[found("a", 10)], t0), vec![w(0, 10, 0)]);
        assert_eq!(apply(&mut c, &[found("a", 10)], t0), vec![], "steady");
        // Replaced: the new inode is watched before the old one is dropped.
        assert_eq!(
            apply(&mut c, &[found("a", 11)], t0),
            vec![w(0, 11, 1), MapOp::Unwatch(k(10))]
        );
        assert_eq!(c.get(0).unwrap().rotations, 1);
        // Gone: unwatched at once, record kept.
        assert_eq!(apply(&mut c, &[], t0), vec![MapOp::Unwatch(k(11))]);
        assert!(!c.get(0).unwrap().present);
        // Back within the grace period with a new inode: same id, next generation.
        assert_eq!(apply(&mut c, &[found("a", 12)], t0), vec![w(0, 12, 2)]);
        assert_eq!(apply(&mut c, &[], t0), vec![MapOp::Unwatch(k(12))]);
        assert_eq!(
            apply(&mut c, &[], t0 + REMOVED_GRACE),
            vec![MapOp::Purge(0)]
        );
        assert!(c.get(0).is_none());
        // A new file after that gets a fresh id.
        assert_eq!(
            apply(&mut c, &[found("a", 13)], t0 + REMOVED_GRACE),
            vec![w(1, 13, 0)]
        );
    }

    #[test]
    fn inode_moving_between_identities_is_not_unwatched() {
        let mut c = Credentials::default();
        let t0 = Instant::now();
        apply(&mut c, &[found("a", 10), found("b", 20)], t0);
        // `mv a b`: b now has a's inode, a is gone.
        let ops = apply(&mut c, &[found("b", 10)], t0);
        assert!(
            ops.contains(&MapOp::Unwatch(InodeKey::new(1, 20))),
            "{ops:?}"
        );
        assert!(
            !ops.contains(&MapOp::Unwatch(InodeKey::new(1, 10))),
            "{ops:?}"
        );
    }

    #[test]
    fn atomic_writer_generations_stay_watched_while_on_disk() {
        let mut c = Credentials::default();
        let t0 = Instant::now();
        let gen = |current, files: &[(u32, u64)]| {
            let mut f = found(
                "token",
                files.iter().find(|(g, _)| *g == current).unwrap().1,
            );
            f.pod_uid = "uid".into();
            f.generations = Some(Generations {
                current,
                files: files
                    .iter()
                    .map(|(g, i)| GenFile {
                        generation: *g,
                        inode: InodeKey::new(1, *i),
                        path: PathBuf::new(),
                    })
                    .collect(),
            });
            f
        };
        assert_eq!(apply(&mut c, &[gen(0, &[(0, 10)])], t0), vec![w(0, 10, 0)]);
        // New timestamped dir written, ..data not swapped yet.
        assert_eq!(
            apply(&mut c, &[gen(0, &[(0, 10), (1, 11)])], t0),
            vec![w(0, 11, 1)]
        );
        assert_eq!(c.get(0).unwrap().rotations, 0);
        // Swapped: a rotation; the old generation stays watched while its directory exists.
        assert_eq!(apply(&mut c, &[gen(1, &[(0, 10), (1, 11)])], t0), vec![]);
        assert_eq!(
            (c.get(0).unwrap().generation, c.get(0).unwrap().rotations),
            (1, 1)
        );
        // Old directory removed.
        assert_eq!(
            apply(&mut c, &[gen(1, &[(1, 11)])], t0),
            vec![MapOp::Unwatch(InodeKey::new(1, 10))]
        );
        assert_eq!(c.get(0).unwrap().generation_expiry.len(), 2);
    }
}
