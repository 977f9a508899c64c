//! Keeps the state's credentials and the kernel's `WATCHED` map in step with inventory passes.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use credwatch_common::{
    file::{CredentialGeneration, FirstReadEvent, InodeKey, ReadKey, UnseenKey, UnseenRead},
    EventKind,
};

use super::first_reads;
use crate::{
    identity::CgroupResolver,
    inventory::{
        content::{Parsed, Parser},
        watcher::Pass,
        Beneath, Found,
    },
    kernel::maps::KernelMaps,
    state::{credentials::stable_key, kept::Source, MapOp, ReaderReads, State, UserLoss},
    sys,
};

pub struct WatchSync {
    state: Arc<State>,
    maps: Arc<KernelMaps>,
    /// How long series of a credential that is gone are kept.
    grace: Duration,
    parser: Parser,
    /// What each inode on disk holds, parsed once and shared with the records: the state is
    /// updated from this, so no file is read while its lock is held.
    parsed: HashMap<InodeKey, Arc<Parsed>>,
    /// What `WATCHED` holds, as this put it there.
    in_kernel: HashMap<InodeKey, CredentialGeneration>,
    /// Watches the kernel refused (the map was full): tried again on every pass, counted once.
    pending: HashMap<InodeKey, CredentialGeneration>,
    cgroups: Arc<CgroupResolver>,
    /// The `VOLUME_DEVS` words as this wrote them.
    volume_words: BTreeMap<u32, u64>,
    /// `UNSEEN` entries claimed on a pass, with the count folded and whose they turned out to
    /// be: removed on the next one (no program can be adding to them by then, their inode being
    /// watched).
    claimed: HashMap<UnseenKey, (u64, CredentialGeneration)>,
    /// `UNSEEN` entries no credential has claimed, with the passes they have been seen.
    unclaimed: HashMap<UnseenKey, u32>,
    /// After a restart, until the first pass: the `WATCHED` entries the agent before left that
    /// no record has watched again (removed after that pass).
    left: Option<HashSet<InodeKey>>,
    /// With pinned maps: the `IDENTITIES` entries as this wrote them, by credential id: (key,
    /// current generation).
    identities: Option<HashMap<u32, (u64, u32)>>,
}

/// What the agent before left in the pinned maps.
#[derive(Debug, Default)]
pub struct Left {
    pub watched: Vec<(InodeKey, CredentialGeneration)>,
    pub identities: Vec<(u64, CredentialGeneration)>,
    pub volume_words: Vec<(u32, u64)>,
}

/// Passes an unseen file may stay unclaimed (a file over the per-volume cap, one that vanished
/// before a scan saw it) before its entry is removed.
const UNCLAIMED_PASSES: u32 = 3;

impl WatchSync {
    pub fn new(
        state: Arc<State>,
        maps: Arc<KernelMaps>,
        cgroups: Arc<CgroupResolver>,
        grace: Duration,
    ) -> Self {
        Self {
            state,
            maps,
            grace,
            parser: Parser::default(),
            parsed: HashMap::new(),
            in_kernel: HashMap::new(),
            pending: HashMap::new(),
            cgroups,
            volume_words: BTreeMap::new(),
            claimed: HashMap::new(),
            unclaimed: HashMap::new(),
            left: None,
            identities: None,
        }
    }

    /// Starts from what the agent before left: its `WATCHED` entries are this one's until the
    /// first pass says otherwise (a generation rotated away meanwhile is retired then, its
    /// counters kept), and its volume marks stay until a pass unmarks them.
    pub fn take_over(&mut self, left: Left) {
        self.left = Some(left.watched.iter().map(|(i, _)| *i).collect());
        self.identities = Some(
            left.identities
                .into_iter()
                .map(|(key, c)| (c.cred_id, (key, c.generation)))
                .collect(),
        );
        self.in_kernel = left.watched.into_iter().collect();
        self.volume_words = left.volume_words.into_iter().collect();
    }

