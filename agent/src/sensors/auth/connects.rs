//! Connect outcomes: the kernel's exact per-CPU counters by (cgroup, endpoint, result), folded
//! into per-workload totals. Folding runs before every scrape and every few seconds, so a
//! cgroup is described while it lives; the kernel entries of a gone cgroup are then removed
//! (its totals stay, so no counter goes down).
use std::sync::Arc;

use credwatch_common::auth::{ConnectKey, ConnectResult};

use super::catalog::Catalog;
use crate::{
    identity::{attribution, CgroupResolver, PodIndex},
    kernel::auth_maps::AuthMaps,
    sensors::file::tally::reader_of,
    state::State,
};

/// The `result` label.
pub fn result_label(result: u32) -> &'static str {
    match result {
        r if r == ConnectResult::Established as u32 => "established",
        r if r == ConnectResult::Refused as u32 => "refused",
        _ => "failed",
    }
}

/// Everything the fold needs, shared by the periodic task and the exporter.
#[derive(Clone, Debug)]
pub struct ConnectFold {
    pub state: Arc<State>,
    pub maps: Arc<AuthMaps>,
    pub cgroups: Arc<CgroupResolver>,
    pub pods: Arc<PodIndex>,
    pub catalog: Arc<Catalog>,
}

impl ConnectFold {
    /// Folds every kernel counter's increase in; removes the counters of gone cgroups.
    pub fn fold(&self) {
        let mut gone: Vec<ConnectKey> = Vec::new();
        for (key, total) in self.maps.connect_totals() {
            let delta = self.state.with_auth(|a| a.fold_connects(key, total));
            if delta > 0 {
                let reader = reader_of(&self.state, &self.cgroups, key.cgroup_id);
                let w = attribution::workload(reader.as_ref(), &self.pods);
                let endpoint = self.catalog.name(key.endpoint);
                let result = result_label(key.result);
                self.state
                    .with_auth(|a| a.add_connects(w, endpoint, result, delta));
            }
            if !self.cgroups.exists(key.cgroup_id) {
                gone.push(key);
            }
        }
        if gone.is_empty() {
            return;
        }
        self.maps.forget_connects(&gone);
        self.state
            .with_auth(|a| gone.iter().for_each(|k| a.forget_connect(k)));
    }

    /// Folds every `every` until the process ends.
    pub async fn run(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.fold()).await;
        }
    }
}
