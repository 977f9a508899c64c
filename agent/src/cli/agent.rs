//! `credwatch agent`: wires the stages together (see docs/architecture.md).
//!
//! ```text
//! inventory (scan + inotify) --watch_sync--> State credentials + WATCHED (kernel)
//! file hooks --per-CPU counters--> READS (kernel) -------------------> export (scrape)
//!            --first reads------> EVENTS ring --> queue --> first_reads --> State readers --^
//! ```
use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    config::{Config, FileHook},
    export, http,
    identity::{podmeta, CgroupResolver, PodIndex},
    inventory::{watcher::Watcher, Sources},
    kernel::{
        self,
        auth_maps::AuthMaps,
        btf,
        compat::{Links, Loaded},
        maps::KernelMaps,
        pin::{self, Pins, Prior},
        ring,
    },
    sensors::{
        auth::{
            self,
            catalog::Catalog,
            connects::ConnectFold,
            endpoints,
            requests::Requests,
            tls::{self, TlsProbes},
        },
        file::{
            self, first_reads,
            reader_gc::ReaderGc,
            watch_sync::{Left, WatchSync},
        },
    },
    state::{State, UserLoss},
    sys,
};

/// Binds the listener, loads and attaches the probes, scans the inventory, and serves until
/// SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Some(why) = sys::missing_privileges() {
        bail!("{why}");
    }
    // Bad watch entries fail before anything is loaded.
    let sources = Sources::from_config(&cfg).map_err(anyhow::Error::msg)?;
    let catalog = Arc::new(Catalog::from_config(&cfg)?);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    // Tests and scripts read this line to find a port chosen with `--listen ADDR:0`.
    println!("credwatch: serving http://{addr}/metrics");

    mount_pseudo_filesystems();
    let state = Arc::new(State::default());
    let pins = open_pins(cfg.pin_dir.as_deref());
    let kernel = load_kernel(&state, &cfg, pins)?;
    sys::release_free_memory();
    let (maps, auth_maps) = (kernel.maps.clone(), kernel.auth_maps.clone());
    let cgroups = Arc::new(CgroupResolver::new(
        sys::cgroup2_mount().unwrap_or_else(|| "/sys/fs/cgroup".to_owned()),
    ));
    let pods = Arc::new(PodIndex::default());
    tokio::spawn(podmeta::run(
        podmeta::ApiConfig {
            kubeconfig: cfg.kubeconfig.clone(),
            node_name: cfg.node_name.clone(),
        },
        pods.clone(),
    ));
    // Inventory first, so that reads are counted from the moment we report ready.
    follow_inventory(sources, &state, &maps, &cgroups, kernel.left);
    follow_first_reads(kernel.ring, &state, &cgroups);
    let gc = ReaderGc::new(
        state.clone(),
        maps.clone(),
        cgroups.clone(),
        pods.clone(),
        cfg.series_grace,
    );
    supervise(&state, "reader GC", async move {
        gc.run().await;
        Ok(())
    });
    let connects = ConnectFold {
        state: state.clone(),
        maps: auth_maps.clone(),
        cgroups: cgroups.clone(),
        pods: pods.clone(),
        catalog: catalog.clone(),
    };
    follow_endpoints(&catalog, &auth_maps, &connects);
    let requests = Requests::new(
        state.clone(),
        cgroups.clone(),
        pods.clone(),
        catalog.clone(),
    );
    follow_auth_bytes(kernel.auth, requests, kernel.mapped, &state);
    let mut collector =
        export::Collector::new(state.clone(), Some(maps), cgroups, pods, cfg.max_series);
    collector.connects = Some(connects);
    let app = http::router(http::App {
        registry: Arc::new(export::registry(collector)),
        state,
        api: cfg.api,
    });
    tracing::info!(%addr, api = ?cfg.api, "ready");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("HTTP server")?;
    stop(kernel.ebpf, kernel.pins);
    Ok(())
}

/// Lets go of the object: its own probes detach, the pinned ones go on counting.
fn stop(ebpf: Arc<std::sync::Mutex<aya::Ebpf>>, pins: Option<Pins>) {
    match &pins {
        Some(p) => {
            tracing::info!(dir = ?p.root(), "stopping; the pinned file probes go on counting for the next agent (credwatch agent --unpin removes them)")
        }
        None => tracing::info!("stopping; probes detach as the process exits"),
    }
    drop(ebpf);
}

