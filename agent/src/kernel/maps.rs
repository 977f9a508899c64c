//! Typed handles to the object's maps: the file sensor's `WATCHED`, `READS`, `VOLUME_DEVS` and
//! `UNSEEN`, and the shared `LOST` drop counters. The event ring is taken separately (`ring`).
use std::sync::{Mutex, MutexGuard, PoisonError};

use aya::{
    maps::{
        perf::PerfEventArrayBuffer, Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerfEventArray,
    },
    Ebpf,
};
use credwatch_common::{
    file::{
        self, CredentialGeneration, InodeKey, KeptKey, KeptReads, ReadKey, ReadStats, UnseenKey,
        UnseenRead,
    },
    maps, LostStage,
};

use super::{Error, Result};

/// What `READS` may take of the agent's memory (charged to its memory cgroup from 5.11): its
/// entries are preallocated, each with a value per possible CPU, so a fixed entry count would be
/// about 100 MiB on a 96-CPU node.
pub const READS_BUDGET_BYTES: u64 = 32 << 20;
/// What one hash entry costs beyond its key and value (the kernel's `htab_elem`, rounded up).
const HASH_ENTRY_OVERHEAD: u64 = 64;

/// Bytes one `READS` entry takes on a node with `cpus` possible CPUs.
fn reads_entry_bytes(cpus: u64) -> u64 {
    let key = std::mem::size_of::<ReadKey>() as u64;
    let value = std::mem::size_of::<ReadStats>() as u64;
    key + value * cpus + HASH_ENTRY_OVERHEAD
}

/// `READS` entries for a node with `cpus` possible CPUs: what fits the budget, between 4,096 and
/// the object's 65,536.
pub fn reads_entries(cpus: u64) -> u32 {
    let fit = READS_BUDGET_BYTES / reads_entry_bytes(cpus.max(1));
    fit.clamp(4096, u64::from(file::READS_MAX_ENTRIES)) as u32
}

/// Possible CPUs: per-CPU map values are allocated for each.
pub fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map_or(1, |n| n as u64)
}

/// Each map and the memory it takes on this node, for `credwatch check`.
pub fn memory() -> Vec<(&'static str, String)> {
    let cpus = possible_cpus();
    let reads = u64::from(reads_entries(cpus));
    let watched_entry = (std::mem::size_of::<InodeKey>()
        + std::mem::size_of::<CredentialGeneration>()) as u64
        + HASH_ENTRY_OVERHEAD;
    let unseen_entry = (std::mem::size_of::<UnseenKey>() + std::mem::size_of::<UnseenRead>())
        as u64
        + HASH_ENTRY_OVERHEAD;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    vec![
        (
            file::maps::READS,
            format!(
                "{reads} entries x {} B ({cpus} possible CPUs) = {:.1} MiB, preallocated",
                reads_entry_bytes(cpus),
                mib(reads * reads_entry_bytes(cpus))
            ),
        ),
        (
            file::maps::WATCHED,
            format!(
                "{} entries x {watched_entry} B = {:.1} MiB, preallocated",
                file::WATCHED_MAX_ENTRIES,
                mib(u64::from(file::WATCHED_MAX_ENTRIES) * watched_entry)
            ),
        ),
        (
            file::maps::UNSEEN,
            format!(
                "{} entries x {unseen_entry} B = {:.1} MiB, preallocated (LRU)",
                file::UNSEEN_MAX_ENTRIES,
                mib(u64::from(file::UNSEEN_MAX_ENTRIES) * unseen_entry)
            ),
        ),
        (
            file::maps::VOLUME_DEVS,
            format!(
                "{:.2} MiB bitmap of anonymous devices",
                mib(u64::from(file::VOLUME_DEV_WORDS) * 8)
            ),
        ),
        (
            file::maps::WATCHED_FILTER,
            format!(
                "{:.2} MiB bitmap over watched inodes",
                mib(u64::from(file::WATCHED_FILTER_WORDS) * 8)
            ),
        ),
        (
            maps::EVENTS,
            format!(
                "{:.2} MiB ring buffer",
                mib(u64::from(credwatch_common::EVENTS_BYTE_SIZE))
            ),
        ),
    ]
}

