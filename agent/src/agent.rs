//! `credwatch agent`: wires the stages together.
//!
//! ```text
//! inventory (scan + inotify) --MapOp--> WATCHED (kernel)
//! file probes --per-CPU counters--> READS (kernel) ----------------> metrics collector (scrape)
//!             --first reads------> EVENTS ring --> queue --> decoder --> readers --^
//! ```
use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;

use crate::{
    btf,
    config::Config,
    events, http,
    identity::CgroupResolver,
    inventory, lifecycle, metrics,
    podmeta::{self, PodIndex},
    probes,
    state::{MapOp, State},
    sys,
};

/// Binds the listener, loads and attaches the probes, scans the inventory, and serves until
/// SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Some(why) = sys::missing_privileges() {
        bail!("{why}");
    }
    let (specs, errors) = inventory::specs(&cfg.watch);
    if !errors.is_empty() {
        bail!("bad watch entries: {}", errors.join("; "));
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    // Tests and scripts read this line to find a port chosen with `--listen ADDR:0`.
    println!("credwatch: serving http://{addr}/metrics");

    for (path, fstype) in [(sys::TRACEFS, "tracefs"), (sys::BPFFS, "bpf")] {
        match sys::ensure_mounted(path, fstype) {
            Ok(true) => tracing::info!(path, "mounted {fstype}"),
            Ok(false) => {}
            Err(e) => tracing::warn!(path, error = %e, "cannot mount {fstype}"),
        }
    }
    let kernel = btf::probe_btf(Path::new(btf::VMLINUX_BTF))?;
    tracing::debug!(offsets = ?kernel.offsets, "kernel struct offsets");
    tracing::info!(
        walk = kernel.file_walk(),
        "file probe: descriptor to inode by"
    );
    let mut ebpf = probes::load(&kernel, std::process::id())?;
    let statuses = probes::attach(&mut ebpf, &probes::FILE_PROBES);
    for s in &statuses {
        match &s.error {
            None => tracing::info!(probe = %s.probe, "probe attached"),
            Some(e) => tracing::warn!(probe = %s.probe, error = %e, "probe not attached"),
        }
    }
    if !statuses.iter().any(|s| s.attached) {
        bail!("no file probe could be attached; run `credwatch check` for details");
    }
    let (maps, ring) = probes::KernelMaps::take(&mut ebpf)?;
    let maps = Arc::new(maps);

    let state = Arc::new(State::default());
    *state.probes.lock().expect("probes lock") = statuses;
    let cgroups = Arc::new(CgroupResolver::new(
        sys::cgroup2_mount().unwrap_or_else(|| "/sys/fs/cgroup".to_owned()),
    ));
    note_unimplemented(&cfg);
    let pods = Arc::new(PodIndex::default());
    tokio::spawn(podmeta::run(
        podmeta::ApiConfig {
            kubeconfig: cfg.kubeconfig.clone(),
            node_name: cfg.node_name.clone(),
        },
        pods.clone(),
    ));

    // Inventory first, so that reads are counted from the moment we report ready.
    let sink_maps = maps.clone();
    let sink_state = state.clone();
    let mut watcher = inventory::Watcher::new(
        inventory::Sources {
            specs,
            kubelet_root: Some(cfg.kubelet_root.clone()),
            sink_volumes: cfg.credential_sink_volumes.clone(),
            grace: cfg.series_grace,
        },
        state.clone(),
        Box::new(move |ops| {
            let failed = sink_maps.apply(ops);
            for op in ops {
                if let MapOp::Purge(id) = op {
                    sink_state
                        .retired
                        .lock()
                        .expect("retired lock")
                        .retain(|(c, _), _| c != id);
                }
            }
            sink_state
                .lost
                .watched_map
                .fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        }),
    );
    let dirs = watcher.rescan();
    let count = state
        .credentials
        .lock()
        .expect("credentials lock")
        .iter()
        .count();
    tracing::info!(credentials = count, "inventory scanned");
    state
        .inventory_done
        .store(true, std::sync::atomic::Ordering::Release);
    tokio::spawn(async move {
        if let Err(e) = watcher.run(dirs).await {
            tracing::error!(error = %e, "inventory watcher stopped; credentials are no longer followed");
        }
    });

    let (tx, rx) = mpsc::channel(events::QUEUE_CAPACITY);
    tokio::spawn(events::handle_events(rx, state.clone(), cgroups.clone()));
    let ring_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = events::read_ring(ring, tx, ring_state).await {
            tracing::error!(error = %e, "ring buffer reader stopped");
        }
    });

    tokio::spawn(
        lifecycle::ReaderGc::new(
            state.clone(),
            maps.clone(),
            cgroups.clone(),
            pods.clone(),
            cfg.series_grace,
        )
        .run(),
    );
    let mut collector = metrics::Collector::new(state.clone(), Some(maps.clone()), cgroups, pods);
    collector.max_series = cfg.max_series;
    let registry = Arc::new(metrics::registry(collector));
    let app = http::router(http::App {
        registry,
        state: state.clone(),
    });
    state
        .probes_attached
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(%addr, "ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("HTTP server")?;
    tracing::info!("stopping; probes detach as the process exits");
    drop(ebpf);
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Says plainly which configured features this build does not act on yet.
fn note_unimplemented(cfg: &Config) {
    if !cfg.endpoints.is_empty() {
        tracing::warn!(endpoints = cfg.endpoints.len(), "outbound auth-call tracing is not supported by this build yet: `endpoints` are validated but not used");
    }
}
