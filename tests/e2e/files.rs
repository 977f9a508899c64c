//! Credential-read counting: every path form, exactness under load, generations, canaries.
use std::{path::Path, thread};

use credwatch_e2e::{pod_container_cgroup, reads, sample, Agent, Cgroup, TempDir};

const CANARY: &str = "CANARY-7f3e9a1c-never-export-me";

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn read_opens_are_counted_exactly_through_every_path_form() {
    require_e2e!();
    let dir = TempDir::new("paths");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let cred = secrets.join("db-password");
    std::fs::write(&cred, format!("{CANARY}\n")).unwrap();
    let other = dir.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(&cred, other.join("link")).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    let agent = Agent::start(&[&secrets], &[]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let container = &id[..12];
    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "db-password"), ("container", "_node")]),
        Some(0.0),
        "present with 0 before any read"
    );

    let mut expected = 0;
    expected += cg.read(&["open", s(&cred), "5"]);
    expected += cg.read(&["--chdir", s(&secrets), "open", "db-password", "4"]);
    expected += cg.read(&["open", s(&other.join("link")), "3"]);
    expected += cg.read(&["open", &format!("/proc/self/root{}", s(&cred)), "2"]);
    let bind = format!("{}:{}", s(&secrets), s(&mnt));
    expected += cg.read(&["--bind", &bind, "open", s(&mnt.join("db-password")), "6"]);
    // Read-write opens are reads too; write-only opens are not.
    expected += cg.read(&["open", s(&cred), "2", "rw"]);
    cg.read(&["open", s(&cred), "7", "w"]);
    assert_eq!(expected, 22);

    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "db-password"), ("container", container)]),
        Some(expected as f64),
        "{m}"
    );
    assert_eq!(
        reads(&m, &[("file", "db-password"), ("container", "_node")]),
        Some(0.0),
        "nothing read from the host"
    );
    let last = sample(
        &m,
        "credwatch_credential_last_read_timestamp_seconds",
        &[("file", "db-password"), ("container", container)],
    )
    .expect("last read");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 30.0, "last read {last} vs now {now}");

    // The reader is described by its cgroup, with its first read (decoded from the event ring:
    // it may trail the kernel's counters).
    let readers = agent.wait_get("/api/v1/readers", "the reader's record", |r| {
        r.contains(&rel)
    });
    // comm is the kernel's 15-character task name.
    assert!(
        readers.contains("\"comm\":\"credwatch-probe\""),
        "comm of the first reader: {readers}"
    );
}

#[test]
fn every_descriptor_table_shape_is_counted() {
    require_e2e!();
    // This kernel (6.18) has bpf_rdonly_cast: one helper-free walk for every descriptor.
    let agent = count_every_table_shape(&[]);
    assert!(
        agent.log_text().contains("bpf_rdonly_cast"),
        "the agent should walk with bpf_rdonly_cast here; log:\n{}",
        agent.log_text()
    );
}

#[test]
fn every_descriptor_table_shape_is_counted_without_kfuncs() {
    require_e2e!();
    // The walk of kernels before 6.2: direct loads into the embedded table, helpers past it.
    let agent = count_every_table_shape(&[("CREDWATCH_FILE_WALK", "helpers")]);
    assert!(
        agent.log_text().contains("bpf_probe_read_kernel otherwise"),
        "the agent should walk with helpers; log:\n{}",
        agent.log_text()
    );
}

#[test]
fn every_descriptor_table_shape_is_counted_when_the_kernel_refuses_the_kfunc() {
    require_e2e!();
    // A kernel whose verifier refuses the kfunc call: the agent must reload with the helper walk
    // rather than run blind, and count exactly.
    let agent = count_every_table_shape(&[("CREDWATCH_FILE_WALK", "refused-kfunc")]);
    let log = agent.log_text();
    assert!(
        log.contains("refused the file probes with bpf_rdonly_cast")
            && log.contains("bpf_probe_read_kernel otherwise"),
        "the agent should fall back to the helper walk; log:\n{log}"
    );
}

