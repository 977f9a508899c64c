//! Bad input: missing watch paths, bad configuration, missing privileges.
use std::{os::unix::fs::PermissionsExt, process::Command};

use credwatch_e2e::{agent_bin, pod_container_cgroup, sample, Agent, Cgroup, TempDir};

#[test]
fn a_missing_watch_path_is_warned_about_and_watched_when_it_appears() {
    require_e2e!();
    let dir = TempDir::new("later");
    let later = dir.join("not/yet/there");
    let agent = Agent::start(&[&later], &[]);
    assert!(
        agent.log_text().contains("does not exist"),
        "{}",
        agent.log_text()
    );
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(later.join("creds.json"), "{}").unwrap();
    agent.wait_metrics("the new file", |m| m.contains("file=\"creds.json\""));
    let (rel, _, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    cg.read(&["open", later.join("creds.json").to_str().unwrap(), "2"]);
    let m = agent.metrics();
    let n = sample(
        &m,
        "credwatch_credential_reads_total",
        &[("file", "creds.json"), ("container", &id[..12])],
    );
    assert_eq!(n, Some(2.0), "{m}");
    // A file that is deleted stops being watched.
    std::fs::remove_file(later.join("creds.json")).unwrap();
    let creds = || agent.get("/api/v1/credentials");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !creds().contains("\"present\":false") {
        assert!(
            std::time::Instant::now() < deadline,
            "deletion not seen: {}",
            creds()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn agent_fails(args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run agent");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_files_are_clear_errors_naming_the_line() {
    let dir = TempDir::new("config");
    let cases = [
        (
            "listen: 127.0.0.1:0\nwatchh: [/x]\n",
            "unknown field `watchh`",
            "line 2",
        ),
        ("listen: 127.0.0.1:0\nwatch: /x\n", "invalid type", "line 2"),
        ("listen: nowhere\n", "invalid socket address", "line 1"),
    ];
    for (i, (text, what, line)) in cases.iter().enumerate() {
        let file = dir.join(&format!("c{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let err = agent_fails(&["agent", "--config", file.to_str().unwrap()]);
        assert!(
            err.contains("config file") && err.contains(what) && err.contains(line),
            "{text:?}: {err}"
        );
    }
    let err = agent_fails(&["agent", "--config", "/nonexistent/credwatch.yaml"]);
    assert!(
        err.contains("cannot read config file /nonexistent/credwatch.yaml"),
        "{err}"
    );
    let err = agent_fails(&["agent", "--listen", "not-an-address"]);
    assert!(err.contains("invalid value 'not-an-address'"), "{err}");
}

#[test]
fn without_root_the_agent_and_check_say_why() {
    require_e2e!(); // needs root to become someone else
                    // A copy any user can execute, wherever the checkout lives.
    let dir = TempDir::new("nonroot");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("credwatch");
    std::fs::copy(agent_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        cmd.args(args).env("HOME", dir.path());
        // Another test thread that forks while the copy is open for writing holds it for a
        // moment: exec fails with ETXTBSY until that child has exec'd too.
        for _ in 0..100 {
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.expect("run as nobody"),
            }
        }
        panic!("{} stays busy (ETXTBSY)", bin.display());
    };
    let out = run(&["agent", "--no-default-watch", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
    let out = run(&["check"]);
    assert!(
        !out.status.success(),
        "check exits non-zero when the agent cannot run"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  privileges") && text.contains("cannot run"),
        "{text}"
    );
}

#[test]
fn check_passes_on_this_kernel() {
    require_e2e!();
    let out = Command::new(agent_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for map in ["map READS", "map WATCHED", "map EVENTS"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(map) && l.contains("MiB")),
            "check states the memory of each map: {text}"
        );
    }
    for hook in credwatch::sensors::file::HOOKS {
        let probe = hook.label();
        assert!(
            text.lines().any(|l| l.starts_with("ok")
                && l.contains(&format!("probe {probe} "))
                && l.contains("attached")),
            "{probe}: {text}"
        );
    }
}

#[test]
fn probes_are_reported_attached() {
    require_e2e!();
    let dir = TempDir::new("probes");
    let agent = Agent::start(&[dir.path()], &[]);
    let m = agent.metrics();
    for hook in credwatch::sensors::file::HOOKS {
        let probe = hook.label();
        assert_eq!(
            sample(&m, "credwatch_probe_attached", &[("probe", &probe)]),
            Some(1.0),
            "{m}"
        );
    }
    assert!(m.contains("credwatch_build_info{version=\""), "{m}");
    assert_eq!(
        credwatch_e2e::http_get(agent.addr, "/healthz").unwrap().0,
        200
    );
}

#[test]
fn the_json_api_is_off_unless_asked_for() {
    require_e2e!();
    let dir = TempDir::new("api");
    std::fs::write(dir.join("key"), "k").unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    assert_eq!(
        credwatch_e2e::http_get(agent.addr, "/api/v1/credentials")
            .unwrap()
            .0,
        200,
        "the harness starts the agent with --api"
    );
    // Readers come in pages.
    let cgroups: Vec<Cgroup> = (0..2)
        .map(|_| Cgroup::new(&pod_container_cgroup().0))
        .collect();
    for cg in &cgroups {
        cg.read(&["open", dir.join("key").to_str().unwrap(), "1"]);
    }
    let count = |path: &str| agent.get(path).matches("\"cgroup_id\"").count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count("/api/v1/readers") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "readers not described"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(count("/api/v1/readers?limit=1"), 1);
    assert_eq!(count("/api/v1/readers?offset=1&limit=5"), 1);
    assert_eq!(agent.get("/api/v1/readers?offset=1000"), "[]");
    // Without --api: the scrape port serves /metrics and health only.
    let out = Command::new(agent_bin())
        .args(["agent", "--no-default-watch", "--listen", "127.0.0.1:0"])
        .args(["--pin-dir", "none"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(out);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("credwatch: serving http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = credwatch_e2e::http_get(addr, "/api/v1/readers").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--api"), "{body}");
    assert_eq!(credwatch_e2e::http_get(addr, "/metrics").unwrap().0, 200);
}

/// Kills the child on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_built_in_watch_list_means_the_nodes_files_below_the_host_root() {
    require_e2e!();
    // A node's file system as a DaemonSet sees it at /host.
    let host = TempDir::new("host-root");
    for (path, content) in [
        ("etc/kubernetes/admin.conf", "kubeconfig"),
        ("run/secrets/db-password", "pw"),
        ("home/alice/.ssh/id_ed25519", "key"),
        ("home/alice/.ssh/id_ed25519.pub", "public"),
    ] {
        let p = host.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let root = host.path().to_str().unwrap();
    let agent = Agent::start_args(&["--host-root", root], &[]);
    let m = agent.metrics();
    let info = |volume: &str, file: &str| {
        sample(
            &m,
            "credwatch_credential_info",
            &[("volume", volume), ("file", file)],
        )
    };
    assert_eq!(info("/etc/kubernetes", "admin.conf"), Some(1.0), "{m}");
    assert_eq!(info("/run/secrets", "db-password"), Some(1.0), "{m}");
    assert_eq!(info("/home", "alice/.ssh/id_ed25519"), Some(1.0), "{m}");
    let infos = m
        .lines()
        .filter(|l| l.starts_with("credwatch_credential_info{"))
        .count();
    assert_eq!(
        infos, 3,
        "only the node's files, nothing of the agent's own: {m}"
    );
    let (rel, _, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    cg.read(&[
        "open",
        host.join("etc/kubernetes/admin.conf").to_str().unwrap(),
        "2",
    ]);
    let m = agent.metrics();
    assert_eq!(
        sample(
            &m,
            "credwatch_credential_reads_total",
            &[("file", "admin.conf"), ("container", &id[..12])]
        ),
        Some(2.0),
        "{m}"
    );
}
