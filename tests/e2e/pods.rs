//! Pod identity: names from a (stub) Kubernetes API, readers from other pods and from the host,
//! the API going away and coming back, and cgroup churn.
use std::time::{Duration, Instant};

use credwatch_e2e::{
    cgroupfs_container_cgroup,
    kubeapi::{pod_json, KubeApi},
    kubelet::{KubeletTree, PROJECTED, SECRET},
    random_container_id, random_pod_uid, reader_bin, reads, sample, systemd_container_cgroup,
    Agent, Cgroup, TempDir,
};
use serde_json::json;

const NODE: &str = "node-e2e";

struct TestPod {
    uid: String,
    name: &'static str,
    /// (container name, id, cgroup)
    containers: Vec<(&'static str, String, Cgroup)>,
}

impl TestPod {
    /// A pod with a projected token volume and a Secret volume `db`, containers alternating between
    /// the systemd and cgroupfs driver forms.
    fn new(tree: &mut KubeletTree, name: &'static str, containers: &[&'static str]) -> TestPod {
        let uid = random_pod_uid();
        let sa = tree.volume(&uid, PROJECTED, "kube-api-access-e2e");
        tree.write(&sa, &[("token", format!("token-of-{name}").as_bytes())]);
        let db = tree.volume(&uid, SECRET, "db");
        tree.write(&db, &[("password", b"pw")]);
        let containers = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = random_container_id();
                let rel = if i % 2 == 0 {
                    systemd_container_cgroup(&uid, &id)
                } else {
                    cgroupfs_container_cgroup(&uid, &id)
                };
                (*c, id, Cgroup::new(&rel))
            })
            .collect();
        TestPod {
            uid,
            name,
            containers,
        }
    }

    fn json(&self) -> serde_json::Value {
        let cs: Vec<(&str, &str)> = self
            .containers
            .iter()
            .map(|(n, id, _)| (*n, id.as_str()))
            .collect();
        pod_json(
            "shop",
            self.name,
            &self.uid,
            NODE,
            "builder",
            &cs,
            json!([
                {"name": "kube-api-access-e2e", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
                {"name": "db", "secret": {"secretName": "shop-db"}}
            ]),
        )
    }

    fn cgroup(&self, container: &str) -> &Cgroup {
        &self
            .containers
            .iter()
            .find(|(n, _, _)| *n == container)
            .expect("container")
            .2
    }

    fn file(&self, tree: &KubeletTree, volume: &str, file: &str) -> String {
        let plugin = if volume == "db" { SECRET } else { PROJECTED };
        tree.pod_dir(&self.uid)
            .join("volumes")
            .join(plugin)
            .join(volume)
            .join(file)
            .to_string_lossy()
            .into_owned()
    }
}

fn wait_up(agent: &Agent, up: f64) {
    agent.wait_metrics(&format!("pod_metadata_up {up}"), |m| {
        sample(m, "credwatch_pod_metadata_up", &[]) == Some(up)
    });
}