/// Reads through every shape of descriptor table, exactly counted: open syscalls, and io_uring
/// opens (on this host's tracepoint path, taken as they complete, with the same walk).
fn count_every_table_shape(env: &[(&str, &str)]) -> Agent {
    let dir = TempDir::new("fdtable");
    let cred = dir.join("key");
    std::fs::write(&cred, "x").unwrap();
    let agent = Agent::start_with_env(&[dir.path()], &[], env);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    // The array inside files_struct; an expanded table with low descriptors; descriptors >= 200.
    let n = cg.read(&["--fdtable", "fresh", "open", s(&cred), "1000"])
        + cg.read(&["--fdtable", "expanded", "open", s(&cred), "1000"])
        + cg.read(&["--fdtable", "high", "open", s(&cred), "1000"])
        + cg.read(&["--fdtable", "fresh", "open-uring", s(&cred), "500"])
        + cg.read(&["--fdtable", "high", "open-uring", s(&cred), "500"]);
    assert_eq!(n, 4000);
    assert_eq!(
        reads(
            &agent.metrics(),
            &[("file", "key"), ("container", &id[..12])]
        ),
        Some(4000.0)
    );
    agent
}

/// An io_uring open into a fixed-file slot installs no descriptor: its completion's result (0)
/// is no descriptor, and the credential the reader holds on descriptor 0 must not be counted for
/// it. The tracepoint path does not see such opens (README); the fast hook does, as every open.
#[test]
fn an_io_uring_open_into_a_fixed_slot_is_not_taken_for_a_descriptor() {
    require_e2e!();
    let dir = TempDir::new("uring-fixed");
    let cred = dir.join("token");
    std::fs::write(&cred, format!("{CANARY}\n")).unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    // One plain open (onto descriptor 0), then 300 fixed-slot opens through the ring.
    assert_eq!(cg.read(&["open-uring", s(&cred), "300", "fixed"]), 300);
    let fast = agent
        .log_text()
        .contains("file probe: fexit/security_file_open");
    let want = if fast { 301.0 } else { 1.0 };
    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "token"), ("container", &id[..12])]),
        Some(want),
        "fast hook: {fast}\n{m}"
    );
    assert!(!m.contains(CANARY) && !agent.log_text().contains(CANARY));
}

#[test]
fn two_hundred_thousand_reads_from_two_processes_are_all_counted() {
    require_e2e!();
    let dir = TempDir::new("load");
    let cred = dir.join("token");
    std::fs::write(&cred, "x").unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let path = s(&cred).to_owned();
    let counts: Vec<u64> = thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| cg.read(&["open", &path, "100000"])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(counts, [100_000, 100_000]);
    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "token"), ("container", &id[..12])]),
        Some(200_000.0)
    );
    for line in m
        .lines()
        .filter(|l| l.starts_with("credwatch_events_lost_total{"))
    {
        assert!(line.ends_with(" 0"), "nothing may be lost: {line}");
    }
}

#[test]
fn a_replaced_file_is_a_new_generation_and_later_reads_count_against_it() {
    require_e2e!();
    let dir = TempDir::new("rotate");
    let cred = dir.join("api-key");
    std::fs::write(&cred, "v1").unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    cg.read(&["open", s(&cred), "3"]);

    // Atomic replacement, as config-management tools do: write aside, rename over.
    let tmp = dir.join(".api-key.tmp");
    std::fs::write(&tmp, "v2").unwrap();
    std::fs::rename(&tmp, &cred).unwrap();
    agent.wait_metrics("rotation", |m| {
        sample(
            m,
            "credwatch_credential_rotations_total",
            &[("file", "api-key")],
        ) == Some(1.0)
    });
    cg.read(&["open", s(&cred), "4"]);
    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "api-key"), ("container", &id[..12])]),
        Some(7.0),
        "{m}"
    );
    let creds = agent.get("/api/v1/credentials");
    assert!(creds.contains("\"generation\":1"), "{creds}");
    let readers = agent.get("/api/v1/readers");
    assert!(
        readers.contains("\"generation\":0") && readers.contains("\"generation\":1"),
        "a first read of each generation: {readers}"
    );
}