    /// After the first pass that followed a restart: unwatches what the agent before watched and
    /// no record does now, and drops the counters of credentials that went while no agent ran.
    fn drop_left(&mut self) {
        let Some(left) = self.left.take() else {
            return;
        };
        for inode in left {
            self.maps.unwatch(inode);
            if let Some(old) = self.in_kernel.remove(&inode) {
                if self.state.credential(old.cred_id).is_some() {
                    self.retire(old);
                }
            }
        }
        let counted: Vec<u32> = self
            .maps
            .read_totals()
            .iter()
            .map(|t| t.key.cred_id)
            .collect();
        for id in self.state.forget_unknown_credentials(&counted) {
            self.maps.forget_credential(id);
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
        self.mark_volume_devs(&pass.scan.volume_devs);
        self.parse_new(&pass.scan.found);
        self.finish_claims();
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
        self.drop_left();
        self.write_identities();
        self.claim_unseen();
        self.state.set_watched_entries(self.in_kernel.len() as u64);
    }

    /// Makes `VOLUME_DEVS` mark exactly `devs` (kernel device numbers, major 0).
    /// A word that cannot be written keeps its old value here, so the next pass tries again.
    fn mark_volume_devs(&mut self, devs: &BTreeSet<u32>) {
        let mut want: BTreeMap<u32, u64> = BTreeMap::new();
        for dev in devs {
            *want.entry(dev >> 6).or_default() |= 1 << (dev & 63);
        }
        let words: BTreeSet<u32> = want
            .keys()
            .chain(self.volume_words.keys())
            .copied()
            .collect();
        for word in words {
            let (old, new) = (self.volume_words.get(&word), want.get(&word));
            if old.copied().unwrap_or(0) == new.copied().unwrap_or(0) {
                continue;
            }
            if let Err(e) = self.maps.set_volume_word(word, new.copied().unwrap_or(0)) {
                tracing::warn!(error = %e, "cannot mark credential volume mounts");
                match old {
                    Some(bits) => want.insert(word, *bits),
                    None => want.remove(&word),
                };
            }
        }
        self.volume_words = want;
    }

    /// Keeps the pinned `IDENTITIES` in step with the records (with pinned maps only).
    fn write_identities(&mut self) {
        let (Some(written), maps) = (&mut self.identities, &self.maps) else {
            return;
        };
        let mut live = HashSet::new();
        for c in self.state.credentials() {
            live.insert(c.id);
            let want = (stable_key(&c.pod_uid, &c.volume, &c.file), c.generation);
            if written.get(&c.id) == Some(&want) {
                continue;
            }
            let cred = CredentialGeneration {
                cred_id: c.id,
                generation: c.generation,
            };
            match maps.put_identity(want.0, cred) {
                Ok(()) => {
                    written.insert(c.id, want);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a credential's id in the pinned IDENTITIES map")
                }
            }
        }
        written.retain(|id, (key, _)| {
            let live = live.contains(id);
            if !live {
                maps.remove_identity(*key);
            }
            live
        });
    }

    /// The `UNSEEN` entries claimed on the pass before go, with what was added to them since
    /// (opens that had missed `WATCHED` just before the watch; none can add to them any more).
    /// First in a pass: no other write to their `KEPT` entry comes between their claim (which
    /// names them there, for a restart in between) and their removal.
    fn finish_claims(&mut self) {
        for (key, (folded, cred)) in std::mem::take(&mut self.claimed) {
            if let Some(read) = self.maps.unseen_entry(&key) {
                let delta = read.count.saturating_sub(folded);
                if delta > 0 {
                    let reads = ReaderReads::of_counter(delta, read.last_read_ns, cred.generation);
                    self.state
                        .fold(key.cgroup_id, cred.cred_id, &reads, Source::None);
                }
            }
            self.maps.remove_unseen(&key);
        }
    }

    /// Reads the kernel counted by inode before a scan named them (a new generation read right
    /// after the kubelet's swap) become reads of the credential generation they turned out to be.
    fn claim_unseen(&mut self) {
        let entries = self.maps.unseen();
        let present: HashSet<UnseenKey> = entries.iter().map(|(k, _)| *k).collect();
        for (key, read) in entries {
            let Some(&cred) = self.in_kernel.get(&key.inode) else {
                let passes = self.unclaimed.entry(key).or_insert(0);
                *passes += 1;
                if *passes > UNCLAIMED_PASSES {
                    self.maps.remove_unseen(&key);
                    self.unclaimed.remove(&key);
                }
                continue;
            };
            self.unclaimed.remove(&key);
            let reads = ReaderReads::of_counter(read.count, read.last_read_ns, cred.generation);
            let source = Source::Unseen(ReadKey {
                cgroup_id: key.cgroup_id,
                cred_id: cred.cred_id,
                generation: cred.generation,
            });
            self.state.fold(key.cgroup_id, cred.cred_id, &reads, source);
            let ev = first_read_of(&key, &read, cred);
            first_reads::on_first_read(&self.state, &self.cgroups, &ev);
            self.claimed.insert(key, (read.count, cred));
        }
        self.unclaimed.retain(|k, _| present.contains(k));
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
                self.parsed.insert(inode, Arc::new(parsed));
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
        if let Some(left) = &mut self.left {
            left.remove(&inode);
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
        self.maps
            .take_generation_counters(gen.cred_id, gen.generation, |taken| {
                for t in taken {
                    let reads = ReaderReads::of_counter(t.count, t.last_read_ns, t.key.generation);
                    let source = Source::Counter(t.key);
                    self.state
                        .fold(t.key.cgroup_id, t.key.cred_id, &reads, source);
                }
            });
    }
}

/// The first-read event the kernel would have sent, had the file been watched at its first read.
fn first_read_of(key: &UnseenKey, read: &UnseenRead, cred: CredentialGeneration) -> FirstReadEvent {
    FirstReadEvent {
        kind: EventKind::FirstRead as u32,
        cred_id: cred.cred_id,
        generation: cred.generation,
        pid: read.pid,
        tgid: read.tgid,
        _pad: 0,
        cgroup_id: key.cgroup_id,
        ts_ns: read.first_read_ns,
        comm: read.comm,
    }
}