/// `credwatch agent --unpin`: removes every pin (the last step of an uninstall).
pub fn unpin(cfg: &Config) -> anyhow::Result<()> {
    let Some(dir) = &cfg.pin_dir else {
        bail!("--unpin needs a pin directory (--pin-dir is none)");
    };
    if !dir.exists() {
        println!("credwatch: nothing pinned: {dir:?} does not exist");
        return Ok(());
    }
    let (pins, _) = Pins::open(dir, std::time::Duration::ZERO)
        .with_context(|| format!("cannot take {dir:?} (stop the agent first)"))?;
    let removed = pins
        .remove_all()
        .with_context(|| format!("removing the pins in {dir:?}"))?;
    drop(pins);
    let _ = std::fs::remove_dir(dir);
    println!(
        "credwatch: removed {} entries from {dir:?}: {}",
        removed.len(),
        removed.join(", ")
    );
    Ok(())
}

/// The pin directory, locked; without one (not asked for, or not usable here) the file probes
/// and their counters live as long as the agent.
fn open_pins(dir: Option<&Path>) -> Option<Pins> {
    let dir = dir?;
    match Pins::open(dir, pin::LOCK_WAIT) {
        Ok((pins, prior)) => {
            match prior {
                Prior::Nothing => {
                    tracing::info!(dir = ?dir, "pinning the file probes and their maps")
                }
                Prior::Maps => {
                    tracing::info!(dir = ?dir, "taking over the pinned maps of the agent before")
                }
                Prior::OtherLayout(old) => {
                    tracing::warn!(dir = ?dir, removed = ?old, "the pinned maps are of another layout (another version): removed, counting starts afresh")
                }
            }
            Some(pins)
        }
        Err(e) => {
            tracing::warn!(dir = ?dir, error = %e, "cannot pin: the file probes and their counters live only as long as this agent");
            None
        }
    }
}

/// The loaded object's handles: maps, rings, and the object itself (the TLS task attaches more
/// uprobes to it as libraries appear; the probes live as long as it does).
struct Kernel {
    maps: Arc<KernelMaps>,
    auth_maps: Arc<AuthMaps>,
    ring: RingBuf<MapData>,
    auth: ring::AuthSources,
    /// Processes that just mapped a library, for the TLS task to look at now.
    mapped: mpsc::Sender<u32>,
    ebpf: Arc<std::sync::Mutex<aya::Ebpf>>,
    /// The pin directory, locked while the agent runs.
    pins: Option<Pins>,
    /// What the agent before left in the pinned maps, for the first inventory pass to take over.
    left: Option<Left>,
}

/// Loads the object, attaches the file and auth-call sensors and the TLS probes (on the
/// system's libssl and every one mapped now, then as processes map them), takes the maps.
fn load_kernel(state: &Arc<State>, cfg: &Config, pins: Option<Pins>) -> anyhow::Result<Kernel> {
    let mut loaded = attach_file_sensor(cfg.file_hook, pins.as_ref())?;
    let auth_hooks = match cfg.auth_sensor {
        true => attach_auth_sensor(&mut loaded),
        false => {
            tracing::info!("the auth-call sensor is off (--no-auth-sensor)");
            Vec::new()
        }
    };
    let maps = Arc::new(KernelMaps::take(&mut loaded.ebpf)?);
    let left = pins
        .is_some()
        .then(|| take_over(state, &maps, &loaded.links));
    let auth_maps = Arc::new(AuthMaps::take(&mut loaded.ebpf)?);
    let auth_ring =
        kernel::maps::take(&mut loaded.ebpf, credwatch_common::auth::maps::AUTH_EVENTS)?;
    let ring = kernel::maps::take(&mut loaded.ebpf, credwatch_common::maps::EVENTS)?;
    let segments = match cfg.auth_sensor {
        true => kernel::maps::per_cpu_buffers(
            &mut loaded.ebpf,
            credwatch_common::auth::maps::SEGMENTS,
            credwatch_common::auth::SEGMENTS_PAGES,
        )?,
        false => Vec::new(),
    };
    let ebpf = Arc::new(std::sync::Mutex::new(loaded.ebpf));
    let (mapped, mapped_rx) = mpsc::channel(MAPPED_QUEUE);
    let tls_hooks = match cfg.auth_sensor {
        true => follow_tls_libraries(&ebpf, cfg, mapped_rx),
        false => Vec::new(),
    };
    state.set_hooks(
        loaded
            .hooks
            .into_iter()
            .chain(auth_hooks)
            .chain(tls_hooks)
            .collect(),
    );
    Ok(Kernel {
        maps,
        auth_maps,
        ring,
        auth: ring::AuthSources {
            ring: auth_ring,
            segments,
        },
        mapped,
        ebpf,
        pins,
        left,
    })
}

