//! Readers: the cgroups the kernel saw reading credentials, each with its first reads.
use serde::Serialize;

use crate::identity::Reader;

/// Distinct reader cgroups remembered; beyond this new readers are still counted in the kernel
/// but not described (counted as `events_lost_total{stage="cardinality"}`).
pub const MAX_READERS: usize = 16_384;
/// First-read records kept per reader, newest last (16,384 readers x 16 records of a few short
/// strings each: tens of megabytes at worst).
pub const MAX_FIRST_READS_PER_READER: usize = 16;

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

impl ReaderRecord {
    /// Keeps the newest `MAX_FIRST_READS_PER_READER`.
    pub(super) fn push(&mut self, first: FirstRead) {
        // A read claimed from the kernel's unseen map and the kernel's own first-read event can
        // both report one generation's first read.
        if self
            .first_reads
            .iter()
            .any(|f| f.credential_id == first.credential_id && f.generation == first.generation)
        {
            return;
        }
        if self.first_reads.len() >= MAX_FIRST_READS_PER_READER {
            self.first_reads.remove(0);
        }
        self.first_reads.push(first);
    }
}

/// One reader's reads of one credential, over all its cgroups and the credential's generations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderReads {
    pub count: u64,
    pub last_read_ns: u64,
    pub newest_generation: Option<u32>,
}

impl ReaderReads {
    /// The reads of one kernel counter: `count` reads of `generation`, the last at `last_read_ns`.
    pub fn of_counter(count: u64, last_read_ns: u64, generation: u32) -> Self {
        Self {
            count,
            last_read_ns,
            newest_generation: (count > 0).then_some(generation),
        }
    }

    pub fn add(&mut self, o: &ReaderReads) {
        self.count += o.count;
        self.last_read_ns = self.last_read_ns.max(o.last_read_ns);
        self.newest_generation = match (self.newest_generation, o.newest_generation) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}
