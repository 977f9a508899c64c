//! Every credential file known, by identity (pod uid, volume, file): what it is, its generations
//! and which of their inodes the kernel watches. Fed by complete inventory scans; says which
//! changes the kernel's maps must follow.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::BuildHasher as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use credwatch_common::file::{CredentialGeneration, InodeKey};
use serde::Serialize;

use crate::{
    identity::{attribution, PodMeta},
    inventory::{
        content::{Kind, Parsed},
        Beneath, Found,
    },
};

/// Generations whose expiry is remembered per credential.
pub const MAX_GENERATIONS_KEPT: usize = 32;

#[derive(Clone, Debug, Serialize)]
pub struct Credential {
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
    pub parsed: Arc<Parsed>,
    /// Expiry of each generation seen (newest `MAX_GENERATIONS_KEPT`), for readers that hold an
    /// old one.
    pub generation_expiry: GenerationExpiry,
    /// Every (inode, generation) of this credential in `WATCHED`.
    #[serde(skip)]
    pub watched: Vec<(InodeKey, u32)>,
    /// Set while the file is gone, until the grace period passes.
    #[serde(skip)]
    pub removed_at: Option<Instant>,
    /// Added to the inventory's generation numbers of an atomic-writer volume: after a restart
    /// the inventory numbers from 0 again, and the record keeps the numbers the kernel's
    /// counters were made under.
    #[serde(skip)]
    pub generation_offset: u32,
    pub present: bool,
}

/// Expiry by generation (oldest first, at most `MAX_GENERATIONS_KEPT`): a sorted vector, which for
/// the usual one or two generations takes a tenth of a `BTreeMap`'s node (25,000 credentials at
/// 5,000 pods). Serialized as a map, generation -> expiry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationExpiry(Vec<(u32, Option<f64>)>);

impl GenerationExpiry {
    pub fn get(&self, generation: &u32) -> Option<&Option<f64>> {
        self.0
            .binary_search_by_key(generation, |(g, _)| *g)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, generation: &u32) -> bool {
        self.get(generation).is_some()
    }

    pub fn insert(&mut self, generation: u32, expiry: Option<f64>) {
        match self.0.binary_search_by_key(&generation, |(g, _)| *g) {
            Ok(i) => self.0[i].1 = expiry,
            Err(i) => self.0.insert(i, (generation, expiry)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for GenerationExpiry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(g, e)| (g, e)))
    }
}

impl Credential {
    fn new(id: u32, f: &Found, generation: u32, offset: u32, unix_now: f64) -> Self {
        Credential {
            id,
            namespace: String::new(),
            pod: f.pod_uid.to_string(),
            pod_uid: f.pod_uid.to_string(),
            service_account: String::new(),
            volume: f.volume.to_string(),
            file: f.file.clone(),
            path: f.path.clone(),
            kind: Kind::Opaque,
            source: f.source.to_string(),
            inode: InodeKey::default(),
            generation,
            rotations: 0,
            generation_seen_at: unix_now,
            modified: f.modified,
            parsed: Arc::default(),
            generation_expiry: GenerationExpiry::default(),
            watched: Vec::new(),
            removed_at: None,
            generation_offset: offset,
            present: false,
        }
    }

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

    /// Takes `current` (found at `f`) as the current generation when it is new, or the inode
    /// changed, or the record was just made.
    fn update_current(
        &mut self,
        f: &Found,
        current: u32,
        unix_now: f64,
        parse: &impl Fn(InodeKey, &Beneath) -> Arc<Parsed>,
    ) {
        let first = !self.present && self.watched.is_empty() && self.generation_expiry.is_empty();
        if current == self.generation && self.inode == f.inode && !first {
            return;
        }
        if current > self.generation {
            self.rotations += u64::from(current - self.generation);
        }
        if current != self.generation || first {
            self.generation_seen_at = unix_now;
        }
        self.generation = current;
        self.inode = f.inode;
        self.path = f.path.clone();
        self.modified = f.modified;
        self.parsed = if f.inode == InodeKey::default() {
            Arc::default()
        } else {
            parse(f.inode, &f.at)
        };
        self.kind = self.parsed.kind;
        self.generation_expiry.insert(current, self.parsed.expiry);
    }

