//! Keeps the state's credentials and the kernel's `WATCHED` map in step with inventory passes.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    inventory::{content, watcher::Pass},
    kernel::maps::KernelMaps,
    state::{MapOp, State, UserLoss},
    sys,
};

pub struct WatchSync {
    pub state: Arc<State>,
    pub maps: Arc<KernelMaps>,
    /// How long series of a credential that is gone are kept.
    pub grace: Duration,
}

impl WatchSync {
    /// Applies one inventory pass: records first, then the kernel map, new inodes before old ones
    /// go (so a rotation never leaves a gap).
    pub fn apply(&self, pass: &Pass) {
        self.state
            .count_lost(UserLoss::Cardinality, pass.newly_skipped);
        let ops = self.state.apply_scan(
            &pass.scan.found,
            content::parse_file_logged,
            Instant::now(),
            sys::unix_now(),
            self.grace,
        );
        for op in &ops {
            self.apply_op(op);
        }
    }

    fn apply_op(&self, op: &MapOp) {
        match *op {
            MapOp::Watch(inode, cred) => {
                if let Some(r) = self.state.credential(cred.cred_id) {
                    tracing::info!(pod_uid = ?r.pod_uid, volume = ?r.volume, file = ?r.file, kind = r.kind.as_str(), generation = cred.generation, "watching credential");
                }
                if let Err(e) = self.maps.watch(inode, cred) {
                    tracing::error!(error = %e, "cannot watch a credential: WATCHED map full?");
                    self.state.count_lost(UserLoss::WatchedMap, 1);
                }
            }
            MapOp::Unwatch(inode) => self.maps.unwatch(inode),
            MapOp::Purge(cred_id) => self.maps.forget_credential(cred_id),
        }
    }
}
