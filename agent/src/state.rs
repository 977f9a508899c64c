//! The agent's shared state: known credentials, readers seen, probe status, userspace drops.
//! Kernel counters are not mirrored here; the metrics collector reads them at scrape time.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use credwatch_common::{Credential, InodeKey};
use dashmap::DashMap;
use serde::Serialize;

use crate::{credential::Kind, identity::Reader};

/// How long a credential whose file disappeared keeps its series (so the last counts get scraped
/// and a file that comes back continues its counters).
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
    #[serde(skip)]
    pub inode: InodeKey,
    pub generation: u32,
    pub rotations: u64,
    /// Unix time the current generation was first seen.
    pub generation_seen_at: f64,
    /// Set while the file is gone, until `REMOVED_GRACE` passes.
    #[serde(skip)]
    pub removed_at: Option<Instant>,
    pub present: bool,
}

/// A change the kernel's `WATCHED` / `READS` maps must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    Watch(InodeKey, Credential),
    Unwatch(InodeKey),
    /// Forget a credential's read counters (it has been gone longer than the grace period).
    Purge(u32),
}

/// One file a scan found: its identity (volume, file) and what it is now (path, inode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub volume: String,
    pub file: String,
    pub path: PathBuf,
    pub inode: InodeKey,
}

#[derive(Default, Debug)]
pub struct Credentials {
    by_id: BTreeMap<u32, CredentialRecord>,
    by_identity: HashMap<(String, String), u32>,
    next_id: u32,
}

impl Credentials {
    pub fn get(&self, id: u32) -> Option<&CredentialRecord> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &CredentialRecord> {
        self.by_id.values()
    }

    /// Brings the records in line with a complete scan: new files get an id, a file whose inode
    /// changed is a new generation (a rotation), a file that is gone is unwatched at once and
    /// forgotten after `grace`. Returns the kernel map changes, new inodes before old ones go away.
    pub fn apply(
        &mut self,
        found: &[Found],
        classify: impl Fn(&Found) -> Kind,
        now: Instant,
        unix_now: f64,
        grace: Duration,
    ) -> Vec<MapOp> {
        let mut ops = Vec::new();
        let mut unwatch = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for f in found {
            let identity = (f.volume.clone(), f.file.clone());
            let id = match self.by_identity.get(&identity) {
                Some(&id) => id,
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.by_identity.insert(identity, id);
                    let rec = CredentialRecord {
                        id,
                        namespace: String::new(),
                        pod: String::new(),
                        pod_uid: String::new(),
                        service_account: String::new(),
                        volume: f.volume.clone(),
                        file: f.file.clone(),
                        path: f.path.clone(),
                        kind: classify(f),
                        source: "host".to_owned(),
                        inode: f.inode,
                        generation: 0,
                        rotations: 0,
                        generation_seen_at: unix_now,
                        removed_at: None,
                        present: true,
                    };
                    ops.push(MapOp::Watch(f.inode, cred(&rec)));
                    self.by_id.insert(id, rec);
                    seen.insert(id);
                    continue;
                }
            };
            seen.insert(id);
            let rec = self.by_id.get_mut(&id).expect("identity maps to a record");
            if rec.inode != f.inode {
                if rec.present {
                    unwatch.push(rec.inode);
                }
                rec.inode = f.inode;
                rec.generation += 1;
                rec.rotations += 1;
                rec.generation_seen_at = unix_now;
                rec.kind = classify(f);
                rec.path = f.path.clone();
                rec.present = true;
                rec.removed_at = None;
                ops.push(MapOp::Watch(f.inode, cred(rec)));
            } else if !rec.present {
                // Same inode back again (e.g. a directory moved away and back).
                rec.present = true;
                rec.removed_at = None;
                ops.push(MapOp::Watch(f.inode, cred(rec)));
            }
        }
        let mut forget = Vec::new();
        for rec in self.by_id.values_mut() {
            if seen.contains(&rec.id) {
                continue;
            }
            if rec.present {
                rec.present = false;
                rec.removed_at = Some(now);
                unwatch.push(rec.inode);
            } else if rec
                .removed_at
                .is_some_and(|t| now.duration_since(t) >= grace)
            {
                forget.push(rec.id);
            }
        }
        // Never unwatch an inode that another record now owns.
        let watched: std::collections::HashSet<InodeKey> = self
            .by_id
            .values()
            .filter(|r| r.present)
            .map(|r| r.inode)
            .collect();
        ops.extend(
            unwatch
                .into_iter()
                .filter(|k| !watched.contains(k))
                .map(MapOp::Unwatch),
        );
        for id in forget {
            if let Some(rec) = self.by_id.remove(&id) {
                self.by_identity.remove(&(rec.volume, rec.file));
                ops.push(MapOp::Purge(id));
            }
        }
        ops
    }
}

fn cred(rec: &CredentialRecord) -> Credential {
    Credential {
        cred_id: rec.id,
        generation: rec.generation,
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
            volume: "/v".into(),
            file: file.into(),
            path: PathBuf::from("/v").join(file),
            inode: InodeKey::new(1, ino),
        }
    }

    fn apply(c: &mut Credentials, f: &[Found], now: Instant) -> Vec<MapOp> {
        c.apply(f, |_| Kind::Opaque, now, 0.0, REMOVED_GRACE)
    }

    #[test]
    fn lifecycle_new_rotate_remove_return_forget() {
        let mut c = Credentials::default();
        let t0 = Instant::now();
        let k = |ino| InodeKey::new(1, ino);
        let w = |ino, generation| {
            MapOp::Watch(
                k(ino),
                Credential {
                    cred_id: 0,
                    generation,
                },
            )
        };
        assert_eq!(apply(&mut c, &[found("a", 10)], t0), vec![w(10, 0)]);
        assert_eq!(apply(&mut c, &[found("a", 10)], t0), vec![], "steady");
        // Replaced: the new inode is watched before the old one is dropped.
        assert_eq!(
            apply(&mut c, &[found("a", 11)], t0),
            vec![w(11, 1), MapOp::Unwatch(k(10))]
        );
        assert_eq!(c.get(0).unwrap().rotations, 1);
        // Gone: unwatched at once, record kept.
        assert_eq!(apply(&mut c, &[], t0), vec![MapOp::Unwatch(k(11))]);
        assert!(!c.get(0).unwrap().present);
        // Back within the grace period with a new inode: same id, next generation.
        assert_eq!(apply(&mut c, &[found("a", 12)], t0), vec![w(12, 2)]);
        assert_eq!(apply(&mut c, &[], t0), vec![MapOp::Unwatch(k(12))]);
        assert_eq!(
            apply(&mut c, &[], t0 + REMOVED_GRACE),
            vec![MapOp::Purge(0)]
        );
        assert!(c.get(0).is_none());
        // A new file after that gets a fresh id.
        let ops = apply(&mut c, &[found("a", 13)], t0 + REMOVED_GRACE);
        assert_eq!(
            ops,
            vec![MapOp::Watch(
                k(13),
                Credential {
                    cred_id: 1,
                    generation: 0
                }
            )]
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
}
