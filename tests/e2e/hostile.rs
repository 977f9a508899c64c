//! What the node's own pods and users can put in front of the agent: odd names, hostile files.
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use credwatch_e2e::{
    kubelet::{KubeletTree, EMPTY_DIR, SECRET},
    pod_container_cgroup, random_container_id, random_pod_uid, reads, sample,
    systemd_container_cgroup, Agent, Cgroup, HungFs, TempDir,
};

/// Runs `promtool check metrics` (a real Prometheus text parser) on `metrics`: parse errors fail,
/// lint notes (OpenMetrics counters read as Prometheus text) do not.
fn promtool_parses(metrics: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs the prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code() != Some(1) && !text.contains("parsing error"),
        "promtool cannot parse /metrics: {text}\n{metrics}"
    );
}

#[test]
fn a_file_name_with_quote_backslash_and_newline_is_escaped_everywhere() {
    require_e2e!();
    let dir = TempDir::new("names");
    let name = "we\"ird\\na\nme} 1\nforged_series 7";
    let cred = dir.path().join(name);
    std::fs::write(&cred, "x").unwrap();
    let agent = Agent::start(&[dir.path()], &[]);
    let (rel, _, id) = pod_container_cgroup();
    // The reader's cgroup lives on (as a container's does) while the agent describes it.
    let cg = Cgroup::new(&rel);
    cg.read(&["open", cred.to_str().unwrap(), "2"]);
    let m = agent.metrics();
    promtool_parses(&m);
    let escaped = r#"we\"ird\\na\nme} 1\nforged_series 7"#;
    assert_eq!(
        reads(&m, &[("file", escaped), ("container", &id[..12])]),
        Some(2.0),
        "{m}"
    );
    assert!(
        !m.lines().any(|l| l.starts_with("forged_series")),
        "a series was injected: {m}"
    );
    let log = agent.log_text();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("me} 1") || l.starts_with("forged_series")),
        "a log line was forged: {log}"
    );
}

