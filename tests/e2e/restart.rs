//! Counting across agent restarts: the file sensor's maps and programs pinned in bpffs keep
//! counting while no agent runs, and the next agent takes them over.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use credwatch_e2e::{
    agent_bin,
    kubelet::{KubeletTree, PROJECTED},
    pod_container_cgroup, random_container_id, random_pod_uid, reads, sample,
    systemd_container_cgroup, Agent, Cgroup, PinDir, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn start(watch: &Path, pins: &PinDir, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--no-default-watch",
        "--watch",
        s(watch),
        "--pin-dir",
        pins.path(),
    ];
    args.extend_from_slice(extra);
    Agent::start_args(&args, &[])
}

/// What most of these tests start from: a credential file alone in a directory, a pin directory
/// of their own and a pod container's cgroup to read from.
struct Scene {
    dir: TempDir,
    cred: std::path::PathBuf,
    pins: PinDir,
    cg: Cgroup,
    /// The cgroup's `container` label (no pod metadata: the container id's first 12 characters).
    container: String,
}

fn scene(name: &str, file: &str, content: &str) -> Scene {
    let dir = TempDir::new(name);
    let cred = dir.join(file);
    std::fs::write(&cred, content).unwrap();
    let (rel, _uid, id) = pod_container_cgroup();
    Scene {
        dir,
        cred,
        pins: PinDir::new(&format!("{name}-pins")),
        cg: Cgroup::new(&rel),
        container: id[..12].to_owned(),
    }
}

/// The directory of the maps an agent pinned: `maps-v<layout>`, the one there is.
fn maps_dir(pins: &PinDir) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(&pins.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("maps-v")
        })
        .collect();
    assert_eq!(dirs.len(), 1, "one maps directory: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// Polls until the credential's reads by `container` are `want`; returns them as last seen.
fn wait_reads(agent: &Agent, file: &str, container: &str, want: u64) -> f64 {
    let m = agent.wait_metrics(&format!("{want} reads"), |m| {
        reads(m, &[("file", file), ("container", container)]) == Some(want as f64)
    });
    reads(&m, &[("file", file), ("container", container)]).unwrap_or(-1.0)
}

#[test]
fn a_reader_that_keeps_reading_through_five_kill9_restarts_is_counted_exactly() {
    require_e2e!();
    let dir = TempDir::new("restart");
    let cred = dir.join("token");
    std::fs::write(&cred, "CANARY-restart-value").unwrap();
    let pins = PinDir::new("restart-pins");
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Arc::new(Cgroup::new(&rel));
    let container = &id[..12];

    let mut agent = start(dir.path(), &pins, &[]);
    // The reader: short processes in one container cgroup, one after another, until told to stop.
    let made = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cg, made, stop, path) = (cg.clone(), made.clone(), stop.clone(), cred.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                made.fetch_add(cg.read(&["open", s(&path), "200"]), Ordering::Relaxed);
            }
        })
    };
    let mut kept = 0;
    for restart in 1..=5 {
        thread::sleep(Duration::from_millis(400));
        let before = made.load(Ordering::Relaxed);
        let log = agent.kill9();
        assert!(!log.contains("panicked"), "{log}");
        // The reader goes on while no agent runs.
        while made.load(Ordering::Relaxed) < before + 600 {
            thread::sleep(Duration::from_millis(10));
        }
        agent = start(dir.path(), &pins, &[]);
        let log = agent.log_text();
        assert!(
            log.contains("took over the counters of the agent before"),
            "restart {restart}: {log}"
        );
        kept += usize::from(log.contains("kept: they never stopped counting"));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let made = made.load(Ordering::Relaxed);
    assert!(made > 3000, "the reader made {made} reads");
    assert_eq!(wait_reads(&agent, "token", container, made), made as f64);
    assert_eq!(
        kept, 5,
        "the same build takes the pinned programs over as they are"
    );
    let m = agent.metrics();
    assert!(!m.contains("CANARY"), "{m}");
    for stage in ["kernel_ringbuf", "kernel_reads_map"] {
        let lost = sample(&m, "credwatch_events_lost_total", &[("stage", stage)]);
        assert_eq!(lost, Some(0.0), "{stage}: {m}");
    }
}

