//! Keeps the state's credentials and the kernel's `WATCHED` map in step with inventory passes.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use credwatch_common::file::{CredentialGeneration, InodeKey};

use crate::{
    inventory::{
        content::{Parsed, Parser},
        watcher::Pass,
        Beneath, Found,
    },
    kernel::maps::KernelMaps,
    state::{MapOp, ReaderReads, State, UserLoss},
    sys,
};

pub struct WatchSync {
    state: Arc<State>,
    maps: Arc<KernelMaps>,
    /// How long series of a credential that is gone are kept.
    grace: Duration,
    parser: Parser,
    /// What each inode on disk holds, parsed once: the state is updated from this, so no file is
    /// read while its lock is held.
    parsed: HashMap<InodeKey, Parsed>,
    /// What `WATCHED` holds, as this put it there.
    in_kernel: HashMap<InodeKey, CredentialGeneration>,
    /// Watches the kernel refused (the map was full): tried again on every pass, counted once.
    pending: HashMap<InodeKey, CredentialGeneration>,
}

impl WatchSync {
    pub fn new(state: Arc<State>, maps: Arc<KernelMaps>, grace: Duration) -> Self {
        Self {
            state,
            maps,
            grace,
            parser: Parser::default(),
            parsed: HashMap::new(),
            in_kernel: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Applies one inventory pass: new files are parsed first (each within the parser's time
    /// limit, no lock held), then the records, then the kernel map, new inodes before old ones
    /// go (so a rotation never leaves a gap).
    pub fn apply(&mut self, pass: &Pass) {
        self.state
            .count_lost(UserLoss::Cardinality, pass.newly_skipped);
        self.state
            .count_lost(UserLoss::InotifyWatch, pass.failed_watches);
        self.state.set_shared_files(pass.scan.shared);
        self.parse_new(&pass.scan.found);
        let parsed = &self.parsed;
        let ops = self.state.apply_scan(
            &pass.scan.found,
            |inode, _| parsed.get(&inode).cloned().unwrap_or_default(),
            Instant::now(),
            sys::unix_now(),
            self.grace,
        );
        for op in &ops {
            self.apply_op(op);
        }
        for (inode, cred) in std::mem::take(&mut self.pending) {
            self.watch(inode, cred, false);
        }
        self.state.set_watched_entries(self.in_kernel.len() as u64);
    }

    /// Parses every inode of the pass not parsed yet; forgets inodes no longer on disk.
    fn parse_new(&mut self, found: &[Found]) {
        let mut on_disk: HashMap<InodeKey, &Beneath> = HashMap::new();
        for f in found {
            on_disk.insert(f.inode, &f.at);
            for g in f.generations.iter().flat_map(|g| &g.files) {
                on_disk.insert(g.inode, &g.at);
            }
        }
        on_disk.remove(&InodeKey::default());
        self.parsed.retain(|inode, _| on_disk.contains_key(inode));
        for (inode, at) in on_disk {
            if !self.parsed.contains_key(&inode) {
                let parsed = self.parser.parse(at);
                self.parsed.insert(inode, parsed);
            }
        }
    }

    fn apply_op(&mut self, op: &MapOp) {
        match *op {
            MapOp::Watch(inode, cred) => {
                if let Some(r) = self.state.credential(cred.cred_id) {
                    tracing::info!(pod_uid = ?r.pod_uid, volume = ?r.volume, file = ?r.file, kind = r.kind.as_str(), generation = cred.generation, "watching credential");
                }
                self.watch(inode, cred, true);
            }
            MapOp::Unwatch(inode) => {
                self.pending.remove(&inode);
                self.maps.unwatch(inode);
                if let Some(old) = self.in_kernel.remove(&inode) {
                    self.retire(old);
                }
            }
            MapOp::Purge(cred_id) => {
                self.in_kernel.retain(|_, c| c.cred_id != cred_id);
                self.pending.retain(|_, c| c.cred_id != cred_id);
                self.maps.forget_credential(cred_id);
            }
        }
    }

    /// Puts an inode in `WATCHED`; a refusal (the map is full) is counted on the first try and
    /// the watch is tried again on the next pass, so a credential is never recorded as watched
    /// while the kernel does not count it.
    fn watch(&mut self, inode: InodeKey, cred: CredentialGeneration, first_try: bool) {
        if let Err(e) = self.maps.watch(inode, cred) {
            if first_try {
                tracing::error!(error = %e, "cannot watch a credential: WATCHED map full? (tried again on every scan)");
                self.state.count_lost(UserLoss::WatchedMap, 1);
            }
            self.pending.insert(inode, cred);
            return;
        }
        if let Some(old) = self.in_kernel.insert(inode, cred) {
            if old != cred {
                self.retire(old);
            }
        }
    }

    /// A generation no longer watched can be read no more: its counters leave the kernel's
    /// `READS` for the state, so that the map does not grow by a key per live reader at every
    /// rotation, and no count goes down.
    fn retire(&self, gen: CredentialGeneration) {
        for t in self
            .maps
            .take_generation_counters(gen.cred_id, gen.generation)
        {
            let reads = ReaderReads::of_counter(t.count, t.last_read_ns, t.key.generation);
            self.state.fold(t.key.cgroup_id, t.key.cred_id, &reads);
        }
    }
}