#[test]
fn sandbox_runtimes_and_the_pod_cgroup_itself_read_as_the_pod() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let (kata_pod, bare_pod) = (random_pod_uid(), random_pod_uid());
    let mut tokens = Vec::new();
    for uid in [&kata_pod, &bare_pod] {
        let vol = tree.volume(uid, SECRET, "creds");
        tree.write(&vol, &[("token", b"t")]);
        tokens.push(vol.join("token").to_string_lossy().into_owned());
    }
    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    // Kata Containers: the pod's sandbox VM in one `kata_<id>` cgroup below the pod's.
    let kata = Cgroup::new(&format!(
        "kubepods/besteffort/pod{kata_pod}/kata_{}",
        random_container_id()
    ));
    kata.read(&["open", &tokens[0], "2"]);
    // A process in the pod cgroup itself, and one in a sub-cgroup no runtime names (both kept
    // while the pod lives).
    let pod_cgroup = Cgroup::new(&format!("kubepods/besteffort/pod{bare_pod}"));
    pod_cgroup.read(&["open", &tokens[1], "3"]);
    let helper = Cgroup::new(&format!("kubepods/besteffort/pod{bare_pod}/vm-helper"));
    helper.read(&["open", &tokens[1], "4"]);
    let m = agent.metrics();
    let kata_id = kata.path.file_name().unwrap().to_str().unwrap()["kata_".len()..].to_owned();
    assert_eq!(
        reads(&m, &[("pod", &kata_pod), ("container", &kata_id[..12])]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        reads(&m, &[("pod", &bare_pod), ("container", "_sandbox")]),
        Some(7.0),
        "{m}"
    );
    for pod in [&kata_pod, &bare_pod] {
        assert_eq!(
            reads(&m, &[("pod", pod), ("container", "_node")]),
            Some(0.0),
            "nothing of the pod's counted as the node's: {m}"
        );
    }
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// GETs `path` and fails unless it answers 200 within a second.
fn answers_within_a_second(agent: &Agent, path: &str) {
    let start = std::time::Instant::now();
    let status = credwatch_e2e::http_get(agent.addr, path).map(|(s, _)| s);
    assert!(
        matches!(status, Ok(200)) && start.elapsed() < std::time::Duration::from_secs(1),
        "{path}: {status:?} after {:?}; log:\n{}",
        start.elapsed(),
        agent.log_text()
    );
}

#[test]
fn a_pod_writable_sink_cannot_wedge_blind_or_redirect_the_agent() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let (attacker, victim) = (random_pod_uid(), random_pod_uid());
    let victim_vol = tree.volume(&victim, SECRET, "creds");
    tree.write(&victim_vol, &[("token", b"victim")]);
    let victim_token = victim_vol.join("token");
    // The attacker's own credential sink (an emptyDir it writes), with a real token and traps.
    let sink = tree.volume(&attacker, EMPTY_DIR, "vault-secrets");
    std::fs::write(sink.join("token"), "attacker").unwrap();
    let outside = TempDir::new("outside");
    mkfifo(&outside.join("blocking"));
    std::os::unix::fs::symlink(outside.join("blocking"), sink.join("blocks")).unwrap();
    std::os::unix::fs::symlink("/", sink.join("host")).unwrap();
    std::os::unix::fs::symlink(&victim_token, sink.join("steal")).unwrap();
    mkfifo(&sink.join("fifo"));
    // An atomic-writer look-alike pointing at the host.
    std::os::unix::fs::symlink("/etc", sink.join("..evil")).unwrap();
    std::os::unix::fs::symlink("..evil", sink.join("..data")).unwrap();

    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    answers_within_a_second(&agent, "/healthz");
    // More traps while it runs: every inotify event is a rescan; it keeps answering.
    for i in 0..5 {
        mkfifo(&sink.join(format!("fifo-{i}")));
        std::thread::sleep(std::time::Duration::from_millis(100));
        answers_within_a_second(&agent, "/healthz");
        answers_within_a_second(&agent, "/metrics");
    }
    let victim_id = random_container_id();
    let victim_cg = Cgroup::new(&systemd_container_cgroup(&victim, &victim_id));
    victim_cg.read(&["open", victim_token.to_str().unwrap(), "3"]);
    let m = agent.metrics();
    // Nothing outside the volume is a credential of the attacker's.
    assert!(!m.contains("file=\"host/"), "the host was walked: {m}");
    assert!(!m.contains("passwd"), "the host's /etc was walked: {m}");
    // The victim's reads are its own, not the attacker's `_other_pod`.
    assert_eq!(
        reads(
            &m,
            &[
                ("pod", &victim),
                ("file", "token"),
                ("container", &victim_id[..12])
            ]
        ),
        Some(3.0),
        "{m}"
    );
    assert!(
        !m.lines().any(|l| l.contains(&format!("pod=\"{attacker}\""))
            && l.contains("file=\"steal\"")
            && l.contains("_other_pod")),
        "the victim's reads were counted against the attacker's link: {m}"
    );
    // The attacker's real file still counts.
    let attacker_id = random_container_id();
    let attacker_cg = Cgroup::new(&systemd_container_cgroup(&attacker, &attacker_id));
    attacker_cg.read(&["open", sink.join("token").to_str().unwrap(), "2"]);
    assert_eq!(
        reads(
            &agent.metrics(),
            &[
                ("pod", &attacker),
                ("file", "token"),
                ("container", &attacker_id[..12])
            ]
        ),
        Some(2.0)
    );
    answers_within_a_second(&agent, "/healthz");
}

#[test]
fn one_file_under_two_pods_counts_for_the_first_and_says_so() {
    require_e2e!();
    let tree = KubeletTree::new();
    // Two pods mounting the same ReadWriteMany volume: one inode under two identities (here a
    // hard link, which is what the kernel sees either way).
    let mut uids = [random_pod_uid(), random_pod_uid()];
    uids.sort();
    let [first, second] = uids;
    let a = tree.csi_volume(&first, "shared", "secrets-store.csi.k8s.io");
    std::fs::write(a.join("api-key"), "k").unwrap();
    let b = tree.csi_volume(&second, "shared", "secrets-store.csi.k8s.io");
    std::fs::hard_link(a.join("api-key"), b.join("api-key")).unwrap();
    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&[], &["--kubelet-root", &root]);
    let id = random_container_id();
    let reader = Cgroup::new(&systemd_container_cgroup(&first, &id));
    reader.read(&["open", a.join("api-key").to_str().unwrap(), "4"]);
    let m = agent.metrics();
    assert_eq!(
        reads(
            &m,
            &[
                ("pod", &first),
                ("file", "api-key"),
                ("container", &id[..12])
            ]
        ),
        Some(4.0),
        "the first pod's own reads are its own: {m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.contains(&format!("pod=\"{second}\"")) && l.contains("_other_pod")),
        "nothing counted as the second pod's: {m}"
    );
    assert_eq!(
        sample(&m, "credwatch_credential_shared_files", &[]),
        Some(1.0),
        "{m}"
    );
    assert!(
        agent.log_text().contains("is the same file as"),
        "{}",
        agent.log_text()
    );
}

