//! Kubernetes credentials: a kubelet-shaped tree written with the kubelet's atomic-writer
//! sequence, readers in pod-shaped cgroups reading through container-style paths, expiry and
//! rotation gauges, stale readers, removed pods, bad input.
use std::{path::Path, time::Duration};

use credwatch_e2e::{
    agent_bin, cgroupfs_container_cgroup,
    kubelet::{
        cert_chain, kubelet_cgroup, kubelet_resync, sa_claims, KubeletTree, Signer, PROJECTED,
        SECRET,
    },
    random_container_id, random_pod_uid, sample, systemd_container_cgroup, Agent, Cgroup,
};

const SA_MOUNT: &str = "/run/secrets/kubernetes.io/serviceaccount";
const KEY_CANARY: &str = "KEYCANARY";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Reads the service-account token the way a container does: the projected volume bind-mounted
/// at /var/run/secrets/kubernetes.io/serviceaccount in its own mount namespace.
fn read_token_in_container(cg: &Cgroup, volume: &Path, n: u32) {
    let bind = format!("{}:{SA_MOUNT}", volume.display());
    let token = format!("/var/run{}/token", SA_MOUNT.trim_start_matches("/run"));
    let count = cg.read(&[
        "--tmpfs",
        "/run",
        "--mkdir",
        SA_MOUNT,
        "--bind",
        &bind,
        "open",
        &token,
        &n.to_string(),
    ]);
    assert_eq!(count, u64::from(n));
}

