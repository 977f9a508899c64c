//! A real Prometheus (Debian's package) scrapes the real agent every 5 s during a scenario: a
//! rotation with a stale reader, an expired held token, a kubelet that stopped refreshing, an
//! unused credential, a certificate near its expiry, a read from another pod, a sidecar whose
//! auth calls get 401s from one endpoint and are refused by another. The alert rules
//! (deploy/rules/credwatch.rules.yaml, every `for:` shortened) are loaded: the expected alerts
//! must reach `firing` through Prometheus's own API and the others must not; every panel query
//! of every dashboard must return data through its query API, except the panels listed in
//! `EXPECTED_EMPTY` with the reason.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use credwatch_e2e::{
    http_get,
    kubeapi::{pod_json, KubeApi},
    kubelet::{cert_chain, sa_claims, KubeletTree, Signer, PROJECTED, SECRET},
    random_container_id, random_pod_uid, systemd_container_cgroup, Agent, Cgroup, TempDir,
};
use serde_json::{json, Value};

const NODE: &str = "node-e2e";
const CLUSTER: &str = "e2e";
const SA_VOLUME: &str = "kube-api-access-x7k2p";

/// Alerts the scenario must fire: (alert, labels the firing alert must carry).
const FIRING: &[(&str, &[(&str, &str)])] = &[
    (
        "CredwatchCertificateExpiring",
        &[
            ("severity", "warning"),
            ("volume", "tls"),
            ("file", "tls.crt"),
        ],
    ),
    (
        "CredwatchCertificateExpiring",
        &[
            ("severity", "critical"),
            ("volume", "tls"),
            ("file", "tls.crt"),
        ],
    ),
    (
        "CredwatchTokenExpiringWithoutRotation",
        &[("pod", "web-0"), ("file", "token")],
    ),
    (
        "CredwatchKubeletRefreshOverdue",
        &[("pod", "web-0"), ("file", "token")],
    ),
    (
        "CredwatchReaderHoldsExpiredToken",
        &[
            ("pod", "api-0"),
            ("container", "sidecar"),
            ("volume", SA_VOLUME),
        ],
    ),
    (
        "CredwatchReaderBehindAfterRotation",
        &[
            ("pod", "api-0"),
            ("container", "sidecar"),
            ("volume", SA_VOLUME),
        ],
    ),
    // Nobody reads the tls volume's files (db's unused-key is unused too, but app reads the
    // password: the volume is used; the dashboard lists the file).
    (
        "CredwatchCredentialNeverRead",
        &[("pod", "api-0"), ("volume", "tls")],
    ),
    (
        "CredwatchCredentialReadFromAnotherPod",
        &[
            ("pod", "api-0"),
            ("volume", SA_VOLUME),
            ("container", "_other_pod"),
        ],
    ),
    // sidecar, holding the expired token, gets 401s from vault and cannot reach idp.
    (
        "CredwatchAuthFailureRatioHigh",
        &[
            ("pod", "api-0"),
            ("container", "sidecar"),
            ("endpoint", "vault"),
        ],
    ),
    (
        "CredwatchAuthEndpointUnreachable",
        &[
            ("pod", "api-0"),
            ("container", "sidecar"),
            ("endpoint", "idp"),
        ],
    ),
];

/// Firing alerts that must not be there: (alert, labels), what would make it a false alarm.
const NOT_FOR: &[(&str, &[(&str, &str)])] = &[
    // app re-read the token after the rotation.
    ("CredwatchReaderHoldsExpiredToken", &[("container", "app")]),
    (
        "CredwatchReaderBehindAfterRotation",
        &[("container", "app")],
    ),
    // app reads the password and the token; web reads its token.
    ("CredwatchCredentialNeverRead", &[("volume", "db")]),
    ("CredwatchCredentialNeverRead", &[("volume", SA_VOLUME)]),
    // vault answers (401s) and is reachable; idp is never asked anything.
    ("CredwatchAuthEndpointUnreachable", &[("endpoint", "vault")]),
    ("CredwatchAuthFailureRatioHigh", &[("endpoint", "idp")]),
    // api-0's token was rotated: it expires in an hour.
    ("CredwatchTokenExpiringWithoutRotation", &[("pod", "api-0")]),
    ("CredwatchKubeletRefreshOverdue", &[("pod", "api-0")]),
];

