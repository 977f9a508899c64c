//! What the node's own pods and users can put in front of the agent: odd names, hostile files.
use std::process::{Command, Stdio};

use credwatch_e2e::{
    kubelet::{KubeletTree, SECRET},
    pod_container_cgroup, random_container_id, random_pod_uid, reads, Agent, Cgroup, TempDir,
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
    Cgroup::new(&rel).read(&["open", cred.to_str().unwrap(), "2"]);
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
    // A process in the pod cgroup itself, and one in a sub-cgroup no runtime names.
    Cgroup::new(&format!("kubepods/besteffort/pod{bare_pod}")).read(&["open", &tokens[1], "3"]);
    Cgroup::new(&format!("kubepods/besteffort/pod{bare_pod}/vm-helper"))
        .read(&["open", &tokens[1], "4"]);
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