#[test]
fn pods_are_named_other_pods_and_the_node_are_told_apart_and_the_api_may_go() {
    require_e2e!();
    let mut tree = KubeletTree::new();
    let a = TestPod::new(&mut tree, "api-0", &["app", "sidecar"]);
    let b = TestPod::new(&mut tree, "web-0", &["web", "worker"]);
    let api = KubeApi::start();
    api.add_pod(a.json());
    api.add_pod(b.json());
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let root = tree.path().to_str().unwrap().to_owned();
    let agent = Agent::start(
        &[],
        &[
            "--kubelet-root",
            &root,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            NODE,
        ],
    );
    wait_up(&agent, 1.0);

    let a_token = a.file(&tree, "kube-api-access-e2e", "token");
    let a_pw = a.file(&tree, "db", "password");
    let b_token = b.file(&tree, "kube-api-access-e2e", "token");
    a.cgroup("app").read(&["open", &a_token, "2"]);
    a.cgroup("sidecar").read(&["open", &a_pw, "3"]);
    b.cgroup("web").read(&["open", &a_token, "1"]); // another pod's token
    b.cgroup("worker").read(&["open", &b_token, "5"]);
    // A host process (the test's own cgroup, not a pod's).
    let out = std::process::Command::new(reader_bin())
        .args(["open", &a_pw, "4"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let tok = [
        ("namespace", "shop"),
        ("pod", "api-0"),
        ("volume", "kube-api-access-e2e"),
        ("file", "token"),
    ];
    let pw = [
        ("namespace", "shop"),
        ("pod", "api-0"),
        ("volume", "db"),
        ("file", "password"),
    ];
    let with = |base: &[(&'static str, &'static str)], c: &'static str| {
        let mut l = base.to_vec();
        l.push(("container", c));
        l
    };
    let m = agent.metrics();
    assert_eq!(reads(&m, &with(&tok, "app")), Some(2.0), "{m}");
    assert_eq!(
        reads(&m, &with(&tok, "sidecar")),
        Some(0.0),
        "every container of the pod, at 0"
    );
    assert_eq!(reads(&m, &with(&tok, "_other_pod")), Some(1.0), "{m}");
    assert_eq!(reads(&m, &with(&pw, "sidecar")), Some(3.0), "{m}");
    assert_eq!(reads(&m, &with(&pw, "_node")), Some(4.0), "{m}");
    let btok = [("pod", "web-0"), ("file", "token"), ("container", "worker")];
    assert_eq!(reads(&m, &btok), Some(5.0), "{m}");
    assert!(
        m.contains("file=\"password\",kind=\"opaque\",source=\"secret/shop-db\""),
        "{m}"
    );
    assert!(
        m.contains("source=\"serviceaccount/builder\",pod_uid=\"")
            && m.contains("service_account=\"builder\""),
        "{m}"
    );
    // Logged from the first-read event, which trails the counters above by the ring's drain.
    agent.wait_log("credential read from outside its pod");

    // An expired watch (410 Gone) is a relist; a 401 takes metadata down until the API accepts us.
    api.expire_watches();
    std::thread::sleep(Duration::from_millis(500));
    wait_up(&agent, 1.0);
    api.set_status_override(Some(401));
    api.expire_watches();
    wait_up(&agent, 0.0);
    assert!(
        agent.log_text().contains("pod metadata is down"),
        "{}",
        agent.log_text()
    );
    api.set_status_override(None);
    wait_up(&agent, 1.0);
    assert!(api
        .requests()
        .iter()
        .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-e2e")));

    // The API goes away: counting goes on; known pods keep their names; a new pod is labelled by uid.
    let port = api.port();
    api.stop();
    wait_up(&agent, 0.0);
    let c = TestPod::new(&mut tree, "cache-0", &["redis"]);
    let c_pw = c.file(&tree, "db", "password");
    agent.wait_metrics("the new pod's volumes", |m| m.contains(&c.uid));
    c.cgroup("redis").read(&["open", &c_pw, "6"]);
    a.cgroup("app").read(&["open", &a_token, "1"]);
    let m = agent.metrics();
    let c_by_uid = [
        ("pod", c.uid.as_str()),
        ("file", "password"),
        ("container", &c.containers[0].1[..12]),
    ];
    assert_eq!(reads(&m, &c_by_uid), Some(6.0), "{m}");
    assert_eq!(reads(&m, &with(&tok, "app")), Some(3.0), "{m}");
    let before = m;

    // It comes back (a restarted API server: new resource versions, the pods listed again).
    let api = KubeApi::start_on(port);
    for p in [&a, &b, &c] {
        api.add_pod(p.json());
    }
    wait_up(&agent, 1.0);
    let m = agent.wait_metrics("the new pod's name", |m| m.contains("pod=\"cache-0\""));
    let c_named = [
        ("namespace", "shop"),
        ("pod", "cache-0"),
        ("file", "password"),
        ("container", "redis"),
    ];
    assert_eq!(
        reads(&m, &c_named),
        Some(6.0),
        "relabelled, not double counted: {m}"
    );
    assert!(
        !m.contains(&format!("pod=\"{}\"", c.uid)),
        "the uid-labelled series is gone"
    );
    // No counter went down.
    for line in before
        .lines()
        .filter(|l| l.starts_with("credwatch_credential_reads_total{namespace=\"shop\""))
    {
        let (series, v) = line.rsplit_once(' ').unwrap();
        let now = m
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .map(|v| v.trim().parse::<f64>().unwrap());
        assert!(
            now.unwrap_or(0.0) >= v.parse::<f64>().unwrap(),
            "{series} went down"
        );
    }
    // A deleted pod: its metadata stays resolvable for a while (deleted-pod cache).
    api.delete_pod("shop", "web-0");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.metrics().contains("pod=\"web-0\""),
        "deleted-pod cache keeps the name"
    );
}

#[test]
fn five_hundred_pod_cgroups_come_and_go_while_readers_run() {
    require_e2e!();
    let dir = TempDir::new("churn");
    let cred = dir.join("shared-token");
    std::fs::write(&cred, "t").unwrap();
    let cred = cred.to_str().unwrap().to_owned();
    let agent = Agent::start(&[dir.path()], &["--series-grace", "2"]);
    // A long-lived reader, counted throughout.
    let steady_uid = random_pod_uid();
    let steady_id = random_container_id();
    let steady = Cgroup::new(&systemd_container_cgroup(&steady_uid, &steady_id));
    let rss_before = agent.rss_kib();
    let mut steady_reads = 0;
    let mut gone = Vec::new();
    let t = Instant::now();
    for i in 0..500 {
        let (uid, id) = (random_pod_uid(), random_container_id());
        let rel = if i % 2 == 0 {
            systemd_container_cgroup(&uid, &id)
        } else {
            cgroupfs_container_cgroup(&uid, &id)
        };
        let cg = Cgroup::new(&rel);
        assert_eq!(cg.read(&["open", &cred, "2"]), 2);
        if i % 10 == 0 {
            // Attribution is right while the churn goes on.
            let m = agent.metrics();
            assert_eq!(
                reads(&m, &[("file", "shared-token"), ("container", &id[..12])]),
                Some(2.0),
                "{i}"
            );
        }
        drop(cg);
        gone.push(id);
        steady_reads += steady.read(&["open", &cred, "1"]);
    }
    let churn = t.elapsed();
    let m = agent.metrics();
    assert_eq!(
        reads(
            &m,
            &[("file", "shared-token"), ("container", &steady_id[..12])]
        ),
        Some(steady_reads as f64)
    );
    let rss_during = agent.rss_kib();
    // After the grace period, no series of a removed cgroup remains.
    let m = agent.wait_metrics("series of removed cgroups to go", |m| {
        !gone.iter().any(|id| m.contains(&id[..12]))
    });
    assert_eq!(
        reads(
            &m,
            &[("file", "shared-token"), ("container", &steady_id[..12])]
        ),
        Some(steady_reads as f64)
    );
    let rss_after = agent.rss_kib();
    eprintln!(
        "churn: 500 pod cgroups in {churn:?}; agent RSS before {rss_before} KiB, at the end of the churn {rss_during} KiB, after the grace period {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory stays bounded: {rss_before} -> {rss_after} KiB"
    );
    for line in m
        .lines()
        .filter(|l| l.starts_with("credwatch_events_lost_total{"))
    {
        assert!(line.ends_with(" 0"), "{line}");
    }
}
