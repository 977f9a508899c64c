//! Series lifecycle of readers: when a reader's cgroup is gone (its container exited, its pod
//! was deleted) for longer than the grace period, its kernel counters are removed. Counts under
//! aggregate labels (`_node`, `_other_pod`) are kept in userspace so those counters never go
//! down; a removed container's own series simply end.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    identity::CgroupResolver,
    metrics::{container_label, is_aggregate_label, reader_of, ReaderReads},
    podmeta::PodIndex,
    probes::KernelMaps,
    state::State,
};

pub struct ReaderGc {
    pub state: Arc<State>,
    pub maps: Arc<KernelMaps>,
    pub cgroups: Arc<CgroupResolver>,
    pub pods: Arc<PodIndex>,
    pub grace: Duration,
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
            .collect();
        self.gone_since.retain(|id, _| ids.contains(id));
        let mut purged = 0;
        for id in ids {
            if self.cgroups.exists(id) {
                self.gone_since.remove(&id);
                continue;
            }
            let since = *self.gone_since.entry(id).or_insert(now);
            if now.duration_since(since) < self.grace {
                continue;
            }
            let reader = reader_of(&self.state, &self.cgroups, id);
            let removed = self.maps.purge_cgroup(id);
            let creds = self.state.credentials.lock().expect("credentials lock");
            let mut retired = self.state.retired.lock().expect("retired lock");
            for t in removed {
                let Some(c) = creds.get(t.key.cred_id) else {
                    continue;
                };
                let label = container_label(&c.pod_uid, reader.as_ref(), &self.pods);
                if is_aggregate_label(&label) {
                    retired
                        .entry((t.key.cred_id, label))
                        .or_default()
                        .add(&ReaderReads {
                            count: t.count,
                            last_read_ns: t.last_read_ns,
                            newest_generation: (t.count > 0).then_some(t.key.generation),
                        });
                }
            }
            drop((creds, retired));
            self.state.readers.remove(&id);
            self.cgroups.forget(id);
            self.gone_since.remove(&id);
            purged += 1;
        }
        purged
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