/// Processes waiting to be looked at for new libraries; past it the periodic scan finds them.
const MAPPED_QUEUE: usize = 1024;

/// The TLS probes loaded, attached to the system's libssl and every one mapped now, then as
/// processes map them (`mapped`: processes that just mapped a library; and a periodic scan).
fn follow_tls_libraries(
    ebpf: &Arc<std::sync::Mutex<aya::Ebpf>>,
    cfg: &Config,
    mapped: mpsc::Receiver<u32>,
) -> Vec<kernel::HookStatus> {
    let mut tls = TlsProbes::new(ebpf.clone(), cfg.tls_probe_points);
    let hooks = tls.load();
    tls::log_libraries(&tls.attach_system(&cfg.host_root), "start");
    tls::log_libraries(&tls.scan(Path::new("/proc")), "start");
    tokio::spawn(tls.run("/proc".into(), mapped));
    hooks
}

/// Takes over what the agent before left in the pinned maps: its kept reads (finishing a move it
/// was killed in), the ids of its credentials, its `WATCHED` entries and volume marks.
fn take_over(state: &State, maps: &Arc<KernelMaps>, links: &Links) -> Left {
    let kept = state.keep_in(maps.clone());
    let left = Left {
        watched: maps.watched(),
        identities: maps.identities(),
        volume_words: maps.volume_words(),
    };
    state.adopt_ids(&left.watched, &left.identities);
    if !left.watched.is_empty() || kept.entries > 0 {
        tracing::info!(
            watched = left.watched.len(),
            kept = kept.entries,
            finished_moves = kept.finished_moves,
            probes = match links {
                Links::Kept => "kept: they never stopped counting",
                Links::Pinned => "replaced by this build's, without a gap",
                Links::Own => "this agent's, unpinned",
            },
            "took over the counters of the agent before"
        );
    }
    left
}

/// tracefs (aya finds tracepoint ids through it) and bpffs, which fresh hosts often lack.
fn mount_pseudo_filesystems() {
    for (path, fstype) in [(sys::TRACEFS, "tracefs"), (sys::BPFFS, "bpf")] {
        match sys::ensure_mounted(path, fstype) {
            Ok(true) => tracing::info!(path, "mounted {fstype}"),
            Ok(false) => {}
            Err(e) => tracing::warn!(path, error = %e, "cannot mount {fstype}"),
        }
    }
}

/// The file sensor, attached as `credwatch check` attaches it: with the walk this kernel allows,
/// falling back to helper reads where the verifier refuses the kfunc.
fn attach_file_sensor(file_hook: FileHook, pins: Option<&Pins>) -> anyhow::Result<Loaded> {
    let kernel = btf::probe_btf(Path::new(btf::VMLINUX_BTF))?;
    tracing::debug!(offsets = ?kernel.offsets, "kernel struct offsets");
    let loaded = file::attach(&kernel, std::process::id(), file_hook, pins)?;
    match &loaded.fast_refused {
        None => tracing::info!("file probe: fexit/security_file_open (every open, file in hand)"),
        Some(why) => tracing::info!(
            fast_hook = %why,
            walk = loaded.btf.file_walk(),
            "file probe: the open syscalls' tracepoints, descriptor to inode by"
        ),
    }
    for s in &loaded.hooks {
        match &s.error {
            None => tracing::info!(probe = %s.probe, "probe attached"),
            Some(e) => tracing::warn!(probe = %s.probe, error = %e, "probe not attached"),
        }
    }
    if !loaded.any_attached() {
        bail!("no file probe could be attached; run `credwatch check` for details");
    }
    Ok(loaded)
}

