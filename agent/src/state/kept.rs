//! Reads that left the kernel's `READS` and are kept by the agent: folded counters of generations
//! no longer on disk (by reader cgroup), and reads of gone reader cgroups under aggregate labels.
//! With a store (the pinned `KEPT` map) every change is written through, so a restarted agent
//! starts from them (`Kept::load`), and a move interrupted by a kill is finished, not repeated.
use std::{collections::HashMap, sync::Arc};

use credwatch_common::file::{
    KeptKey, KeptReads, ReadKey, KEPT_FROM_UNSEEN, KEPT_HAS_GENERATION, KEPT_SOURCE,
};

use super::ReaderReads;
use crate::{identity::attribution::AGGREGATE_LABELS, kernel::maps::KernelMaps};

/// Where kept reads came from: a `READS` counter, the folded reads of a (cgroup, credential), or
/// the `UNSEEN` entries of a reader cgroup on the inode of a credential generation (a claim: the
/// entries are removed on the next pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Counter(ReadKey),
    Folded {
        cgroup_id: u64,
        cred_id: u32,
    },
    Unseen(ReadKey),
    /// Nothing to remove after (the rest of a claim, when its entries go).
    None,
}

#[derive(Debug, Default)]
pub struct Kept {
    /// (reader cgroup, credential) -> reads of generations no longer watched.
    pub folded: HashMap<(u64, u32), ReaderReads>,
    /// (credential, aggregate label) -> reads of gone reader cgroups.
    pub retired: HashMap<(u32, String), ReaderReads>,
    store: Option<Arc<KernelMaps>>,
}

/// What a restart found kept, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entries: usize,
    /// Moves a kill interrupted, finished now (their sources removed).
    pub finished_moves: usize,
}

fn folded_key(cgroup_id: u64, cred_id: u32) -> KeptKey {
    KeptKey {
        cgroup_id,
        cred_id,
        label: 0,
    }
}

fn label_number(label: &str) -> Option<u32> {
    let i = AGGREGATE_LABELS.iter().position(|l| *l == label)?;
    Some(i as u32 + 1)
}

fn to_kernel(r: &ReaderReads, source: Source, before: Option<KeptReads>) -> KeptReads {
    let (source, unseen) = match source {
        Source::Counter(k) => (k, false),
        Source::Folded { cgroup_id, cred_id } => (
            ReadKey {
                cgroup_id,
                cred_id,
                generation: KEPT_SOURCE,
            },
            false,
        ),
        Source::Unseen(k) => (k, true),
        // Keep the last move's mark: it may not be finished.
        Source::None => before.map_or((ReadKey::default(), false), |b| {
            (b.source, b.flags & KEPT_FROM_UNSEEN != 0)
        }),
    };
    let mut flags = 0;
    if r.newest_generation.is_some() {
        flags |= KEPT_HAS_GENERATION;
    }
    if unseen {
        flags |= KEPT_FROM_UNSEEN;
    }
    KeptReads {
        count: r.count,
        last_read_ns: r.last_read_ns,
        newest_generation: r.newest_generation.unwrap_or(0),
        flags,
        source,
    }
}

fn from_kernel(k: &KeptReads) -> ReaderReads {
    ReaderReads {
        count: k.count,
        last_read_ns: k.last_read_ns,
        newest_generation: (k.flags & KEPT_HAS_GENERATION != 0).then_some(k.newest_generation),
    }
}

impl Kept {
    /// Takes `store` as the copy to write through, starting from what it holds: each entry's
    /// source, if still there, is removed first (the move that wrote the entry was killed before
    /// it could remove it), then the entries are loaded.
    pub fn load(&mut self, store: Arc<KernelMaps>) -> Loaded {
        let entries = store.kept();
        let mut finished_moves = 0;
        let mut claims = std::collections::HashSet::new();
        for (_, v) in &entries {
            let s = v.source;
            if s == ReadKey::default() {
                continue;
            }
            if v.flags & KEPT_FROM_UNSEEN != 0 {
                claims.insert(s);
            } else if s.generation == KEPT_SOURCE {
                let key = folded_key(s.cgroup_id, s.cred_id);
                if store.kept_entry(&key).is_some() {
                    store.remove_kept(&key);
                    finished_moves += 1;
                }
            } else if store.remove_read_counter(&s) {
                finished_moves += 1;
            }
        }
        finished_moves += store.remove_claimed_unseen(&claims);
        let entries = store.kept();
        for (k, v) in &entries {
            let reads = from_kernel(v);
            match k.label {
                0 => {
                    self.folded.insert((k.cgroup_id, k.cred_id), reads);
                }
                n => match AGGREGATE_LABELS.get(n as usize - 1) {
                    Some(label) => {
                        self.retired.insert((k.cred_id, (*label).to_owned()), reads);
                    }
                    None => store.remove_kept(k),
                },
            }
        }
        self.store = Some(store);
        Loaded {
            entries: entries.len(),
            finished_moves,
        }
    }

