//! The agent's shared state: the credentials known (`credentials`), the readers seen
//! (`readers`), reads kept for readers that are gone, hook status, userspace drops and readiness.
//! Kernel counters are not mirrored here; the exporter reads them at scrape time. Everything goes
//! through `State`'s methods: no caller holds a lock.
pub mod auth;
pub mod credentials;
pub mod kept;
pub mod readers;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

pub use credentials::{Credential, CredentialTable, MapOp};
pub use readers::{FirstRead, ReaderReads, ReaderRecord, MAX_READERS};

use credwatch_common::file::{CredentialGeneration, InodeKey};

use crate::{
    identity::Reader,
    inventory::{content::Parsed, Beneath},
    kernel::{maps::KernelMaps, HookStatus},
};

/// Drops in userspace, exported with the kernel's in `events_lost_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserLoss {
    /// The decoder's queue was full.
    Channel,
    /// A bound on distinct files, readers or series was reached.
    Cardinality,
    /// `WATCHED` was full: a credential could not be watched.
    WatchedMap,
    /// An event from the kernel did not decode.
    Decode,
    /// A directory could not be watched with inotify (out of watches): changes there are seen
    /// only by the periodic rescan.
    InotifyWatch,
}

#[derive(Debug, Default)]
pub struct State {
    credentials: Mutex<CredentialTable>,
    readers: DashMap<u64, ReaderRecord>,
    /// Reads of generations no longer on disk, folded out of the kernel's `READS` (which would
    /// otherwise gain a key per live reader at every rotation), and reads of purged reader
    /// cgroups under aggregate labels (`_node`, `_other_pod`), kept so those counters never go
    /// down; written through to the pinned `KEPT` map once `keep_in` gave it.
    kept: Mutex<kept::Kept>,
    /// Entries of `WATCHED`, as the file sensor keeps it.
    watched_entries: AtomicU64,
    /// Files found under a second identity at the last scan.
    shared_files: AtomicU64,
    hooks: Mutex<Vec<HookStatus>>,
    /// Long-running tasks that ended (each should run for the life of the agent), and why.
    stopped: Mutex<Vec<String>>,
    lost: [AtomicU64; 5],
    inventory_done: AtomicBool,
    probes_attached: AtomicBool,
    auth: Mutex<auth::AuthStats>,
}