/// The auth-call sensor's hooks on the same object; failures are logged, never fatal.
fn attach_auth_sensor(loaded: &mut Loaded) -> Vec<kernel::HookStatus> {
    let trampolines = !loaded.trampolines_refused;
    let hooks = auth::attach(&mut loaded.ebpf, trampolines);
    for s in &hooks {
        match &s.error {
            None => tracing::debug!(probe = %s.probe, "probe attached"),
            Some(e) => tracing::warn!(probe = %s.probe, error = %e, "auth-call probe not attached"),
        }
    }
    let attached = hooks.iter().filter(|h| h.attached).count();
    tracing::info!(attached, of = hooks.len(), "auth-call probes attached");
    hooks
}

/// The catalog's addresses in the kernel now (hostnames follow from the resolver task), and the
/// connect counters folded every few seconds so cgroups are described while they live.
fn follow_endpoints(catalog: &Arc<Catalog>, maps: &Arc<AuthMaps>, connects: &ConnectFold) {
    endpoints::sync(catalog, maps, |_, _| {
        Err(std::io::Error::other("resolved in the background"))
    });
    let (c, m) = (catalog.clone(), maps.clone());
    tokio::spawn(endpoints::run(c, m));
    let fold = connects.clone();
    supervise(&connects.state, "connect fold", async move {
        fold.run(std::time::Duration::from_secs(5)).await;
        Ok(())
    });
}

/// The first inventory pass now (the agent is ready after it), then the watcher's, for good.
fn follow_inventory(
    sources: Sources,
    state: &Arc<State>,
    maps: &Arc<KernelMaps>,
    cgroups: &Arc<CgroupResolver>,
    left: Option<Left>,
) {
    let started = std::time::Instant::now();
    let grace = sources.grace;
    let mut sync = WatchSync::new(state.clone(), maps.clone(), cgroups.clone(), grace);
    if let Some(left) = left {
        sync.take_over(left);
    }
    let mut watcher = Watcher::new(sources);
    let mut first = watcher.rescan();
    sync.apply(&first);
    tracing::info!(
        credentials = state.credential_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "inventory scanned"
    );
    state.mark_inventory_done();
    let dirs = std::mem::take(&mut first.scan.dirs);
    drop(first);
    sys::release_free_memory();
    supervise(state, "inventory watcher", async move {
        watcher.run(dirs, |pass| sync.apply(pass)).await
    });
}

/// The event ring drained into a bounded queue, and the queue decoded into reader records.
fn follow_first_reads(ring: RingBuf<MapData>, state: &Arc<State>, cgroups: &Arc<CgroupResolver>) {
    let (tx, rx) = mpsc::channel(ring::QUEUE_CAPACITY);
    let handler = first_reads::handle(rx, state.clone(), cgroups.clone());
    supervise(state, "first-read decoder", async move {
        handler.await;
        Ok(())
    });
    let counted = state.clone();
    supervise(state, "ring buffer reader", async move {
        ring::drain(ring, tx, || counted.count_lost(UserLoss::Channel, 1)).await
    });
}

/// The bytes of endpoint sockets, drained into their own bounded queue and decoded.
fn follow_auth_bytes(
    sources: ring::AuthSources,
    requests: Requests,
    mapped: mpsc::Sender<u32>,
    state: &Arc<State>,
) {
    let (tx, rx) = mpsc::channel(ring::QUEUE_CAPACITY);
    supervise(state, "auth-call decoder", async move {
        requests.handle(rx, mapped).await;
        Ok(())
    });
    let counted = state.clone();
    supervise(state, "auth ring buffer reader", async move {
        ring::drain_auth(
            sources,
            tx,
            || counted.count_lost(UserLoss::Channel, 1),
            || counted.count_lost(UserLoss::Decode, 1),
        )
        .await
    });
}

/// Runs a task that should last as long as the agent; if it ends, says so in the log and in
/// `/healthz`.
fn supervise(
    state: &Arc<State>,
    task: &'static str,
    run: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) {
    let state = state.clone();
    tokio::spawn(async move {
        let why = match run.await {
            Ok(()) => "ended".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::error!(task, error = %why, "a task of the agent stopped; /healthz reports it");
        state.task_stopped(task, &why);
    });
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