    /// Watches every generation in `wanted` (new ones go to `watch`), and unwatches the inodes
    /// of generations no longer on disk (into `unwatch`).
    fn sync_watched(
        &mut self,
        wanted: Vec<(InodeKey, u32, Beneath)>,
        parse: &impl Fn(InodeKey, &Beneath) -> Arc<Parsed>,
        watch: &mut Vec<MapOp>,
        unwatch: &mut Vec<InodeKey>,
    ) {
        for (inode, generation, at) in &wanted {
            if *inode == InodeKey::default() {
                continue;
            }
            if !self.watched.contains(&(*inode, *generation)) {
                watch.push(MapOp::Watch(
                    *inode,
                    CredentialGeneration {
                        cred_id: self.id,
                        generation: *generation,
                    },
                ));
            }
            if !self.generation_expiry.contains_key(generation) {
                self.generation_expiry
                    .insert(*generation, parse(*inode, at).expiry);
            }
        }
        while self.generation_expiry.len() > MAX_GENERATIONS_KEPT {
            self.generation_expiry.0.remove(0);
        }
        for (inode, generation) in &self.watched {
            if !wanted.iter().any(|(i, g, _)| i == inode && g == generation) {
                unwatch.push(*inode);
            }
        }
        self.watched = wanted
            .into_iter()
            .filter(|(i, _, _)| *i != InodeKey::default())
            .map(|(i, g, _)| (i, g))
            .collect();
    }
}

/// A change the kernel's `WATCHED` / `READS` maps must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    Watch(InodeKey, CredentialGeneration),
    Unwatch(InodeKey),
    /// Forget a credential's read counters (it has been gone longer than the grace period).
    Purge(u32),
}

#[derive(Default, Debug)]
pub struct CredentialTable {
    /// Shared with scrapes, which take the records without copying them; changed copy-on-write.
    by_id: BTreeMap<u32, Arc<Credential>>,
    /// Record ids by (pod uid, volume, file), compared against the records themselves: the key
    /// strings are not stored a second time (at 5,000 pods that was ~5 MiB).
    by_key: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
    next_id: u32,
    /// After a restart, until the first scan: what the pinned `WATCHED` says each inode is,
    /// and the pinned `IDENTITIES` each identity (by `stable_key`).
    adopted: HashMap<InodeKey, CredentialGeneration>,
    adopted_identities: HashMap<u64, CredentialGeneration>,
}