#[test]
fn canary_values_never_leave_the_agent() {
    require_e2e!();
    let dir = TempDir::new("canary");
    std::fs::write(dir.join("password"), CANARY).unwrap();
    std::fs::write(
        dir.join("tls.key"),
        format!("-----BEGIN PRIVATE KEY-----\n{CANARY}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("token"),
        format!("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.{CANARY}"),
    )
    .unwrap();
    let agent = Agent::start(&[dir.path()], &["--config", "/dev/null"]);
    let (rel, _, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    for f in ["password", "tls.key", "token"] {
        cg.read(&["open", s(&dir.join(f)), "2"]);
    }
    let m = agent.metrics();
    assert!(m.contains("kind=\"private_key\""), "{m}");
    assert!(m.contains("kind=\"jwt\""), "{m}");
    let inventory = std::process::Command::new(credwatch_e2e::agent_bin())
        .args([
            "inventory",
            "--json",
            "--no-default-watch",
            "--watch",
            s(dir.path()),
        ])
        .output()
        .unwrap();
    assert!(inventory.status.success());
    let inventory_out = String::from_utf8_lossy(&inventory.stdout).into_owned();
    assert!(inventory_out.contains("tls.key"), "{inventory_out}");
    for (what, text) in [
        ("/metrics", m),
        ("/api/v1/credentials", agent.get("/api/v1/credentials")),
        ("/api/v1/readers", agent.get("/api/v1/readers")),
        ("the agent's log", agent.log_text()),
        ("inventory --json", inventory_out),
    ] {
        assert!(!text.contains(CANARY), "the canary leaked into {what}");
        assert!(
            !text.contains("7f3e9a1c"),
            "part of the canary leaked into {what}"
        );
    }
}

#[test]
fn three_hundred_rotations_keep_the_kernel_map_bounded_and_counts_exact() {
    require_e2e!();
    let dir = TempDir::new("rotations");
    let cred = dir.join("token");
    std::fs::write(&cred, "gen-0").unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let mut made = cg.read(&["open", s(&cred), "1"]);
    for i in 1..=300u32 {
        // Atomic replacement: a new inode, a new generation.
        let tmp = dir.join(".token.tmp");
        std::fs::write(&tmp, format!("gen-{i}")).unwrap();
        std::fs::rename(&tmp, &cred).unwrap();
        agent.wait_metrics(&format!("rotation {i}"), |m| {
            sample(
                m,
                "credwatch_credential_rotations_total",
                &[("file", "token")],
            ) == Some(f64::from(i))
        });
        made += cg.read(&["open", s(&cred), "1"]);
    }
    let m = agent.metrics();
    assert_eq!(made, 301);
    assert_eq!(
        reads(&m, &[("file", "token"), ("container", &id[..12])]),
        Some(301.0),
        "every read of every generation, counted once: {m}"
    );
    let entries = sample(&m, "credwatch_kernel_map_entries", &[("map", "READS")]).unwrap();
    assert!(
        entries <= 2.0,
        "READS holds {entries} entries after 300 rotations with one reader: {m}"
    );
    assert_eq!(
        sample(
            &m,
            "credwatch_credential_reader_generation_lag",
            &[("file", "token"), ("container", &id[..12])]
        ),
        Some(0.0)
    );
}

#[test]
fn the_file_sensor_runs_alone_without_the_auth_call_sensor() {
    require_e2e!();
    let dir = TempDir::new("file-only");
    let cred = dir.join("token");
    std::fs::write(&cred, "x").unwrap();
    let agent = Agent::start(&[dir.path()], &["--no-auth-sensor"]);
    let (rel, _uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    cg.read(&["open", s(&cred), "5"]);
    let m = agent.wait_metrics("5 reads", |m| {
        reads(m, &[("file", "token"), ("container", &id[..12])]) == Some(5.0)
    });
    let probes: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("credwatch_probe_attached{"))
        .collect();
    assert!(!probes.is_empty(), "{m}");
    assert!(
        probes.iter().all(|l| l.contains("sys_exit_open")
            || l.contains("io_uring_complete")
            || l.contains("security_file_open")),
        "only the file sensor's probes: {probes:?}"
    );
    assert!(agent.log_text().contains("the auth-call sensor is off"));
}