/// The agent's record of the credential file `file` in `/api/v1/credentials`.
fn api_credential(agent: &Agent, file: &str) -> serde_json::Value {
    let creds: serde_json::Value =
        serde_json::from_str(&agent.get("/api/v1/credentials")).expect("credentials are JSON");
    creds
        .as_array()
        .and_then(|a| a.iter().find(|c| c["file"] == file))
        .cloned()
        .unwrap_or_else(|| panic!("no credential {file}: {creds}"))
}

fn info(m: &str, file: &str, kind: &str) -> Option<f64> {
    sample(
        m,
        "credwatch_credential_info",
        &[("file", file), ("kind", kind)],
    )
}

#[test]
fn a_credential_whose_read_never_returns_is_opaque_and_the_agent_stays_healthy() {
    require_e2e!();
    // Declared first, dropped last: the file system goes first, which fails the reads the
    // agent's parser threads are stuck in, so that the agent can then exit and be reaped.
    let agent;
    let mut fs = HungFs::mount();
    // Writing here makes the agent rescan everything (inotify does not see the FUSE side).
    let plain = TempDir::new("hung-plain");
    // Without a time limit on reads, the first pass never ends and the agent is never ready.
    agent = Agent::start(&[fs.path(), plain.path()], &[]);
    for _ in 0..5 {
        answers_within_a_second(&agent, "/healthz");
        answers_within_a_second(&agent, "/metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = agent.metrics();
    assert_eq!(info(&m, "id_rsa", "opaque"), Some(1.0), "{m}");
    // The rest of the mount still reads: its token is parsed (kind, claims).
    assert_eq!(info(&m, "token", "jwt"), Some(1.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "credwatch_credential_expiry_timestamp_seconds",
            &[("file", "token")]
        ),
        Some(4_102_444_800.0),
        "{m}"
    );
    let hung = api_credential(&agent, "id_rsa");
    assert_eq!(hung["kind"], "opaque", "{hung}");
    assert_eq!(
        hung["parsed"]["problem"], "reading it did not finish in time: not parsed",
        "{hung}"
    );
    let token = api_credential(&agent, "token");
    assert!(token["parsed"]["problem"].is_null(), "{token}");
    // Tracked means watched: the kernel counts its opens like any other credential's.
    let (rel, _, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    cg.read(&["open", fs.path().join("id_rsa").to_str().unwrap(), "2"]);
    let m = agent.metrics();
    assert_eq!(
        reads(&m, &[("file", "id_rsa"), ("container", &id[..12])]),
        Some(2.0),
        "{m}"
    );

    // A second hanging file while the agent runs: its rescan is stuck for the parse's time
    // limit. The credential appears only after the parse gave up, so every check until then
    // ran while the pass was stuck.
    fs.hang("late.key");
    let kick = Instant::now();
    std::fs::write(plain.join("kick"), "").unwrap();
    let mut checks = 0;
    while info(&agent.metrics(), "late.key", "opaque").is_none() {
        assert!(
            kick.elapsed() < Duration::from_secs(60),
            "late.key never appeared; log:\n{}",
            agent.log_text()
        );
        answers_within_a_second(&agent, "/healthz");
        answers_within_a_second(&agent, "/metrics");
        checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        kick.elapsed() >= Duration::from_millis(1500) && checks >= 5,
        "the pass was not stuck ({checks} checks in {:?})",
        kick.elapsed()
    );
    while kick.elapsed() < Duration::from_secs(5) {
        answers_within_a_second(&agent, "/healthz");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log_text();
    for file in ["id_rsa", "late.key"] {
        assert!(
            log.lines()
                .any(|l| l.contains("did not finish in") && l.contains(file)),
            "no timeout logged for {file}:\n{log}"
        );
    }
    // The token's value (a JWT starts "eyJ") is nowhere.
    let api = agent.get("/api/v1/credentials");
    for (what, text) in [("log", &log), ("metrics", &agent.metrics()), ("API", &api)] {
        assert!(!text.contains("eyJ"), "the token is in the {what}: {text}");
    }
}