/// `WATCHED_FILTER` as this agent keeps it: which watched inodes set each bit, so that a bit is
/// cleared only when no watched inode needs it.
struct WatchedFilter {
    map: Array<MapData, u64>,
    /// The words as written.
    words: std::collections::HashMap<u32, u64>,
    /// Inodes per set bit.
    refs: std::collections::HashMap<u32, u32>,
    inodes: std::collections::HashSet<InodeKey>,
}

impl WatchedFilter {
    /// Takes the filter over with `watched` (the inodes `WATCHED` holds: after a restart, what
    /// the agent before left), rewriting the words that differ: bits no inode needs are cleared,
    /// and none a watched inode needs ever is.
    fn new(map: Array<MapData, u64>, watched: &[InodeKey]) -> Self {
        let mut this = Self {
            map,
            words: std::collections::HashMap::new(),
            refs: std::collections::HashMap::new(),
            inodes: std::collections::HashSet::new(),
        };
        for inode in watched {
            if this.inodes.insert(*inode) {
                let bit = inode.filter_bit();
                *this.refs.entry(bit).or_default() += 1;
                *this.words.entry(bit >> 6).or_default() |= 1 << (bit & 63);
            }
        }
        for index in 0..file::WATCHED_FILTER_WORDS {
            let want = this.words.get(&index).copied().unwrap_or(0);
            if this.map.get(&index, 0).unwrap_or(0) != want {
                let _ = this.map.set(index, want, 0);
            }
        }
        this
    }

    fn add(&mut self, inode: InodeKey) -> Result<(), MapError> {
        if self.inodes.contains(&inode) {
            return Ok(());
        }
        let bit = inode.filter_bit();
        let word = self.words.get(&(bit >> 6)).copied().unwrap_or(0);
        let with = word | 1 << (bit & 63);
        if with != word {
            self.map.set(bit >> 6, with, 0)?;
            self.words.insert(bit >> 6, with);
        }
        *self.refs.entry(bit).or_default() += 1;
        self.inodes.insert(inode);
        Ok(())
    }

    fn remove(&mut self, inode: InodeKey) {
        if !self.inodes.remove(&inode) {
            return;
        }
        let bit = inode.filter_bit();
        let Some(n) = self.refs.get_mut(&bit) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.refs.remove(&bit);
        let word = self.words.get(&(bit >> 6)).copied().unwrap_or(0) & !(1 << (bit & 63));
        // Left set if the write fails: a bit too many costs one lookup, never a read.
        if self.map.set(bit >> 6, word, 0).is_ok() {
            self.words.insert(bit >> 6, word);
        }
    }
}

/// The summed read counter of one (cgroup, credential, generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTotal {
    pub key: ReadKey,
    pub count: u64,
    pub last_read_ns: u64,
}

impl ReadTotal {
    fn new(key: ReadKey, per_cpu: &[ReadStats]) -> Self {
        let sum = ReadStats::sum(per_cpu);
        Self {
            key,
            count: sum.count,
            last_read_ns: sum.last_read_ns,
        }
    }
}

/// Shared by the inventory (writes `WATCHED`), the exporter (reads `READS`, `LOST`) and the
/// reader GC (removes `READS` entries); each map behind its own lock.
pub struct KernelMaps {
    watched: Mutex<HashMap<MapData, InodeKey, CredentialGeneration>>,
    filter: Mutex<WatchedFilter>,
    reads: Mutex<PerCpuHashMap<MapData, ReadKey, ReadStats>>,
    volume_devs: Mutex<Array<MapData, u64>>,
    unseen: Mutex<HashMap<MapData, UnseenKey, UnseenRead>>,
    kept: Mutex<HashMap<MapData, KeptKey, KeptReads>>,
    identities: Mutex<HashMap<MapData, u64, CredentialGeneration>>,
    lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelMaps")
    }
}

/// Takes map `name` out of the object as a typed handle.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::NoMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Opens a buffer of perf event array `name` on every online CPU, `pages` pages each.
pub fn per_cpu_buffers(
    ebpf: &mut Ebpf,
    name: &'static str,
    pages: usize,
) -> Result<Vec<PerfEventArrayBuffer<MapData>>> {
    let mut array: PerfEventArray<MapData> = take(ebpf, name)?;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| Error::Buffers {
        name,
        why: format!("{what}: {e}"),
    })?;
    cpus.into_iter()
        .map(|cpu| {
            array.open(cpu, Some(pages)).map_err(|e| Error::Buffers {
                name,
                why: format!("cpu {cpu}: {e}"),
            })
        })
        .collect()
}