    /// Adds reads of a retired generation's counter (or a claimed unseen file) to a cgroup's.
    pub fn fold(&mut self, cgroup_id: u64, cred_id: u32, reads: &ReaderReads, source: Source) {
        let total = self.folded.entry((cgroup_id, cred_id)).or_default();
        total.add(reads);
        if let Some(store) = &self.store {
            let key = folded_key(cgroup_id, cred_id);
            write(store, key, total, source);
        }
    }

    /// Adds reads of a gone reader cgroup under its aggregate label.
    pub fn retire(&mut self, cred_id: u32, label: String, reads: &ReaderReads, source: Source) {
        let number = label_number(&label);
        let total = self.retired.entry((cred_id, label)).or_default();
        total.add(reads);
        if let (Some(store), Some(n)) = (&self.store, number) {
            let key = KeptKey {
                cgroup_id: 0,
                cred_id,
                label: n,
            };
            write(store, key, total, source);
        }
    }

    /// The credential ids any kept read is for (with repeats).
    pub fn cred_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (self.folded.keys().map(|(_, c)| *c)).chain(self.retired.keys().map(|(c, _)| *c))
    }

    /// Forgets the folded reads of a gone reader cgroup (after they were retired).
    pub fn forget_folded_of_cgroup(&mut self, cgroup_id: u64) {
        let store = self.store.as_ref();
        self.folded.retain(|&(g, c), _| {
            let keep = g != cgroup_id;
            if let (false, Some(s)) = (keep, store) {
                s.remove_kept(&folded_key(g, c));
            }
            keep
        });
    }

    /// Forgets every read kept of the credentials for which `gone` is true.
    pub fn forget_credentials(&mut self, gone: impl Fn(u32) -> bool) {
        let store = self.store.as_ref();
        self.folded.retain(|&(g, c), _| {
            if let (true, Some(s)) = (gone(c), store) {
                s.remove_kept(&folded_key(g, c));
            }
            !gone(c)
        });
        self.retired.retain(|(c, label), _| {
            if let (true, Some(s), Some(n)) = (gone(*c), store, label_number(label)) {
                s.remove_kept(&KeptKey {
                    cgroup_id: 0,
                    cred_id: *c,
                    label: n,
                });
            }
            !gone(*c)
        });
    }
}

/// Writes a kept total through; a full store is only worth a warning (the reads are still kept
/// here, they would just not survive a restart).
fn write(store: &KernelMaps, key: KeptKey, total: &ReaderReads, source: Source) {
    let before = matches!(source, Source::None)
        .then(|| store.kept_entry(&key))
        .flatten();
    if let Err(e) = store.put_kept(key, to_kernel(total, source, before)) {
        tracing::warn!(error = %e, "cannot keep reads in the pinned KEPT map (full?): they will not survive a restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_reads_round_trip_through_the_kernel_value() {
        let r = ReaderReads {
            count: 7,
            last_read_ns: 99,
            newest_generation: Some(0),
        };
        let k = to_kernel(
            &r,
            Source::Folded {
                cgroup_id: 5,
                cred_id: 2,
            },
            None,
        );
        assert_eq!(from_kernel(&k), r, "generation 0 is kept apart from none");
        assert_eq!(k.source.generation, KEPT_SOURCE);
        let none = ReaderReads::default();
        assert_eq!(from_kernel(&to_kernel(&none, Source::None, None)), none);
        let marked = to_kernel(&none, Source::None, Some(k));
        assert_eq!(
            marked.source, k.source,
            "a claim keeps the last move's mark"
        );
    }

    #[test]
    fn every_aggregate_label_has_a_number() {
        for (i, label) in AGGREGATE_LABELS.iter().enumerate() {
            assert_eq!(label_number(label), Some(i as u32 + 1));
        }
        assert_eq!(label_number("app"), None);
    }
}
