//! Following the inventory: a full scan on inotify events (debounced) and periodically (a missed
//! event, an unwatchable directory), each handed to the caller. Problems and missing paths are
//! logged once while they last.
use std::{
    collections::{BTreeSet, HashSet},
    path::PathBuf,
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};

use super::{host::MAX_FILES_PER_WATCH, kubelet::GenerationNumbers, scan_all, Scan, Sources};

/// Rescan even without inotify events (a missed event, an unwatchable directory).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Events arriving within this window are folded into one rescan.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// One pass over every source.
#[derive(Debug)]
pub struct Pass {
    pub scan: Scan,
    /// Files the per-root caps skipped beyond those of the previous pass (each counted once).
    pub newly_skipped: u64,
    /// Directories that could not be watched with inotify since the previous pass (out of
    /// watches: `fs.inotify.max_user_watches`, shared with the kubelet and the runtime).
    pub failed_watches: u64,
}

pub struct Watcher {
    sources: Sources,
    generations: GenerationNumbers,
    warned_problems: HashSet<String>,
    warned_missing: HashSet<String>,
    last_skipped: u64,
}

impl Watcher {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            generations: GenerationNumbers::default(),
            warned_problems: HashSet::new(),
            warned_missing: HashSet::new(),
            last_skipped: 0,
        }
    }

    /// One full pass over the sources.
    pub fn rescan(&mut self) -> Pass {
        let scan = scan_all(&self.sources, &mut self.generations);
        for p in &scan.problems {
            if self.warned_problems.insert(p.clone()) {
                tracing::warn!("{p}");
            }
        }
        self.warned_problems.retain(|p| scan.problems.contains(p));
        for m in &scan.missing {
            if self.warned_missing.insert(m.clone()) {
                // Most hosts lack most of the built-in locations: only configured paths warn.
                if crate::config::DEFAULT_WATCH.contains(&m.as_str()) {
                    tracing::debug!(path = ?m, "built-in watch path does not exist (yet)");
                } else {
                    tracing::warn!(path = ?m, "watch path does not exist (yet); it will be watched when it appears");
                }
            }
        }
        self.warned_missing.retain(|m| scan.missing.contains(m));
        let newly_skipped = scan.skipped.saturating_sub(self.last_skipped);
        if newly_skipped > 0 {
            tracing::warn!(
                skipped = scan.skipped,
                limit = MAX_FILES_PER_WATCH,
                "too many files under a watch path; the rest are not tracked"
            );
        }
        self.last_skipped = scan.skipped;
        Pass {
            scan,
            newly_skipped,
            failed_watches: 0,
        }
    }

    /// Runs until the inotify stream ends: after each event burst and every `RESCAN_INTERVAL`, a
    /// pass goes to `apply`. `first_dirs` are the directories the caller's first pass found.
    pub async fn run(
        mut self,
        first_dirs: BTreeSet<PathBuf>,
        mut apply: impl FnMut(&Pass) + Send,
    ) -> std::io::Result<()> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let mut watched: HashSet<PathBuf> = HashSet::new();
        // Failures are logged once per directory and counted once each.
        let mut failed: HashSet<PathBuf> = HashSet::new();
        let mut add = |dirs: &BTreeSet<PathBuf>, known: &mut HashSet<PathBuf>| -> u64 {
            known.retain(|d| dirs.contains(d));
            failed.retain(|d| dirs.contains(d));
            let mut new_failures = 0;
            for d in dirs {
                if known.contains(d) {
                    continue;
                }
                match watches.add(d, mask) {
                    Ok(_) => {
                        known.insert(d.clone());
                        failed.remove(d);
                    }
                    Err(e) => {
                        if failed.insert(d.clone()) {
                            new_failures += 1;
                            tracing::warn!(dir = ?d, error = %e, "cannot watch a directory with inotify; its changes are seen by the periodic rescan only");
                        }
                    }
                }
            }
            new_failures
        };
        let mut pending_failures = add(&first_dirs, &mut watched);
        // Held by the future until it ends otherwise (tens of thousands of paths at 5,000 pods).
        drop(first_dirs);
        let mut stream = inotify.into_event_stream([0u8; 8192])?;
        // Rescan often enough that series of removed credentials go soon after their grace period.
        let period = RESCAN_INTERVAL
            .min(self.sources.grace / 2)
            .max(Duration::from_millis(500));
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = stream.next() => {
                    if ev.is_none() { return Ok(()); }
                    // Fold a burst (an atomic writer's several steps) into one pass.
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {}
                }
                _ = tick.tick() => {}
            }
            // Scanning and parsing touch files on mounts that may hang (NFS, CSI): off the
            // async workers, so that /healthz and /metrics keep answering meanwhile.
            let pass = tokio::task::block_in_place(|| {
                let mut pass = self.rescan();
                pass.failed_watches = std::mem::take(&mut pending_failures);
                apply(&pass);
                pass
            });
            pending_failures = add(&pass.scan.dirs, &mut watched);
            // A pass at 5,000 pods allocates tens of MiB: give them back once it is done with.
            drop(pass);
            crate::sys::release_free_memory();
        }
    }
}