fn gauge(m: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(m, &format!("credwatch_{name}"), labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{m}"))
}

#[test]
fn kubelet_volumes_expiry_rotation_and_stale_readers() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let signer = Signer::new();
    let uid = random_pod_uid();
    let t0 = now();

    // Generation 0: a token that has already expired (so a reader left holding it is visibly stale).
    let (iat0, exp0) = (t0 - 3600 - 60, t0 - 60);
    let token0 = signer.jwt(&sa_claims(
        "shop", "api-0", &uid, "builder", iat0, exp0, None,
    ));
    let sa_vol = tree.volume(&uid, PROJECTED, "kube-api-access-x7k2p");
    tree.write(
        &sa_vol,
        &[
            ("token", token0.as_bytes()),
            ("ca.crt", b"-----BEGIN CERTIFICATE-----\n"),
            ("namespace", b"shop"),
        ],
    );

    let (chain, key, leaf_nbf, leaf_naf) = cert_chain(20);
    let mut key_with_canary = key.clone();
    key_with_canary.extend(format!("# {KEY_CANARY}\n").as_bytes());
    let tls = tree.volume(&uid, SECRET, "tls");
    tree.write(&tls, &[("tls.crt", &chain), ("tls.key", &key_with_canary)]);
    let csi = tree.csi_volume(&uid, "vault-db", "secrets-store.csi.k8s.io");
    std::fs::write(csi.join("password"), "hunter2-csi").unwrap();

    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root, "--series-grace", "2"]);

    // Reader A: systemd-driver cgroup; reader B: cgroupfs-driver cgroup; same pod.
    let (id_a, id_b, id_c) = (
        random_container_id(),
        random_container_id(),
        random_container_id(),
    );
    let cg_a = Cgroup::new(&systemd_container_cgroup(&uid, &id_a));
    let cg_b = Cgroup::new(&cgroupfs_container_cgroup(&uid, &id_b));
    let cg_c = Cgroup::new(&systemd_container_cgroup(&uid, &id_c));
    let (a, b, c) = (&id_a[..12], &id_b[..12], &id_c[..12]);
    read_token_in_container(&cg_a, &sa_vol, 3);
    read_token_in_container(&cg_b, &sa_vol, 2);
    cg_a.read(&["open", csi.join("password").to_str().unwrap(), "1"]);

    let tok = [
        ("pod", uid.as_str()),
        ("volume", "kube-api-access-x7k2p"),
        ("file", "token"),
    ];
    let with = |c| with_container(&tok, c);
    let m = agent.metrics();
    assert_eq!(gauge(&m, "credential_reads_total", &with(a)), 3.0);
    assert_eq!(gauge(&m, "credential_reads_total", &with(b)), 2.0);
    let info = [
        &tok[..],
        &[
            ("kind", "serviceaccount_token"),
            ("source", "serviceaccount/builder"),
            ("pod_uid", uid.as_str()),
            ("service_account", "builder"),
            ("namespace", ""),
        ],
    ]
    .concat();
    assert_eq!(gauge(&m, "credential_info", &info), 1.0);
    assert_eq!(
        gauge(&m, "credential_expiry_timestamp_seconds", &tok),
        exp0 as f64
    );
    assert_eq!(
        gauge(&m, "credential_issued_timestamp_seconds", &tok),
        iat0 as f64
    );
    assert_eq!(
        gauge(&m, "credential_refresh_due_timestamp_seconds", &tok),
        (iat0 + 2880) as f64,
        "iat + 80% of 1 h"
    );
    // The secret volume's chain: the leaf's dates; the key is a private key.
    let crt = [
        ("pod", uid.as_str()),
        ("volume", "tls"),
        ("file", "tls.crt"),
    ];
    assert_eq!(
        gauge(&m, "credential_expiry_timestamp_seconds", &crt),
        leaf_naf as f64
    );
    assert_eq!(
        gauge(&m, "credential_issued_timestamp_seconds", &crt),
        leaf_nbf as f64
    );
    assert!(
        m.contains("file=\"tls.crt\",kind=\"certificate\",source=\"secret\""),
        "{m}"
    );
    assert!(m.contains("file=\"tls.key\",kind=\"private_key\""), "{m}");
    let pass = [
        ("pod", uid.as_str()),
        ("volume", "vault-db"),
        ("file", "password"),
        ("container", a),
    ];
    assert_eq!(gauge(&m, "credential_reads_total", &pass), 1.0);
    assert!(m.contains("source=\"csi/secrets-store.csi.k8s.io\""), "{m}");
    // Nobody reads ca.crt: present, at 0.
    let ca = [
        ("pod", uid.as_str()),
        ("file", "ca.crt"),
        ("container", "_node"),
    ];
    assert_eq!(gauge(&m, "credential_reads_total", &ca), 0.0);
    assert!(
        !m.contains(&format!("file=\"ca.crt\",container=\"{a}\"")),
        "{m}"
    );

    // Rotation, step by step: a new generation is written and swapped in; before the old
    // directory goes, reader C still opens the old path and is counted against generation 0.
    let (iat1, exp1) = (t0, t0 + 3600);
    let token1 = signer.jwt(&sa_claims(
        "shop",
        "api-0",
        &uid,
        "builder",
        iat1,
        exp1,
        Some(t0 + 1800),
    ));
    let old = tree.begin_write(
        &sa_vol,
        &[
            ("token", token1.as_bytes()),
            ("ca.crt", b"-----BEGIN CERTIFICATE-----\n"),
            ("namespace", b"shop"),
        ],
    );
    agent.wait_metrics("the rotation", |m| {
        sample(m, "credwatch_credential_rotations_total", &tok) == Some(1.0)
    });
    let old_token = sa_vol.join(old.as_ref().unwrap()).join("token");
    cg_c.read(&["open", old_token.to_str().unwrap(), "2"]);
    tree.finish_write(&sa_vol, old);
    read_token_in_container(&cg_a, &sa_vol, 1);

    let m = agent.metrics();
    assert_eq!(
        gauge(&m, "credential_expiry_timestamp_seconds", &tok),
        exp1 as f64
    );
    assert_eq!(
        gauge(&m, "credential_stale_after_timestamp_seconds", &tok),
        (t0 + 1800) as f64
    );
    // A re-read: lag 0, holds the new token.
    assert_eq!(gauge(&m, "credential_reader_generation_lag", &with(a)), 0.0);
    assert_eq!(
        gauge(
            &m,
            "credential_reader_held_expiry_timestamp_seconds",
            &with(a)
        ),
        exp1 as f64
    );
    assert_eq!(gauge(&m, "credential_reads_total", &with(a)), 4.0);
    // Never re-read: lag 1, holds the expired token (held expiry below time()).
    assert_eq!(gauge(&m, "credential_reader_generation_lag", &with(b)), 1.0);
    let held_b = gauge(
        &m,
        "credential_reader_held_expiry_timestamp_seconds",
        &with(b),
    );
    assert_eq!(held_b, exp0 as f64);
    assert!(
        held_b < now() as f64,
        "the stale reader holds an expired token"
    );
    // Read the old generation through its old path while it existed.
    assert_eq!(gauge(&m, "credential_reads_total", &with(c)), 2.0);
    assert_eq!(gauge(&m, "credential_reader_generation_lag", &with(c)), 1.0);

    // Nothing secret anywhere.
    let inventory = std::process::Command::new(agent_bin())
        .args(["inventory", "--no-default-watch", "--kubelet-root", &root])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&inventory.stdout).into_owned();
    assert!(inventory.status.success(), "{table}");
    assert!(
        table.contains("expires in") && table.contains("serviceaccount_token"),
        "{table}"
    );
    let json = std::process::Command::new(agent_bin())
        .args([
            "inventory",
            "--json",
            "--no-default-watch",
            "--kubelet-root",
            &root,
        ])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    let key_body = String::from_utf8_lossy(&key)
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let secrets = [
        token0.as_str(),
        token1.as_str(),
        token0.rsplit('.').next().unwrap(),
        token1.rsplit('.').next().unwrap(),
        KEY_CANARY,
        key_body.as_str(),
        "hunter2-csi",
    ];
    for (what, text) in [
        ("/metrics", agent.metrics()),
        ("/api/v1/credentials", agent.get("/api/v1/credentials")),
        ("/api/v1/readers", agent.get("/api/v1/readers")),
        ("the agent's log", agent.log_text()),
        ("inventory", table),
        ("inventory --json", json),
    ] {
        for s in secrets {
            assert!(!text.contains(s), "a secret value leaked into {what}");
        }
    }

    // The pod goes away: its series go after the grace period (2 s here).
    tree.remove_pod(&uid);
    let gone = std::time::Instant::now();
    agent.wait_metrics("the removed pod's series to go", |m| !m.contains(&uid));
    assert!(
        gone.elapsed() >= Duration::from_secs(2),
        "series kept for the grace period"
    );
}