#[test]
fn a_file_replaced_while_no_agent_runs_keeps_the_reads_of_its_old_generation() {
    require_e2e!();
    let Scene {
        dir,
        cred,
        pins,
        cg,
        container,
    } = scene("restart-rotate", "api-key", "v1");
    let container = container.as_str();

    let agent = start(dir.path(), &pins, &[]);
    assert_eq!(cg.read(&["open", s(&cred), "30"]), 30);
    wait_reads(&agent, "api-key", container, 30);
    agent.kill9();
    // Reads of the old generation while no agent runs, then a replacement (a new inode, which
    // no one knows to watch until the next agent's scan).
    assert_eq!(cg.read(&["open", s(&cred), "12"]), 12);
    let tmp = dir.join("api-key-new");
    std::fs::write(&tmp, "v2").unwrap();
    std::fs::rename(&tmp, &cred).unwrap();

    let agent = start(dir.path(), &pins, &[]);
    assert_eq!(cg.read(&["open", s(&cred), "5"]), 5);
    wait_reads(&agent, "api-key", container, 47);
    let creds = agent.get("/api/v1/credentials");
    assert!(
        creds.contains("\"generation\":1"),
        "the replacement is generation 1 of the same credential: {creds}"
    );
    // The old generation's reads left the kernel's READS for the pinned KEPT: a second restart
    // starts from them.
    agent.kill9();
    let agent = start(dir.path(), &pins, &[]);
    assert_eq!(cg.read(&["open", s(&cred), "3"]), 3);
    assert_eq!(wait_reads(&agent, "api-key", container, 50), 50.0);
    let log = agent.log_text();
    assert!(log.contains("kept=1"), "{log}");
}

#[test]
fn another_build_replaces_the_pinned_programs_without_losing_or_doubling_reads() {
    require_e2e!();
    let Scene {
        dir,
        cred,
        pins,
        cg,
        container,
    } = scene("restart-upgrade", "token", "x");
    let container = container.as_str();

    // `--file-hook` changes what an agent attaches: to the pins, another build.
    let links = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&pins.0)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("links-"))
            .collect();
        v.sort();
        v
    };
    let agent = start(dir.path(), &pins, &["--file-hook", "auto"]);
    let first = links();
    assert_eq!(first.len(), 1, "{first:?}");
    cg.read(&["open", s(&cred), "100"]);
    agent.kill9();
    cg.read(&["open", s(&cred), "50"]);
    let agent = start(dir.path(), &pins, &["--file-hook", "tracepoints"]);
    let second = links();
    assert_eq!(second.len(), 1, "the replaced set is unpinned: {second:?}");
    assert_ne!(first, second);
    let log = agent.log_text();
    assert!(log.contains("replaced by this build's"), "{log}");
    cg.read(&["open", s(&cred), "25"]);
    assert_eq!(wait_reads(&agent, "token", container, 175), 175.0);
    // And back, stopped cleanly this time (SIGTERM leaves the pins too).
    drop(agent);
    cg.read(&["open", s(&cred), "5"]);
    let agent = start(dir.path(), &pins, &["--file-hook", "auto"]);
    cg.read(&["open", s(&cred), "5"]);
    assert_eq!(wait_reads(&agent, "token", container, 185), 185.0);
}

#[test]
fn unpin_removes_every_pin_and_is_refused_while_an_agent_runs() {
    require_e2e!();
    let Scene {
        dir,
        cred,
        pins,
        cg,
        container,
    } = scene("unpin", "token", "x");
    let unpin = || {
        Command::new(agent_bin())
            .args(["agent", "--unpin", "--pin-dir", pins.path()])
            .output()
            .unwrap()
    };

    let agent = start(dir.path(), &pins, &[]);
    let out = unpin();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop the agent first"), "{err}");
    cg.read(&["open", s(&cred), "10"]);
    wait_reads(&agent, "token", &container, 10);
    drop(agent);
    let maps = maps_dir(&pins);
    assert!(maps.is_dir(), "a stopped agent leaves its pins");

    let out = unpin();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&*maps.file_name().unwrap().to_string_lossy()) && said.contains("links-"),
        "{said}"
    );
    assert!(!pins.0.exists(), "the directory is gone");
    // Nothing counts any more: reads now are not there for the next agent.
    cg.read(&["open", s(&cred), "7"]);
    let agent = start(dir.path(), &pins, &[]);
    cg.read(&["open", s(&cred), "1"]);
    assert_eq!(wait_reads(&agent, "token", &container, 1), 1.0);
    assert!(agent.log_text().contains("pinning the file probes"));
}