/// A lock; a panic elsewhere while holding it leaves plain data behind, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    // ---- auth calls ----

    /// The auth-call sensor's counts, for one short update or read (no I/O under it).
    pub fn with_auth<R>(&self, f: impl FnOnce(&mut auth::AuthStats) -> R) -> R {
        f(&mut lock(&self.auth))
    }

    // ---- credentials ----

    /// Applies a complete scan (see `CredentialTable::apply`); returns the kernel map changes.
    /// Reads kept for purged credentials go with them.
    pub fn apply_scan(
        &self,
        found: &[crate::inventory::Found],
        parse: impl Fn(InodeKey, &Beneath) -> Arc<Parsed>,
        now: Instant,
        unix_now: f64,
        grace: Duration,
    ) -> Vec<MapOp> {
        let ops = lock(&self.credentials).apply(found, parse, now, unix_now, grace);
        let purged: Vec<u32> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::Purge(id) => Some(*id),
                _ => None,
            })
            .collect();
        if !purged.is_empty() {
            lock(&self.kept).forget_credentials(|c| purged.contains(&c));
        }
        ops
    }

    /// After a restart: what the agent before left, as ids to take over ((inode -> credential
    /// generation) from the pinned `WATCHED`, (identity -> the same) from `IDENTITIES`); ids of the next new credentials start above every
    /// id in `WATCHED` and in the kept reads.
    pub fn adopt_ids(
        &self,
        watched: &[(InodeKey, CredentialGeneration)],
        identities: &[(u64, CredentialGeneration)],
    ) {
        let kept = lock(&self.kept);
        lock(&self.credentials).adopt(watched, identities, kept.cred_ids());
    }

    /// Forgets the kept reads of credential ids no record has (after the first scan that
    /// followed a restart: credentials that went while no agent ran); returns those ids and the
    /// ones of `counted` (the kernel's counters) no record has either.
    pub fn forget_unknown_credentials(&self, counted: &[u32]) -> HashSet<u32> {
        let known: HashSet<u32> = lock(&self.credentials).iter().map(|c| c.id).collect();
        let mut kept = lock(&self.kept);
        let gone: HashSet<u32> = (kept.cred_ids().chain(counted.iter().copied()))
            .filter(|c| !known.contains(c))
            .collect();
        kept.forget_credentials(|c| gone.contains(&c));
        gone
    }

    pub fn credential(&self, id: u32) -> Option<Credential> {
        lock(&self.credentials).get(id).cloned()
    }

    /// Every credential record, by id, shared (not copied).
    pub fn credentials(&self) -> Vec<Arc<Credential>> {
        lock(&self.credentials).iter().cloned().collect()
    }

    pub fn credential_count(&self) -> usize {
        lock(&self.credentials).len()
    }

    // ---- readers ----

    /// The reader of a cgroup seen reading, if it was described.
    pub fn reader(&self, cgroup_id: u64) -> Option<Reader> {
        self.readers.get(&cgroup_id).map(|r| r.reader.clone())
    }

    /// The record of a reader cgroup, with its first reads.
    pub fn reader_record(&self, cgroup_id: u64) -> Option<ReaderRecord> {
        self.readers.get(&cgroup_id).map(|r| r.value().clone())
    }

    /// Every reader described, by cgroup id.
    pub fn readers(&self) -> Vec<ReaderRecord> {
        let mut v: Vec<ReaderRecord> = self.readers.iter().map(|r| r.value().clone()).collect();
        v.sort_by_key(|r| r.cgroup_id);
        v
    }

    /// Adds a first read to its reader's record, made by `describe` for a new reader. Returns the
    /// record without its first reads, or `None` (counted) when `MAX_READERS` are known already.
    pub fn record_first_read(
        &self,
        cgroup_id: u64,
        first: &FirstRead,
        describe: impl FnOnce() -> ReaderRecord,
    ) -> Option<ReaderRecord> {
        if !self.readers.contains_key(&cgroup_id) && self.readers.len() >= MAX_READERS {
            self.count_lost(UserLoss::Cardinality, 1);
            return None;
        }
        let mut rec = self.readers.entry(cgroup_id).or_insert_with(describe);
        rec.push(first.clone());
        Some(ReaderRecord {
            cgroup_id,
            cgroup_path: rec.cgroup_path.clone(),
            reader: rec.reader.clone(),
            container: rec.container.clone(),
            first_reads: Vec::new(),
        })
    }

    /// The cgroup ids of every described reader.
    pub fn reader_cgroups(&self) -> Vec<u64> {
        self.readers.iter().map(|r| *r.key()).collect()
    }

    pub fn forget_reader(&self, cgroup_id: u64) {
        self.readers.remove(&cgroup_id);
    }

    /// Writes every kept read through to `store` (the pinned `KEPT` map), starting from what it
    /// holds (see `kept::Kept::load`).
    pub fn keep_in(&self, store: Arc<KernelMaps>) -> kept::Loaded {
        lock(&self.kept).load(store)
    }

    /// Keeps the reads of a purged reader cgroup under its aggregate `label`.
    pub fn retire(&self, cred_id: u32, label: String, reads: &ReaderReads, source: kept::Source) {
        lock(&self.kept).retire(cred_id, label, reads, source);
    }

    /// Keeps the reads of a retired generation's counter, by reader cgroup.
    pub fn fold(&self, cgroup_id: u64, cred_id: u32, reads: &ReaderReads, source: kept::Source) {
        lock(&self.kept).fold(cgroup_id, cred_id, reads, source);
    }

    /// The folded reads: (reader cgroup, credential id) -> reads.
    pub fn folded(&self) -> Vec<((u64, u32), ReaderReads)> {
        lock(&self.kept)
            .folded
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The folded reads of one reader cgroup: credential id -> reads.
    pub fn folded_of_cgroup(&self, cgroup_id: u64) -> Vec<(u32, ReaderReads)> {
        lock(&self.kept)
            .folded
            .iter()
            .filter(|((g, _), _)| *g == cgroup_id)
            .map(|((_, c), r)| (*c, r.clone()))
            .collect()
    }

    /// Forgets the folded reads of a reader cgroup that is gone (once retired where they count).
    pub fn forget_folded_of_cgroup(&self, cgroup_id: u64) {
        lock(&self.kept).forget_folded_of_cgroup(cgroup_id);
    }

    pub fn set_watched_entries(&self, n: u64) {
        self.watched_entries.store(n, Ordering::Relaxed);
    }

    pub fn set_shared_files(&self, n: u64) {
        self.shared_files.store(n, Ordering::Relaxed);
    }

    pub fn shared_files(&self) -> u64 {
        self.shared_files.load(Ordering::Relaxed)
    }

    pub fn watched_entries(&self) -> u64 {
        self.watched_entries.load(Ordering::Relaxed)
    }

    /// The kept reads: (credential id, label) -> reads.
    pub fn retired(&self) -> Vec<((u32, String), ReaderReads)> {
        lock(&self.kept)
            .retired
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    // ---- hooks, drops, readiness ----

    /// Records what attached; the agent counts from the first attached hook on.
    pub fn set_hooks(&self, hooks: Vec<HookStatus>) {
        let attached = hooks.iter().any(|h| h.attached);
        *lock(&self.hooks) = hooks;
        self.probes_attached.store(attached, Ordering::Release);
    }

    pub fn hooks(&self) -> Vec<HookStatus> {
        lock(&self.hooks).clone()
    }

    pub fn count_lost(&self, loss: UserLoss, n: u64) {
        self.lost[loss as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn lost(&self, loss: UserLoss) -> u64 {
        self.lost[loss as usize].load(Ordering::Relaxed)
    }

    /// Records that a task which should run for the life of the agent ended: the agent is then
    /// unhealthy (`/healthz`), since what it exports is no longer followed.
    pub fn task_stopped(&self, task: &str, why: &str) {
        lock(&self.stopped).push(format!("{task} stopped: {why}"));
    }

    /// Why the agent is unhealthy, if it is.
    pub fn unhealthy(&self) -> Vec<String> {
        lock(&self.stopped).clone()
    }

    pub fn mark_inventory_done(&self) {
        self.inventory_done.store(true, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.waiting_for().is_empty()
    }

    /// What readiness still waits for, in words.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        let mut waiting = Vec::new();
        if !self.probes_attached.load(Ordering::Acquire) {
            waiting.push("probes not attached");
        }
        if !self.inventory_done.load(Ordering::Acquire) {
            waiting.push("first inventory scan not done");
        }
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_task_makes_the_agent_unhealthy() {
        let state = State::default();
        assert!(state.unhealthy().is_empty());
        state.task_stopped("ring buffer reader", "EBADF");
        assert_eq!(state.unhealthy(), ["ring buffer reader stopped: EBADF"]);
    }
}