fn with_container<'a>(
    labels: &[(&'a str, &'a str)],
    container: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut l = labels.to_vec();
    l.push(("container", container));
    l
}

#[test]
fn bad_input_is_tracked_as_opaque_and_nothing_else_is_lost() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let uid = random_pod_uid();
    let vol = tree.volume(&uid, SECRET, "odd");
    let big = vec![b'A'; 5 * 1024 * 1024];
    tree.write(
        &vol,
        &[
            ("truncated-jwt", b"eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3"),
            ("non-json-jwt", b"eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln"),
            (
                "garbage.pem",
                b"-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
            ),
            ("big", &big),
            ("fine", b"plain secret"),
        ],
    );
    // A volume whose ..data points nowhere, and a pod directory with an odd name.
    let dangling = tree.volume(&uid, SECRET, "dangling");
    std::os::unix::fs::symlink("..2020_01_01_00_00_00.1", dangling.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/password", dangling.join("password")).unwrap();
    let odd = tree.volume("not-a-pod uid", SECRET, "creds");
    tree.write(&odd, &[("token", b"x")]);

    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    let m = agent.metrics();
    for f in [
        "truncated-jwt",
        "non-json-jwt",
        "garbage.pem",
        "big",
        "fine",
    ] {
        assert!(
            m.contains(&format!("volume=\"odd\",file=\"{f}\",kind=\"opaque\"")),
            "{f}: {m}"
        );
    }
    assert!(
        m.contains("volume=\"dangling\",file=\"password\",kind=\"opaque\""),
        "{m}"
    );
    assert!(
        m.contains("pod=\"not-a-pod uid\",volume=\"creds\",file=\"token\""),
        "{m}"
    );
    let log = agent.log_text();
    for needle in [
        "not JSON",
        "larger than 1 MiB",
        "PEM block 1",
        "..data does not point",
        "not named by a pod uid",
    ] {
        assert!(
            log.to_lowercase().contains(&needle.to_lowercase()),
            "no log line about {needle:?}:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
    // Everything else still works: reads of the good file in the same volume are counted.
    let id = random_container_id();
    let cg = Cgroup::new(&systemd_container_cgroup(&uid, &id));
    cg.read(&["open", vol.join("fine").to_str().unwrap(), "3"]);
    cg.read(&["open", vol.join("big").to_str().unwrap(), "1"]);
    let m = agent.metrics();
    let fine = [
        ("volume", "odd"),
        ("file", "fine"),
        ("container", &id[..12]),
    ];
    assert_eq!(
        sample(&m, "credwatch_credential_reads_total", &fine),
        Some(3.0),
        "{m}"
    );
    let big = [("volume", "odd"), ("file", "big"), ("container", &id[..12])];
    assert_eq!(
        sample(&m, "credwatch_credential_reads_total", &big),
        Some(1.0),
        "{m}"
    );
}

/// The README's "mounted and never read" query, evaluated on a scrape: the credential's reads
/// summed over every reader but the kubelet.
fn workload_reads(m: &str, volume: &str, file: &str) -> f64 {
    m.lines()
        .filter(|l| l.starts_with("credwatch_credential_reads_total{"))
        .filter(|l| {
            l.contains(&format!("volume=\"{volume}\",file=\"{file}\""))
                && !l.contains("container=\"_kubelet\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_kubelets_own_reads_are_kubelet_and_do_not_hide_an_unused_credential() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let uid = random_pod_uid();
    let vol = tree.volume(&uid, SECRET, "db");
    tree.write(&vol, &[("password", b"pw"), ("unused-key", b"k")]);
    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    let id = random_container_id();
    let app = Cgroup::new(&systemd_container_cgroup(&uid, &id));
    app.read(&["open", vol.join("password").to_str().unwrap(), "2"]);
    let kubelet = kubelet_cgroup();
    assert_eq!(
        kubelet_resync(&kubelet, tree.path(), 3),
        6,
        "2 files x 3 resyncs"
    );
    let m = agent.metrics();
    for file in ["password", "unused-key"] {
        let kubelet = [("volume", "db"), ("file", file), ("container", "_kubelet")];
        assert_eq!(
            sample(&m, "credwatch_credential_reads_total", &kubelet),
            Some(3.0),
            "{m}"
        );
    }
    assert_eq!(workload_reads(&m, "db", "password"), 2.0, "{m}");
    assert_eq!(
        workload_reads(&m, "db", "unused-key"),
        0.0,
        "the kubelet's reads must not make it look used: {m}"
    );
}

/// A reloader that reacts to the kubelet's `..data` swap opens the new token microseconds after
/// it was written, long before any scan could name its inode: the read still counts, for the new
/// generation (lag 0), and the kernel's unseen-read map is left empty.
#[test]
fn a_read_right_after_the_kubelets_swap_counts_for_the_new_generation() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let uid = random_pod_uid();
    let vol = tree.volume(&uid, PROJECTED, "kube-api-access-r3l0d");
    tree.write(&vol, &[("token", b"generation-0"), ("namespace", b"shop")]);
    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    let id = random_container_id();
    let cg = Cgroup::new(&systemd_container_cgroup(&uid, &id));
    let token = vol.join("token");
    let token = token.to_str().unwrap();
    assert_eq!(cg.read(&["open", token, "2"]), 2);
    let tok = [
        ("pod", uid.as_str()),
        ("file", "token"),
        ("container", &id[..12]),
    ];
    for generation in 1..=5u32 {
        let content = format!("generation-{generation}");
        tree.write(
            &vol,
            &[("token", content.as_bytes()), ("namespace", b"shop")],
        );
        // The reloader, woken by the swap.
        assert_eq!(cg.read(&["open", token, "1"]), 1);
        agent.wait_metrics("the rotation", |m| {
            sample(m, "credwatch_credential_rotations_total", &tok[..2])
                == Some(f64::from(generation))
        });
    }
    let m = agent.wait_metrics("every read counted", |m| {
        sample(m, "credwatch_credential_reads_total", &tok) == Some(7.0)
    });
    assert_eq!(gauge(&m, "credential_reader_generation_lag", &tok), 0.0);
    let first_reads = agent.log_text().matches("first read").count();
    assert!(
        first_reads >= 6,
        "a first read per generation: {first_reads}"
    );
}