#[test]
fn pins_of_another_map_layout_are_removed_and_counting_starts_afresh() {
    require_e2e!();
    let Scene {
        dir,
        cred,
        pins,
        cg,
        container,
    } = scene("layout", "token", "x");

    let agent = start(dir.path(), &pins, &[]);
    cg.read(&["open", s(&cred), "10"]);
    wait_reads(&agent, "token", &container, 10);
    agent.kill9();
    // As an older version would have left them: its maps under its own layout, its links.
    std::fs::rename(maps_dir(&pins), pins.0.join("maps-v0")).unwrap();
    let agent = start(dir.path(), &pins, &[]);
    let log = agent.log_text();
    assert!(
        log.contains("the pinned maps are of another layout"),
        "{log}"
    );
    assert!(!pins.0.join("maps-v0").exists());
    cg.read(&["open", s(&cred), "3"]);
    // The old counters went with their layout: 3, not 13, and never 10 counted twice.
    assert_eq!(wait_reads(&agent, "token", &container, 3), 3.0);
}

/// A kubelet volume rotated while no agent runs: the new generation's reads in between are
/// counted by inode (`UNSEEN` and the volume marks are pinned), the next agent names them, and its
/// generation numbers go on from the pinned ones although its inventory numbers from 0 again.
#[test]
fn a_kubelet_volume_rotated_while_no_agent_runs_is_counted_through_unseen() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let uid = random_pod_uid();
    let vol = tree.volume(&uid, PROJECTED, "kube-api-access-r3st");
    tree.write(&vol, &[("token", b"CANARY-restart-gen0")]);
    let root = tree.path().to_str().unwrap().to_owned();
    let pins = PinDir::new("restart-kubelet-pins");
    let args = [
        "--no-default-watch",
        "--kubelet-root",
        &root,
        "--pin-dir",
        pins.path(),
    ];
    let id = random_container_id();
    let cg = Cgroup::new(&systemd_container_cgroup(&uid, &id));
    let container = &id[..12];
    let token = vol.join("token");

    let agent = Agent::start_args(&args, &[]);
    assert_eq!(cg.read(&["open", s(&token), "4"]), 4);
    wait_reads(&agent, "token", container, 4);
    // A second rotation while the first agent runs: the pinned numbers are 1 now, the next
    // agent's inventory starts from 0.
    tree.write(&vol, &[("token", b"CANARY-restart-gen1")]);
    agent.wait_metrics("generation 1", |m| {
        sample(
            m,
            "credwatch_credential_rotations_total",
            &[("file", "token")],
        ) == Some(1.0)
    });
    assert_eq!(cg.read(&["open", s(&token), "2"]), 2);
    wait_reads(&agent, "token", container, 6);
    agent.kill9();

    tree.write(&vol, &[("token", b"CANARY-restart-gen2")]);
    assert_eq!(cg.read(&["open", s(&token), "3"]), 3);
    let agent = Agent::start_args(&args, &[]);
    wait_reads(&agent, "token", container, 9);
    let creds = agent.get("/api/v1/credentials");
    assert!(
        creds.contains("\"generation\":2"),
        "generation 2 after 1: {creds}"
    );
    let m = agent.metrics();
    let lag = sample(
        &m,
        "credwatch_credential_reader_generation_lag",
        &[("file", "token"), ("container", container)],
    );
    assert_eq!(lag, Some(0.0), "the reader read the newest generation: {m}");
    agent.kill9();
    let agent = Agent::start_args(&args, &[]);
    assert_eq!(cg.read(&["open", s(&token), "1"]), 1);
    assert_eq!(wait_reads(&agent, "token", container, 10), 10.0);
    let m = agent.metrics();
    assert!(!m.contains("CANARY"), "{m}");
}