/// A hash of a credential's identity that every build computes alike (FNV-1a, fields separated by
/// a byte no UTF-8 text has): the key of the pinned `IDENTITIES`.
pub fn stable_key(pod_uid: &str, volume: &str, file: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for field in [pod_uid, volume, file] {
        for b in field.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The current generation of a found file, and every (inode, generation, file) of it to watch:
/// in atomic-writer volumes the generations on disk (numbered by the inventory, plus `offset`);
/// elsewhere a new inode is a new generation (the first one `offset`).
fn generations_of(
    f: &Found,
    known: Option<&Credential>,
    offset: u32,
) -> (u32, Vec<(InodeKey, u32, Beneath)>) {
    match (&f.generations, known) {
        (Some(g), _) => (
            g.current + offset,
            g.files
                .iter()
                .map(|gf| (gf.inode, gf.generation + offset, gf.at.clone()))
                .collect(),
        ),
        (None, Some(rec)) if rec.inode == f.inode => (
            rec.generation,
            vec![(f.inode, rec.generation, f.at.clone())],
        ),
        (None, Some(rec)) => (
            rec.generation + 1,
            vec![(f.inode, rec.generation + 1, f.at.clone())],
        ),
        (None, None) => (offset, vec![(f.inode, offset, f.at.clone())]),
    }
}

/// The inventory's generation number of `inode` in `f` (0 outside atomic-writer volumes).
fn scan_generation(f: &Found, inode: InodeKey) -> Option<u32> {
    match &f.generations {
        None => (f.inode == inode).then_some(0),
        Some(g) => g
            .files
            .iter()
            .find(|gf| gf.inode == inode)
            .map(|gf| gf.generation),
    }
}

/// Every inode of `f`: the current one and those of its generations on disk.
fn inodes_of(f: &Found) -> impl Iterator<Item = InodeKey> + '_ {
    std::iter::once(f.inode).chain(
        f.generations
            .iter()
            .flat_map(|g| g.files.iter().map(|gf| gf.inode)),
    )
}

/// What names a credential across scans: (pod uid, volume, file), hashed for `by_key`.
fn key_hash(hasher: &std::hash::RandomState, pod_uid: &str, volume: &str, file: &str) -> u64 {
    hasher.hash_one((pod_uid, volume, file))
}

/// A credential as a scrape shows it: the record, with the names its pod's metadata gives it
/// (borrowed: a scrape of thousands of credentials copies none of them). Reads as the record.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub record: &'a Credential,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub service_account: &'a str,
    pub source: &'a str,
    /// The pod's metadata, when known.
    pub meta: Option<&'a PodMeta>,
}

impl<'a> Named<'a> {
    /// `record` named by its pod's metadata `meta` (`None`: host credentials, pods not known).
    pub fn new(record: &'a Credential, meta: Option<&'a PodMeta>) -> Self {
        let names = meta.map(|m| attribution::names_in(m, &record.volume, &record.source));
        Named {
            record,
            namespace: names.map_or(&record.namespace, |n| n.namespace),
            pod: names.map_or(&record.pod, |n| n.pod),
            service_account: names.map_or(&record.service_account, |n| n.service_account),
            source: names.and_then(|n| n.source).unwrap_or(&record.source),
            meta,
        }
    }
}

impl std::ops::Deref for Named<'_> {
    type Target = Credential;
    fn deref(&self) -> &Credential {
        self.record
    }
}