/// A map lock; a panic elsewhere while holding it leaves the map itself intact.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let watched: HashMap<MapData, InodeKey, CredentialGeneration> =
            take(ebpf, file::maps::WATCHED)?;
        let inodes: Vec<InodeKey> = watched.keys().flatten().collect();
        let filter = WatchedFilter::new(take(ebpf, file::maps::WATCHED_FILTER)?, &inodes);
        Ok(Self {
            watched: Mutex::new(watched),
            filter: Mutex::new(filter),
            reads: Mutex::new(take(ebpf, file::maps::READS)?),
            volume_devs: Mutex::new(take(ebpf, file::maps::VOLUME_DEVS)?),
            unseen: Mutex::new(take(ebpf, file::maps::UNSEEN)?),
            kept: Mutex::new(take(ebpf, file::maps::KEPT)?),
            identities: Mutex::new(take(ebpf, file::maps::IDENTITIES)?),
            lost: take(ebpf, maps::LOST)?,
        })
    }

    /// Every `WATCHED` entry: after a restart, what the agent before left (pinned maps).
    pub fn watched(&self) -> Vec<(InodeKey, CredentialGeneration)> {
        lock(&self.watched).iter().flatten().collect()
    }

    /// The `VOLUME_DEVS` words that are not 0.
    pub fn volume_words(&self) -> Vec<(u32, u64)> {
        let devs = lock(&self.volume_devs);
        (0..file::VOLUME_DEV_WORDS)
            .filter_map(|i| Some((i, devs.get(&i, 0).ok()?)))
            .filter(|(_, bits)| *bits != 0)
            .collect()
    }

    /// Every `KEPT` entry.
    pub fn kept(&self) -> Vec<(KeptKey, KeptReads)> {
        lock(&self.kept).iter().flatten().collect()
    }

    pub fn kept_entry(&self, key: &KeptKey) -> Option<KeptReads> {
        lock(&self.kept).get(key, 0).ok()
    }

    pub fn put_kept(&self, key: KeptKey, reads: KeptReads) -> Result<(), MapError> {
        lock(&self.kept).insert(key, reads, 0)
    }

    pub fn remove_kept(&self, key: &KeptKey) {
        let _ = lock(&self.kept).remove(key);
    }

    /// Every `IDENTITIES` entry.
    pub fn identities(&self) -> Vec<(u64, CredentialGeneration)> {
        lock(&self.identities).iter().flatten().collect()
    }

    pub fn put_identity(&self, key: u64, cred: CredentialGeneration) -> Result<(), MapError> {
        lock(&self.identities).insert(key, cred, 0)
    }

    pub fn remove_identity(&self, key: u64) {
        let _ = lock(&self.identities).remove(&key);
    }

    /// Removes the `UNSEEN` entries claimed into `KEPT` already, as a restart finds them: those
    /// of a reader `c.cgroup_id` on an inode `WATCHED` maps to (`c.cred_id`, `c.generation`),
    /// for each `c` in `claims`. One pass over both maps, however many claims. Returns how many
    /// went.
    pub fn remove_claimed_unseen(&self, claims: &std::collections::HashSet<ReadKey>) -> usize {
        if claims.is_empty() {
            return 0;
        }
        let watched: std::collections::HashMap<InodeKey, CredentialGeneration> =
            self.watched().into_iter().collect();
        let mut removed = 0;
        for (key, _) in self.unseen() {
            let Some(cred) = watched.get(&key.inode) else {
                continue;
            };
            let claim = ReadKey {
                cgroup_id: key.cgroup_id,
                cred_id: cred.cred_id,
                generation: cred.generation,
            };
            if claims.contains(&claim) {
                self.remove_unseen(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Removes one read counter (one a restart found already moved to `KEPT`).
    pub fn remove_read_counter(&self, key: &ReadKey) -> bool {
        lock(&self.reads).remove(key).is_ok()
    }

    /// Counts opens of `inode` as reads of that credential generation: its filter bit first,
    /// so that no program skips the lookup once the inode is in `WATCHED`.
    pub fn watch(&self, inode: InodeKey, credential: CredentialGeneration) -> Result<(), MapError> {
        lock(&self.filter).add(inode)?;
        lock(&self.watched).insert(inode, credential, 0)
    }

    pub fn unwatch(&self, inode: InodeKey) {
        let _ = lock(&self.watched).remove(&inode);
        lock(&self.filter).remove(inode);
    }

    /// Removes every read counter of a credential.
    pub fn forget_credential(&self, cred_id: u32) {
        let mut reads = lock(&self.reads);
        let stale: Vec<ReadKey> = reads
            .keys()
            .flatten()
            .filter(|k| k.cred_id == cred_id)
            .collect();
        for k in stale {
            let _ = reads.remove(&k);
        }
    }

    /// Every read counter, summed over CPUs.
    pub fn read_totals(&self) -> Vec<ReadTotal> {
        Self::totals(&lock(&self.reads))
    }

    /// [`Self::read_totals`] handed to `f` while no counter can leave `READS`: the `take_*`
    /// methods move counters to the state under the same lock, so a scrape that reads both
    /// (here, in `f`) never counts a read twice, nor misses one.
    pub fn with_read_totals<R>(&self, f: impl FnOnce(Vec<ReadTotal>) -> R) -> R {
        let reads = lock(&self.reads);
        f(Self::totals(&reads))
    }

    fn totals(reads: &PerCpuHashMap<MapData, ReadKey, ReadStats>) -> Vec<ReadTotal> {
        reads
            .iter()
            .flatten()
            .map(|(key, per_cpu)| ReadTotal::new(key, &per_cpu))
            .collect()
    }

    /// Removes every counter of a reader cgroup and hands their last totals to `keep`, which
    /// runs before anyone can read the counters again (see [`Self::with_read_totals`]).
    pub fn take_cgroup_counters<R>(
        &self,
        cgroup_id: u64,
        keep: impl FnOnce(Vec<ReadTotal>) -> R,
    ) -> R {
        self.take_counters(|k| k.cgroup_id == cgroup_id, keep)
    }

    /// Removes every counter of one credential generation, handing them to `keep` likewise.
    pub fn take_generation_counters<R>(
        &self,
        cred_id: u32,
        generation: u32,
        keep: impl FnOnce(Vec<ReadTotal>) -> R,
    ) -> R {
        self.take_counters(|k| k.cred_id == cred_id && k.generation == generation, keep)
    }

    /// `keep` runs before the counters are removed: it writes them where they are kept
    /// (`KEPT`) first, so an agent killed in between leaves them in both places, which the next
    /// one sees (`KeptReads::source`), rather than in neither.
    fn take_counters<R>(
        &self,
        which: impl Fn(&ReadKey) -> bool,
        keep: impl FnOnce(Vec<ReadTotal>) -> R,
    ) -> R {
        let mut reads = lock(&self.reads);
        let gone: Vec<ReadTotal> = reads
            .iter()
            .flatten()
            .filter(|(k, _)| which(k))
            .map(|(key, per_cpu)| ReadTotal::new(key, &per_cpu))
            .collect();
        let keys: Vec<ReadKey> = gone.iter().map(|t| t.key).collect();
        let kept = keep(gone);
        for k in &keys {
            let _ = reads.remove(k);
        }
        kept
    }

    /// Sets word `index` of the `VOLUME_DEVS` bitmap.
    pub fn set_volume_word(&self, index: u32, bits: u64) -> Result<(), MapError> {
        lock(&self.volume_devs).set(index, bits, 0)
    }

    /// Every `UNSEEN` entry.
    pub fn unseen(&self) -> Vec<(UnseenKey, UnseenRead)> {
        lock(&self.unseen).iter().flatten().collect()
    }

    pub fn unseen_entry(&self, key: &UnseenKey) -> Option<UnseenRead> {
        lock(&self.unseen).get(key, 0).ok()
    }

    pub fn remove_unseen(&self, key: &UnseenKey) {
        let _ = lock(&self.unseen).remove(key);
    }

    /// Kernel-side drops by stage, summed over CPUs.
    pub fn lost(&self, stage: LostStage) -> u64 {
        self.lost
            .get(&(stage as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_is_sized_to_the_node() {
        assert_eq!(
            reads_entries(2),
            65_536,
            "small nodes keep the object's size"
        );
        let big = reads_entries(96);
        assert!((4096..65_536).contains(&big), "{big}");
        assert!(u64::from(big) * reads_entry_bytes(96) <= READS_BUDGET_BYTES);
        assert_eq!(reads_entries(100_000), 4096, "never below the floor");
    }
}