/// Alerts that must not fire at all in this scenario (the agent is healthy and scraped).
const NOT_FIRING: &[&str] = &[
    "CredwatchEventsLost",
    "CredwatchProbeDetached",
    "CredwatchPodMetadataDown",
    "CredwatchAgentAbsent",
];

/// Panels with no data in this scenario: (dashboard uid, panel title, why). None today: every
/// panel, the auth-call ones included, must show the scenario's data.
const EXPECTED_EMPTY: &[(&str, &str, &str)] = &[];

/// The dashboards' variables as this scenario sets them.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "30s"),
    ("$datasource", "prometheus"),
    ("$namespace", "shop"),
    ("$cluster", CLUSTER),
    ("$node", NODE),
    ("$job", "credwatch"),
    ("$pod", "api-0"),
];

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `prometheus` on a free loopback port, scraping `target` every 5 s (a debug build of the agent
/// on a loaded 2-CPU machine can take seconds to answer) with the rule file,
/// stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr, rules: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 5s\n  scrape_timeout: 5s\n  evaluation_interval: 1s\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: credwatch\n    static_configs:\n      \
             - targets: ['{target}']\n        labels: {{cluster: {CLUSTER}, node: {NODE}}}\n",
            rules = dir.join("rules.yaml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("run prometheus (Debian's prometheus package; cargo xtask setup installs it)");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            assert!(Instant::now() < deadline, "not ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` of its answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status}: {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Active alerts: (name, labels, state).
    fn alerts(&self) -> Vec<(String, BTreeMap<String, String>, String)> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(a["labels"].clone()).unwrap();
                (
                    labels["alertname"].clone(),
                    labels,
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        credwatch_e2e::stop_child(&mut self.child);
    }
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rule file with every `for:` at 20 s (the scenario lasts a minute, not days; Prometheus
/// scrapes a new target about 5 s after it starts, so `absent(up)` is true until then).
fn test_rules() -> String {
    let rules = std::fs::read_to_string(project().join("deploy/rules/credwatch.rules.yaml"))
        .expect("deploy/rules/credwatch.rules.yaml");
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 20s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every alert name in the rule file.
fn rule_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// A pod of the scenario: its containers' cgroups and its stub API object.
struct Pod {
    uid: String,
    containers: Vec<(&'static str, String, Cgroup)>,
}

impl Pod {
    fn new(containers: &[&'static str]) -> Pod {
        let uid = random_pod_uid();
        let containers = containers
            .iter()
            .map(|c| {
                let id = random_container_id();
                let cg = Cgroup::new(&systemd_container_cgroup(&uid, &id));
                (*c, id, cg)
            })
            .collect();
        Pod { uid, containers }
    }

    fn json(&self, name: &str, sa: &str, volumes: Value) -> Value {
        let cs: Vec<(&str, &str)> = self
            .containers
            .iter()
            .map(|(n, id, _)| (*n, id.as_str()))
            .collect();
        pod_json("shop", name, &self.uid, NODE, sa, &cs, volumes)
    }

    fn read(&self, container: &str, path: &Path, n: u32) {
        let cg = &self.containers.iter().find(|c| c.0 == container).unwrap().2;
        let count = cg.read(&["open", path.to_str().unwrap(), &n.to_string()]);
        assert_eq!(count, u64::from(n));
    }
}

/// The scenario's pods on disk and in the stub API, with their reads done. Returns what must
/// outlive the agent's scrapes.
struct Scenario {
    tree: KubeletTree,
    _api: KubeApi,
    _kubeconfig: TempDir,
    api_0: Pod,
    web_0: Pod,
    auth: AuthEndpoints,
}

/// A Vault-shaped plaintext endpoint on loopback that answers every request 401, and a
/// catalogued port where nothing listens; the agent's config file naming both.
struct AuthEndpoints {
    server: Child,
    port_401: u16,
    port_closed: u16,
    dir: TempDir,
}

const ANSWER_401: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl AuthEndpoints {
    fn start() -> AuthEndpoints {
        let mut server = Command::new("python3")
            .args(["-c", ANSWER_401])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port_closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let this = AuthEndpoints {
            server,
            port_401: line.trim().parse().unwrap(),
            port_closed,
            dir: TempDir::new("auth-endpoints"),
        };
        std::fs::write(
            this.config(),
            format!(
                "endpoints:\n  - {{name: vault, address: 127.0.0.1, port: {}, kind: vault}}\n  \
                 - {{name: idp, address: 127.0.0.1, port: {}, tls: true, kind: oidc}}\n",
                this.port_401, this.port_closed
            ),
        )
        .unwrap();
        this
    }

    fn config(&self) -> PathBuf {
        self.dir.join("credwatch.yaml")
    }
}

impl Drop for AuthEndpoints {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Five token lookups answered 401 over one connection, then two connects nobody accepts.
const AUTH_CLIENT: &str = r#"
import http.client, socket, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
for _ in range(5):
    c.request("GET", "/v1/auth/token/lookup-self", headers={"X-Vault-Token": "expired"})
    r = c.getresponse(); r.read(); assert r.status == 401, r.status
for _ in range(2):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2)
        sys.exit("the closed port accepted")
    except ConnectionRefusedError:
        pass
"#;

fn token_volume(tree: &mut KubeletTree, uid: &str, token: &str) -> PathBuf {
    let vol = tree.volume(uid, PROJECTED, SA_VOLUME);
    tree.write(
        &vol,
        &[
            ("token", token.as_bytes()),
            ("namespace", b"shop".as_slice()),
        ],
    );
    vol
}

fn scenario() -> Scenario {
    let mut tree = KubeletTree::new();
    let signer = Signer::new();
    let t0 = now();
    let api_0 = Pod::new(&["app", "sidecar"]);
    let web_0 = Pod::new(&["web"]);
    // api-0: a token that expired a minute ago (rotated below), a certificate expiring in two
    // days, a Secret with a password app reads and a key nobody reads.
    let expired = sa_claims("shop", "api-0", &api_0.uid, "api", t0 - 3660, t0 - 60, None);
    token_volume(&mut tree, &api_0.uid, &signer.jwt(&expired));
    let (chain, key, _, _) = cert_chain(2);
    let tls = tree.volume(&api_0.uid, SECRET, "tls");
    tree.write(&tls, &[("tls.crt", &chain), ("tls.key", &key)]);
    let db = tree.volume(&api_0.uid, SECRET, "db");
    tree.write(&db, &[("password", b"pw"), ("unused-key", b"k")]);
    // web-0: a token the kubelet should have refreshed 7 minutes ago; it expires in 5.
    let stale = sa_claims(
        "shop",
        "web-0",
        &web_0.uid,
        "web",
        t0 - 3300,
        t0 + 300,
        None,
    );
    token_volume(&mut tree, &web_0.uid, &signer.jwt(&stale));

    let api = KubeApi::start();
    let sa_vol = json!({"name": SA_VOLUME, "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}});
    api.add_pod(api_0.json(
        "api-0",
        "api",
        json!([sa_vol, {"name": "tls", "secret": {"secretName": "api-tls"}}, {"name": "db", "secret": {"secretName": "api-db"}}]),
    ));
    api.add_pod(web_0.json("web-0", "web", json!([sa_vol])));
    let kubeconfig = TempDir::new("kubeconfig");
    api.write_kubeconfig(&kubeconfig.join("kubeconfig"));
    Scenario {
        tree,
        _api: api,
        _kubeconfig: kubeconfig,
        api_0,
        web_0,
        auth: AuthEndpoints::start(),
    }
}

impl Scenario {
    fn agent_args(&self) -> Vec<String> {
        vec![
            "--kubelet-root".into(),
            self.tree.path().to_str().unwrap().into(),
            "--kubeconfig".into(),
            self._kubeconfig.join("kubeconfig").to_str().unwrap().into(),
            "--node-name".into(),
            NODE.into(),
            "--config".into(),
            self.auth.config().to_str().unwrap().into(),
        ]
    }

    fn file(&self, pod: &Pod, plugin: &str, volume: &str, file: &str) -> PathBuf {
        self.tree
            .pod_dir(&pod.uid)
            .join("volumes")
            .join(plugin)
            .join(volume)
            .join(file)
    }

    /// The reads, and the rotation of api-0's token: sidecar never re-reads it.
    fn run(&mut self, agent: &Agent) {
        let token = self.file(&self.api_0, PROJECTED, SA_VOLUME, "token");
        self.api_0.read("app", &token, 3);
        self.api_0.read("sidecar", &token, 2);
        self.api_0
            .read("app", &self.file(&self.api_0, SECRET, "db", "password"), 1);
        self.web_0.read("web", &token, 1); // another pod's token
        let own = self.file(&self.web_0, PROJECTED, SA_VOLUME, "token");
        self.web_0.read("web", &own, 1);

        let t0 = now();
        let signer = Signer::new();
        let fresh = sa_claims("shop", "api-0", &self.api_0.uid, "api", t0, t0 + 3600, None);
        token_volume(&mut self.tree, &self.api_0.uid, &signer.jwt(&fresh));
        agent.wait_metrics("the rotation", |m| {
            m.lines().any(|l| {
                l.starts_with("credwatch_credential_rotations_total{")
                    && l.contains("pod=\"api-0\"")
                    && l.contains(SA_VOLUME)
                    && l.ends_with(" 1")
            })
        });
        self.api_0.read("app", &token, 1);
        self.auth_traffic(agent);
    }

    /// api-0's sidecar, which holds the expired token, gets 401s from vault and cannot reach idp.
    fn auth_calls(&self) {
        let cg = &self
            .api_0
            .containers
            .iter()
            .find(|c| c.0 == "sidecar")
            .unwrap()
            .2;
        let out = cg
            .command("python3")
            .args(["-c", AUTH_CLIENT])
            .arg(self.auth.port_401.to_string())
            .arg(self.auth.port_closed.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn auth_traffic(&self, agent: &Agent) {
        self.auth_calls();
        agent.wait_metrics("the 401s", |m| {
            m.lines().any(|l| {
                l.starts_with("credwatch_auth_requests_total{")
                    && l.contains("container=\"sidecar\"")
                    && l.contains("code=\"401\"")
                    && l.ends_with(" 5")
            })
        });
    }
}

fn has(labels: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
}

/// Polls /api/v1/alerts until every expected alert fires, then 10 s more;
/// any alert that must not fire, seen firing at any poll, fails the test.
fn wait_alerts(
    prom: &Prometheus,
    expected: &[(&str, &[(&str, &str)])],
    forbidden: &[&str],
    tick: &dyn Fn(),
) {
    let start = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        let alerts = prom.alerts();
        let firing: Vec<_> = alerts.iter().filter(|a| a.2 == "firing").collect();
        for (name, labels, _) in &firing {
            assert!(
                !forbidden.contains(&name.as_str()),
                "{name} fired: {labels:?}; targets: {}",
                prom.api("/api/v1/targets")
            );
            for (n, want) in NOT_FOR {
                assert!(
                    !(name == n && has(labels, want)),
                    "{name} fired for {labels:?}"
                );
            }
        }
        let missing: Vec<_> = expected
            .iter()
            .filter(|(n, want)| !firing.iter().any(|a| a.0 == *n && has(&a.1, want)))
            .collect();
        match (missing.is_empty(), done_at) {
            (true, None) => done_at = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() > Duration::from_secs(10) => {
                let names: BTreeSet<_> = firing.iter().map(|a| a.0.as_str()).collect();
                eprintln!("firing after {:?}: {names:?}", start.elapsed());
                return;
            }
            (false, Some(_)) => panic!("{missing:?} stopped firing: {alerts:?}"),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not firing after 120 s: {missing:?}\nactive: {alerts:?}\nprometheus log:\n{}",
            prom.log()
        );
        tick();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every panel query and query variable of every dashboard returns data, except the panels in
/// `EXPECTED_EMPTY` (which must then be empty: the list stays true).
fn check_panels(prom: &Prometheus) {
    let dir = project().join("dashboards");
    let (mut checked, mut dashboards) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let uid = d["uid"].as_str().unwrap().to_owned();
        dashboards += 1;
        for var in d["templating"]["list"].as_array().unwrap() {
            if let Some(q) = var["query"]["query"].as_str() {
                assert!(
                    !label_values(prom, q).is_empty(),
                    "{uid}: variable {} ({q}) has no values",
                    var["name"]
                );
            }
        }
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("");
            let empty_ok = EXPECTED_EMPTY
                .iter()
                .find(|(u, t, _)| *u == uid && *t == title);
            for t in p["targets"].as_array().into_iter().flatten() {
                let q = substitute(t["expr"].as_str().unwrap());
                let result = prom.query(&q);
                match empty_ok {
                    Some((_, _, why)) => assert!(
                        result.is_empty(),
                        "{uid} / {title}: listed as empty ({why}) but has data: {q}"
                    ),
                    None => assert!(!result.is_empty(), "{uid} / {title}: no data for {q}"),
                }
                checked += 1;
            }
        }
    }
    assert!(dashboards >= 2, "dashboards missing in {}", dir.display());
    eprintln!(
        "{dashboards} dashboards: every panel query answered as expected ({checked} queries)"
    );
}

fn substitute(q: &str) -> String {
    VARIABLES
        .iter()
        .fold(q.to_owned(), |q, (var, value)| q.replace(var, value))
}

/// Grafana's `label_values(selector, label)` through Prometheus's label values API.
fn label_values(prom: &Prometheus, q: &str) -> Vec<Value> {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values: {q}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let path = format!(
        "/api/v1/label/{}/values?match[]={}",
        label.trim(),
        encode(&substitute(selector.trim()))
    );
    prom.api(&path).as_array().cloned().unwrap_or_default()
}

#[test]
fn prometheus_fires_the_expected_alerts_and_every_panel_has_data() {
    require_e2e!();
    // Every agent follows connections to the built-in metadata address; while another test's
    // agent holds such a connection in its sock hash, this one's insert is refused (a socket
    // joins one sk_msg program set) and counted lost, which fires CredwatchEventsLost here.
    let _metadata = super::auth::METADATA_ADDRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let rules = test_rules();
    let names = rule_names(&rules);
    let mut classified: BTreeSet<String> = FIRING.iter().map(|(n, _)| n.to_string()).collect();
    classified.extend(NOT_FIRING.iter().map(|n| n.to_string()));
    assert_eq!(
        names, classified,
        "every alert of the rule file is expected to fire or not to fire"
    );

    let mut s = scenario();
    let args = s.agent_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&[], &args);
    agent.wait_metrics("pod metadata", |m| {
        m.contains("credwatch_pod_metadata_up 1") && m.contains("pod=\"api-0\"")
    });
    s.run(&agent);

    let since = now();
    let prom = Prometheus::start(agent.addr, &rules);
    let expected: Vec<(&str, &[(&str, &str)])> = FIRING.to_vec();
    let forbidden: Vec<&str> = NOT_FIRING.to_vec();
    // app keeps reading its token while Prometheus watches (lines that move), and sidecar keeps
    // getting 401s (a counter Prometheus saw only at one value has no increase).
    let token = s.file(&s.api_0, PROJECTED, SA_VOLUME, "token");
    let tick = || {
        s.api_0.read("app", &token, 1);
        s.auth_calls();
    };
    wait_alerts(&prom, &expected, &forbidden, &tick);
    check_panels(&prom);
    if let Some(dir) = std::env::var_os("CREDWATCH_SCREENSHOTS") {
        screenshots(&prom, Path::new(&dir), since);
    }
    eprintln!(
        "agent resident memory at the end of the scenario: {} KiB",
        agent.rss_kib()
    );
}

/// The dashboards: (uid, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(project().join("dashboards"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((d["uid"].as_str().unwrap().to_owned(), d));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A series' legend: Grafana's `{{label}}` format (`__auto`: the label set).
fn legend(format: &str, labels: &serde_json::Map<String, Value>) -> String {
    if format == "__auto" || format.is_empty() {
        let parts: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        return parts.join(", ");
    }
    labels.iter().fold(format.to_owned(), |f, (k, v)| {
        f.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or(""))
    })
}

/// Columns first in this order, then the others (sorted), then the value.
const COLUMN_ORDER: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "volume",
    "file",
    "kind",
    "source",
    "service_account",
    "stage",
    "probe",
    "version",
    "kernel",
    "node",
    "instance",
    "cluster",
];

/// A table panel's rows from its instant queries, as Grafana's organize transformation shows
/// them (hidden columns left out, the value column renamed).
fn table_data(prom: &Prometheus, panel: &Value) -> Value {
    let organize = panel["transformations"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "organize"))
        .map(|t| t["options"].clone())
        .unwrap_or_default();
    let hidden = |k: &str| organize["excludeByName"][k].as_bool() == Some(true) || k == "__name__";
    let mut rows: Vec<(BTreeMap<String, String>, f64)> = Vec::new();
    let mut value_name = "Value".to_owned();
    for t in panel["targets"].as_array().into_iter().flatten() {
        let reference = format!("Value #{}", t["refId"].as_str().unwrap_or("A"));
        value_name = [reference.as_str(), "Value"]
            .iter()
            .find_map(|k| organize["renameByName"][*k].as_str())
            .unwrap_or("Value")
            .to_owned();
        for r in prom.query(&substitute(t["expr"].as_str().unwrap())) {
            let labels = r["metric"].as_object().cloned().unwrap_or_default();
            let labels = labels
                .into_iter()
                .filter(|(k, _)| !hidden(k))
                .map(|(k, v)| (k, v.as_str().unwrap_or("").to_owned()))
                .collect();
            let value = r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0);
            rows.push((labels, value));
        }
    }
    let mut columns: Vec<String> = rows.iter().flat_map(|r| r.0.keys().cloned()).collect();
    columns.sort_by_key(|c| {
        (
            COLUMN_ORDER.iter().position(|o| o == c).unwrap_or(99),
            c.clone(),
        )
    });
    columns.dedup();
    let show_value = !hidden("Value");
    let table: Vec<Vec<Value>> = rows
        .iter()
        .take(14)
        .map(|(labels, value)| {
            let mut row: Vec<Value> = columns
                .iter()
                .map(|c| json!(labels.get(c).cloned().unwrap_or_default()))
                .collect();
            if show_value {
                row.push(json!(value));
            }
            row
        })
        .collect();
    let value_column = show_value.then_some(columns.len());
    if show_value {
        columns.push(value_name);
    }
    json!({"columns": columns, "rows": table, "value_column": value_column})
}

/// A time series or bar gauge panel's series: range queries over the scenario (lines) or the
/// last value (bars).
fn series_data(prom: &Prometheus, panel: &Value, since: i64) -> Value {
    let mut series = Vec::new();
    for t in panel["targets"].as_array().into_iter().flatten() {
        let q = substitute(t["expr"].as_str().unwrap());
        let format = t["legendFormat"].as_str().unwrap_or("__auto");
        let path = format!(
            "/api/v1/query_range?query={}&start={since}&end={}&step=1",
            encode(&q),
            now()
        );
        for r in prom.api(&path)["result"].as_array().into_iter().flatten() {
            let points: Vec<(f64, f64)> = r["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?)))
                .collect();
            let last = points.last().map_or(0.0, |p| p.1);
            let name = legend(format, r["metric"].as_object().unwrap());
            series.push(json!({"name": name, "points": points, "last": last}));
        }
    }
    json!({ "series": series })
}

/// With `CREDWATCH_SCREENSHOTS=DIR`: each dashboard's panels drawn from Prometheus's answers by
/// tests/e2e/dashboard.html, and photographed by headless Chromium into `DIR/<uid>.png`.
fn screenshots(prom: &Prometheus, dir: &Path, since: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let page = include_str!("dashboard.html");
    for (uid, d) in dashboards() {
        let mut panels = Vec::new();
        let mut bottom = 0;
        for p in d["panels"].as_array().unwrap() {
            let kind = p["type"].as_str().unwrap_or("");
            let g = &p["gridPos"];
            bottom = bottom.max(g["y"].as_i64().unwrap_or(0) + g["h"].as_i64().unwrap_or(0));
            let title = p["title"].as_str().unwrap_or("");
            let mut out = json!({
                "title": title, "type": kind, "gridPos": g,
                "unit": p["fieldConfig"]["defaults"]["unit"],
                "steps": p["fieldConfig"]["defaults"]["thresholds"]["steps"],
                "empty_reason": EXPECTED_EMPTY.iter().find(|e| e.0 == uid && e.1 == title).map(|e| e.2),
            });
            let data = match kind {
                "row" => json!({}),
                "timeseries" | "bargauge" => series_data(prom, p, since),
                _ => table_data(prom, p),
            };
            out.as_object_mut()
                .unwrap()
                .extend(data.as_object().unwrap().clone());
            panels.push(out);
        }
        let data = json!({
            "title": d["title"],
            "subtitle": format!(
                "Rendered from a real Prometheus scraping the real agent during tests/e2e/prometheus.rs \
                 (variables: {}); not Grafana: tests/e2e/dashboard.html draws each panel's query results.",
                VARIABLES.iter().filter(|v| !v.0.starts_with("$__") && v.0 != "$datasource")
                    .map(|(k, v)| format!("{}={v}", &k[1..])).collect::<Vec<_>>().join(", ")
            ),
            "panels": panels,
        });
        let html = dir.join(format!("{uid}.html"));
        std::fs::write(&html, page.replace("/*DATA*/null", &data.to_string())).unwrap();
        let png = dir.join(format!("{uid}.png"));
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size=1600,{}", bottom * 36 + 90))
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("run chromium (apt-get install chromium)");
        assert!(
            out.status.success() && png.exists(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("screenshot: {}", png.display());
    }
}