impl CredentialTable {
    pub fn get(&self, id: u32) -> Option<&Credential> {
        self.by_id.get(&id).map(|c| &**c)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Brings the records in line with a complete scan: new files get an id; a new generation
    /// (a new timestamped directory in atomic-writer volumes, a new inode elsewhere) is a
    /// rotation; every generation still on disk stays watched; a file that is gone is unwatched
    /// at once and forgotten after `grace`. Returns the kernel map changes, new inodes first.
    pub fn apply(
        &mut self,
        found: &[Found],
        parse: impl Fn(InodeKey, &Beneath) -> Arc<Parsed>,
        now: Instant,
        unix_now: f64,
        grace: Duration,
    ) -> Vec<MapOp> {
        let mut watch = Vec::new();
        let mut unwatch = Vec::new();
        let mut seen = HashSet::new();
        for f in found {
            let id = self.id_for(f);
            seen.insert(id);
            let offset = self
                .get(id)
                .map_or_else(|| self.adopted_offset(id, f), |r| r.generation_offset);
            let (current, wanted) = generations_of(f, self.get(id), offset);
            let rec =
                Arc::make_mut(self.by_id.entry(id).or_insert_with(|| {
                    Arc::new(Credential::new(id, f, current, offset, unix_now))
                }));
            rec.update_current(f, current, unix_now, &parse);
            rec.sync_watched(wanted, &parse, &mut watch, &mut unwatch);
            rec.present = true;
            rec.removed_at = None;
        }
        self.adopted.clear();
        self.adopted_identities.clear();
        let forget = self.mark_missing(&seen, now, grace, &mut unwatch);
        self.assign_service_accounts();
        // Never unwatch an inode that a record watches now.
        let watched: HashSet<InodeKey> = self
            .by_id
            .values()
            .flat_map(|r| r.watched.iter().map(|(i, _)| *i))
            .collect();
        let mut ops = watch;
        ops.extend(
            unwatch
                .into_iter()
                .filter(|k| !watched.contains(k))
                .map(MapOp::Unwatch),
        );
        for id in forget {
            if let Some(rec) = self.by_id.remove(&id) {
                let h = key_hash(&self.hasher, &rec.pod_uid, &rec.volume, &rec.file);
                if let Ok(entry) = self.by_key.find_entry(h, |x| *x == id) {
                    entry.remove();
                }
                ops.push(MapOp::Purge(id));
            }
        }
        ops
    }

    fn id_for(&mut self, f: &Found) -> u32 {
        let h = key_hash(&self.hasher, &f.pod_uid, &f.volume, &f.file);
        let by_id = &self.by_id;
        let same = |id: &u32| {
            by_id.get(id).is_some_and(|r| {
                *r.pod_uid == *f.pod_uid && *r.volume == *f.volume && r.file == f.file
            })
        };
        if let Some(id) = self.by_key.find(h, same) {
            return *id;
        }
        let id = match self.adopted_id(f) {
            Some(id) => id,
            None => {
                self.next_id += 1;
                self.next_id - 1
            }
        };
        let hasher = &self.hasher;
        // Rehashing moves only ids already recorded (a new id's record follows this call).
        self.by_key.insert_unique(h, id, |id| {
            by_id
                .get(id)
                .map_or(0, |r| key_hash(hasher, &r.pod_uid, &r.volume, &r.file))
        });
        id
    }

    /// After a restart: takes the ids and generation numbers the pinned `WATCHED` gives the
    /// inodes of the next scan, or else the pinned `IDENTITIES` their identities (a file
    /// replaced while no agent ran), so the kernel's and the kept counters, made under them, go
    /// on; new ids start above every id in use (`watched`, `identities`, `kept`).
    pub fn adopt(
        &mut self,
        watched: &[(InodeKey, CredentialGeneration)],
        identities: &[(u64, CredentialGeneration)],
        kept: impl Iterator<Item = u32>,
    ) {
        let ids = (watched.iter().map(|(_, c)| c.cred_id))
            .chain(identities.iter().map(|(_, c)| c.cred_id));
        if let Some(max) = ids.chain(kept).max() {
            self.next_id = self.next_id.max(max + 1);
        }
        self.adopted = watched.iter().copied().collect();
        self.adopted_identities = identities.iter().copied().collect();
    }

    /// The id the pinned maps give `f` (by one of its inodes, else by its identity), unless a
    /// record has it already.
    fn adopted_id(&self, f: &Found) -> Option<u32> {
        let by_identity = self
            .adopted_identities
            .get(&stable_key(&f.pod_uid, &f.volume, &f.file));
        inodes_of(f)
            .filter_map(|i| self.adopted.get(&i))
            .chain(by_identity)
            .map(|c| c.cred_id)
            .find(|id| !self.by_id.contains_key(id))
    }

    /// How far the adopted generation numbers of credential `id` are above the inventory's: as
    /// the pinned `WATCHED` numbered one of its inodes, else (every inode is new) one above the
    /// generation `IDENTITIES` last had.
    fn adopted_offset(&self, id: u32, f: &Found) -> u32 {
        let by_inode = inodes_of(f)
            .filter_map(|i| Some((self.adopted.get(&i)?, scan_generation(f, i)?)))
            .find(|(c, _)| c.cred_id == id)
            .map(|(c, g)| c.generation.saturating_sub(g));
        by_inode
            .or_else(|| {
                let key = stable_key(&f.pod_uid, &f.volume, &f.file);
                let c = self.adopted_identities.get(&key)?;
                (c.cred_id == id).then_some(c.generation + 1)
            })
            .unwrap_or(0)
    }

    /// Records not in this scan: unwatched and marked removed at once; returns those gone for
    /// longer than `grace`, to forget.
    fn mark_missing(
        &mut self,
        seen: &HashSet<u32>,
        now: Instant,
        grace: Duration,
        unwatch: &mut Vec<InodeKey>,
    ) -> Vec<u32> {
        let mut forget = Vec::new();
        for rec in self.by_id.values_mut() {
            if seen.contains(&rec.id) {
                continue;
            }
            let rec = Arc::make_mut(rec);
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
        forget
    }

    /// A pod's projected token names its service account; every credential of the pod gets it.
    fn assign_service_accounts(&mut self) {
        let mut pod_sa: HashMap<String, String> = HashMap::new();
        for rec in self.by_id.values() {
            if let (false, Some(sa)) = (rec.pod_uid.is_empty(), &rec.parsed.service_account) {
                if rec.kind == Kind::ServiceaccountToken && rec.present {
                    pod_sa.insert(rec.pod_uid.clone(), sa.clone());
                }
            }
        }
        for rec in self.by_id.values_mut() {
            let Some(sa) = pod_sa.get(&rec.pod_uid) else {
                continue;
            };
            let projected_token =
                rec.kind == Kind::ServiceaccountToken && rec.source == "projected";
            if rec.service_account == *sa && !projected_token {
                continue; // unchanged: not copied out from under a scrape
            }
            let rec = Arc::make_mut(rec);
            rec.service_account = sa.clone();
            if projected_token {
                rec.source = format!("serviceaccount/{sa}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::DEFAULT_SERIES_GRACE,
        inventory::{GenFile, Generations},
    };

    fn found(file: &str, ino: u64) -> Found {
        Found {
            pod_uid: "".into(),
            volume: "/v".into(),
            file: file.into(),
            source: "host".into(),
            path: PathBuf::from("/v").join(file),
            at: Beneath::new("/v", file),
            inode: InodeKey::new(1, ino),
            modified: 0.0,
            generations: None,
        }
    }

    fn apply(c: &mut CredentialTable, f: &[Found], now: Instant) -> Vec<MapOp> {
        c.apply(f, |_, _| Arc::default(), now, 0.0, DEFAULT_SERIES_GRACE)
    }

    #[test]
    fn generation_expiry_is_a_sorted_map() {
        let mut e = GenerationExpiry::default();
        e.insert(3, Some(30.0));
        e.insert(1, None);
        e.insert(2, Some(20.0));
        e.insert(3, Some(31.0));
        assert_eq!(e.len(), 3);
        assert_eq!(e.get(&3), Some(&Some(31.0)));
        assert_eq!(e.get(&1), Some(&None));
        assert!(!e.contains_key(&4));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"1":null,"2":20.0,"3":31.0}"#
        );
    }

    /// The id index holds no key strings of its own: ids must stay stable across scans and
    /// through its rehashing, and a forgotten file's key must resolve to a new id.
    #[test]
    fn ids_are_stable_across_scans_and_rehashes_and_new_after_forgetting() {
        let mut c = CredentialTable::default();
        let files: Vec<Found> = (0..1000).map(|i| found(&format!("f{i}"), i + 1)).collect();
        let now = Instant::now();
        apply(&mut c, &files, now);
        let ids: Vec<u32> = (0..1000).map(|i| c.id_for(&files[i])).collect();
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 1000);
        apply(&mut c, &files, now);
        assert_eq!(
            (0..1000).map(|i| c.id_for(&files[i])).collect::<Vec<_>>(),
            ids
        );
        // f0 goes, and is forgotten after the grace period.
        apply(&mut c, &files[1..], now);
        apply(&mut c, &files[1..], now + DEFAULT_SERIES_GRACE * 2);
        assert!(c.get(ids[0]).is_none());
        let again = c.id_for(&files[0]);
        assert!(
            !ids.contains(&again),
            "a forgotten file comes back under a new id"
        );
        assert_eq!(c.id_for(&files[1]), ids[1]);
    }

    fn w(cred_id: u32, ino: u64, generation: u32) -> MapOp {
        MapOp::Watch(
            InodeKey::new(1, ino),
            CredentialGeneration {
                cred_id,
                generation,
            },
        )
    }

    #[test]
    fn lifecycle_new_rotate_remove_return_forget() {
        let mut c = CredentialTable::default();
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
            apply(&mut c, &[], t0 + DEFAULT_SERIES_GRACE),
            vec![MapOp::Purge(0)]
        );
        assert!(c.get(0).is_none());
        // A new file after that gets a fresh id.
        assert_eq!(
            apply(&mut c, &[found("a", 13)], t0 + DEFAULT_SERIES_GRACE),
            vec![w(1, 13, 0)]
        );
    }

    #[test]
    fn inode_moving_between_identities_is_not_unwatched() {
        let mut c = CredentialTable::default();
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

    /// After a restart the table takes the ids and generation numbers the pinned maps give:
    /// by inode (an atomic-writer volume numbered from 0 again by the new inventory), else by
    /// identity (a file replaced while no agent ran: the next generation); new ids above all.
    #[test]
    fn a_restarted_table_adopts_the_pinned_ids_and_generations() {
        let mut c = CredentialTable::default();
        let t0 = Instant::now();
        let cg = |cred_id, generation| CredentialGeneration {
            cred_id,
            generation,
        };
        let mut volume = found("token", 21);
        volume.pod_uid = "uid".into();
        volume.generations = Some(Generations {
            current: 1,
            files: [(0, 20), (1, 21)]
                .iter()
                .map(|&(g, i)| GenFile {
                    generation: g,
                    inode: InodeKey::new(1, i),
                    at: Beneath::default(),
                })
                .collect(),
        });
        let watched = [
            (InodeKey::new(1, 20), cg(7, 4)),
            (InodeKey::new(1, 21), cg(7, 5)),
            (InodeKey::new(1, 30), cg(3, 2)), // host file "a", replaced meanwhile
        ];
        let identities = [(stable_key("", "/v", "a"), cg(3, 2))];
        c.adopt(&watched, &identities, [9].into_iter());
        let ops = apply(
            &mut c,
            &[volume.clone(), found("a", 31), found("b", 40)],
            t0,
        );
        assert_eq!(
            ops,
            vec![w(7, 20, 4), w(7, 21, 5), w(3, 31, 3), w(10, 40, 0)],
            "same ids and numbers; the replaced file is generation 3; a new file id 10"
        );
        assert_eq!(c.get(7).unwrap().generation, 5);
        // The next generation the inventory numbers 2 is 6.
        volume.generations.as_mut().unwrap().files.push(GenFile {
            generation: 2,
            inode: InodeKey::new(1, 22),
            at: Beneath::default(),
        });
        assert_eq!(
            apply(&mut c, &[volume, found("a", 31), found("b", 40)], t0),
            vec![w(7, 22, 6)]
        );
    }

    #[test]
    fn stable_keys_are_the_same_in_every_build_and_separate_fields() {
        // FNV-1a 64 of the bytes, each field followed by 0xff (computed independently).
        assert_eq!(stable_key("", "", ""), 0xf998_341b_e47b_ae14);
        assert_eq!(stable_key("uid", "vol", "token"), 0xdb89_e6d9_cf09_3fca);
        assert_ne!(stable_key("a", "b", "c"), stable_key("ab", "", "c"));
    }

    #[test]
    fn atomic_writer_generations_stay_watched_while_on_disk() {
        let mut c = CredentialTable::default();
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
                        at: Beneath::default(),
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
