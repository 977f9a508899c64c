//! Series lifecycle of readers: when a reader's cgroup is gone (its container exited, its pod
//! was deleted) for longer than the grace period, its kernel counters are removed. Counts under
//! aggregate labels (`_node`, `_other_pod`) are kept in the state so those counters never go
//! down; a removed container's own series simply end.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::tally::reader_of;
use crate::{
    identity::{attribution, CgroupResolver, PodIndex},
    kernel::maps::KernelMaps,
    state::{kept::Source, ReaderReads, State},
};

pub struct ReaderGc {
    state: Arc<State>,
    maps: Arc<KernelMaps>,
    cgroups: Arc<CgroupResolver>,
    pods: Arc<PodIndex>,
    grace: Duration,
    gone_since: HashMap<u64, Instant>,
}

impl ReaderGc {
    pub fn new(
        state: Arc<State>,
        maps: Arc<KernelMaps>,
        cgroups: Arc<CgroupResolver>,
        pods: Arc<PodIndex>,
        grace: Duration,
    ) -> Self {
        Self {
            state,
            maps,
            cgroups,
            pods,
            grace,
            gone_since: HashMap::new(),
        }
    }

    /// One pass; returns how many reader cgroups were purged.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let ids: HashSet<u64> = self
            .maps
            .read_totals()
            .iter()
            .map(|t| t.key.cgroup_id)
            .chain(self.state.folded().iter().map(|((g, _), _)| *g))
            // Readers whose counters all went with a purged credential: their records too.
            .chain(self.state.reader_cgroups())
            .collect();
        self.gone_since.retain(|id, _| ids.contains(id));
        let mut purged = 0;
        for id in ids {
            if self.cgroups.exists(id) {
                self.gone_since.remove(&id);
                continue;
            }
            let since = *self.gone_since.entry(id).or_insert(now);
            if now.duration_since(since) >= self.grace {
                self.purge(id);
                purged += 1;
            }
        }
        purged
    }

    /// Removes a gone cgroup's counters, keeping the reads that aggregate labels show: each is
    /// written where it is kept before its source goes (see `state::kept`).
    fn purge(&mut self, cgroup_id: u64) {
        let reader = reader_of(&self.state, &self.cgroups, cgroup_id);
        let label_of = |cred_id: u32| {
            let c = self.state.credential(cred_id)?;
            let label = attribution::container_label(&c.pod_uid, reader.as_ref(), &self.pods);
            attribution::is_aggregate_label(&label).then_some(label)
        };
        // Under the counters' lock: a scrape meanwhile sees them in the kernel or in the state.
        self.maps.take_cgroup_counters(cgroup_id, |taken| {
            for t in taken {
                if let Some(label) = label_of(t.key.cred_id) {
                    let reads = ReaderReads::of_counter(t.count, t.last_read_ns, t.key.generation);
                    self.state
                        .retire(t.key.cred_id, label, &reads, Source::Counter(t.key));
                }
            }
            for (cred_id, reads) in self.state.folded_of_cgroup(cgroup_id) {
                if let Some(label) = label_of(cred_id) {
                    let source = Source::Folded { cgroup_id, cred_id };
                    self.state.retire(cred_id, label, &reads, source);
                }
            }
            self.state.forget_folded_of_cgroup(cgroup_id);
        });
        self.state.forget_reader(cgroup_id);
        self.cgroups.forget(cgroup_id);
        self.gone_since.remove(&cgroup_id);
    }

    pub async fn run(mut self) {
        let period = (self.grace / 2).clamp(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            tokio::time::sleep(period).await;
            let n = self.sweep(Instant::now());
            if n > 0 {
                tracing::debug!(
                    purged = n,
                    "removed counters of reader cgroups that are gone"
                );
            }
        }
    }
}
