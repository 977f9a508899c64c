//! The agent's own health: drops by stage, hooks attached, pod metadata, build.
use std::fmt;

use credwatch_common::LostStage;

use super::series::Families;
use crate::{
    kernel::maps::KernelMaps,
    state::{State, UserLoss},
};

pub fn encode(
    w: &mut Families,
    state: &State,
    maps: Option<&KernelMaps>,
    pod_metadata_up: bool,
    kernel: &str,
    read_entries: usize,
) -> fmt::Result {
    let kernel_lost = |s| maps.map(|m| m.lost(s)).unwrap_or(0);
    let lost = [
        ("kernel_ringbuf", kernel_lost(LostStage::RingBuf)),
        ("kernel_reads_map", kernel_lost(LostStage::ReadsMap)),
        ("kernel_watched_map", state.lost(UserLoss::WatchedMap)),
        ("channel", state.lost(UserLoss::Channel)),
        ("decode", state.lost(UserLoss::Decode)),
        (
            "cardinality",
            state.lost(UserLoss::Cardinality) + state.with_auth(|a| a.evicted),
        ),
        ("inotify_watch", state.lost(UserLoss::InotifyWatch)),
        ("kernel_connects_map", kernel_lost(LostStage::ConnectsMap)),
        ("kernel_socks_map", kernel_lost(LostStage::SocksMap)),
        ("kernel_auth_ringbuf", kernel_lost(LostStage::AuthRingBuf)),
    ];
    w.counters(
        "events_lost",
        "Everything dropped anywhere, by stage.",
        lost.iter().map(|(s, v)| (vec![("stage", (*s).into())], *v)),
    )?;
    w.gauges(
        "probe_attached",
        "1 when the probe is attached.",
        state.hooks().into_iter().map(|h| {
            (
                vec![("probe", h.probe.into())],
                if h.attached { 1.0 } else { 0.0 },
            )
        }),
    )?;
    w.gauges(
        "kernel_map_entries",
        "Entries in the kernel's maps (READS: one per reader cgroup, credential and generation still on disk; WATCHED: one per credential inode).",
        vec![
            (vec![("map", "READS".into())], read_entries as f64),
            (
                vec![("map", "WATCHED".into())],
                state.watched_entries() as f64,
            ),
        ],
    )?;
    w.gauge(
        "credential_shared_files",
        "Credential files found under a second identity (a volume two pods mount, a hard link): their reads count for the first.",
        state.shared_files() as f64,
    )?;
    w.gauge(
        "pod_metadata_up",
        "1 while the Kubernetes pod watch works; 0 without an API or while it fails (pods are then labelled by uid).",
        if pod_metadata_up { 1.0 } else { 0.0 },
    )?;
    w.gauges(
        "build_info",
        "The agent's version and the kernel it runs on.",
        vec![(
            vec![
                ("version", env!("CARGO_PKG_VERSION").into()),
                ("kernel", kernel.into()),
            ],
            1.0,
        )],
    )
}
