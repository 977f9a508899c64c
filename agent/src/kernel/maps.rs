//! Typed handles to the object's maps: the file sensor's `WATCHED` and `READS`, and the shared
//! `LOST` drop counters. The event ring is taken separately (`ring`).
use std::sync::{Mutex, MutexGuard, PoisonError};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use credwatch_common::{
    file::{self, CredentialGeneration, InodeKey, ReadKey, ReadStats},
    maps, LostStage,
};

use super::{Error, Result};

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
    reads: Mutex<PerCpuHashMap<MapData, ReadKey, ReadStats>>,
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

/// A map lock; a panic elsewhere while holding it leaves the map itself intact.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            watched: Mutex::new(take(ebpf, file::maps::WATCHED)?),
            reads: Mutex::new(take(ebpf, file::maps::READS)?),
            lost: take(ebpf, maps::LOST)?,
        })
    }

    /// Counts opens of `inode` as reads of that credential generation.
    pub fn watch(&self, inode: InodeKey, credential: CredentialGeneration) -> Result<(), MapError> {
        lock(&self.watched).insert(inode, credential, 0)
    }

    pub fn unwatch(&self, inode: InodeKey) {
        let _ = lock(&self.watched).remove(&inode);
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
        lock(&self.reads)
            .iter()
            .flatten()
            .map(|(key, per_cpu)| ReadTotal::new(key, &per_cpu))
            .collect()
    }

    /// Removes every counter of a reader cgroup and returns their last totals.
    pub fn take_cgroup_counters(&self, cgroup_id: u64) -> Vec<ReadTotal> {
        self.take_counters(|k| k.cgroup_id == cgroup_id)
    }

    /// Removes every counter of one credential generation and returns their last totals.
    pub fn take_generation_counters(&self, cred_id: u32, generation: u32) -> Vec<ReadTotal> {
        self.take_counters(|k| k.cred_id == cred_id && k.generation == generation)
    }

    fn take_counters(&self, which: impl Fn(&ReadKey) -> bool) -> Vec<ReadTotal> {
        let mut reads = lock(&self.reads);
        let gone: Vec<ReadTotal> = reads
            .iter()
            .flatten()
            .filter(|(k, _)| which(k))
            .map(|(key, per_cpu)| ReadTotal::new(key, &per_cpu))
            .collect();
        for t in &gone {
            let _ = reads.remove(&t.key);
        }
        gone
    }

    /// Kernel-side drops by stage, summed over CPUs.
    pub fn lost(&self, stage: LostStage) -> u64 {
        self.lost
            .get(&(stage as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}
