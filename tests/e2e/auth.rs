//! The auth-call sensor on the real kernel: connect outcomes per workload, and (with the
//! decoders) classified requests over plaintext and TLS.
use std::{net::TcpListener, sync::Mutex};

use credwatch_e2e::{
    bench_loop_bin, netns::NetNs, pod_container_cgroup, sample, Agent, Cgroup, TempDir,
};

/// Tests that put a server on the metadata address (one per host) take turns, and with the
/// Prometheus test, whose agent must lose nothing (see there).
pub static METADATA_ADDRESS: Mutex<()> = Mutex::new(());

/// A Python client that connects to each `host:port` given and prints one outcome per line.
const CONNECT: &str = r#"
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((host, int(port)))
        print("ok")
    except Exception as e:
        print(type(e).__name__)
    s.close()
"#;

fn connects(cg: &Cgroup, targets: &[String]) -> Vec<String> {
    let out = cg
        .command("python3")
        .arg("-c")
        .arg(CONNECT)
        .args(targets)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn config(dir: &TempDir, endpoints: &[(&str, &str, u16, bool, &str)]) -> String {
    let mut y = String::from("endpoints:\n");
    for (name, address, port, tls, kind) in endpoints {
        y.push_str(&format!(
            "  - name: {name}\n    address: \"{address}\"\n    port: {port}\n    tls: {tls}\n    kind: {kind}\n"
        ));
    }
    let path = dir.join("credwatch.yaml");
    std::fs::write(&path, y).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The token lookups of pod `uid` that credwatch counted with answer `code`.
fn lookups(metrics: &str, uid: &str, code: &str) -> Option<f64> {
    sample(
        metrics,
        "credwatch_auth_requests_total",
        &[("pod", uid), ("operation", "lookup"), ("code", code)],
    )
}

#[test]
fn connect_outcomes_are_counted_exactly_per_workload_and_endpoint() {
    require_e2e!();
    let _one = METADATA_ADDRESS.lock().unwrap_or_else(|e| e.into_inner());
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    // The built-in metadata endpoint, in a namespace of our own where nothing listens on port
    // 80 (refused), and a neighbour that never answers (failed).
    let _ns = NetNs::new("169.254.1.1/16", "169.254.169.254/16");
    let dir = TempDir::new("auth");
    let cfg = config(
        &dir,
        &[
            ("lo-open", "127.0.0.1", open_port, false, "vault"),
            ("lo-closed", "127.0.0.0/8", closed_port, false, "vault"),
            ("silent", "169.254.77.77", 80, false, "oidc"),
        ],
    );
    let agent = Agent::start(&[], &["--config", &cfg]);
    let (rel, uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let t = |host: &str, port: u16| format!("{host}:{port}");
    let mut targets = vec![t("127.0.0.1", open_port); 3];
    targets.extend([t("127.0.0.2", closed_port), t("127.0.0.3", closed_port)]);
    targets.push(t("169.254.169.254", 80));
    targets.push(t("169.254.77.77", 80));
    targets.push(t("127.0.0.1", other.local_addr().unwrap().port()));
    let outcomes = connects(&cg, &targets);
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "ok",
            "ConnectionRefusedError",
            "ConnectionRefusedError",
            "ConnectionRefusedError",
            "TimeoutError",
            "ok"
        ],
        "the client saw other outcomes than planned"
    );
    let count = |m: &str, endpoint: &str, result: &str| {
        sample(
            m,
            "credwatch_auth_connections_total",
            &[
                ("namespace", ""),
                ("pod", &uid),
                ("container", &id[..12]),
                ("endpoint", endpoint),
                ("result", result),
            ],
        )
    };
    let m = agent.wait_metrics("the failed connect", |m| {
        count(m, "silent", "failed").is_some()
    });
    assert_eq!(count(&m, "lo-open", "established"), Some(3.0), "{m}");
    assert_eq!(count(&m, "lo-closed", "refused"), Some(2.0), "{m}");
    assert_eq!(count(&m, "cloud-metadata", "refused"), Some(1.0), "{m}");
    assert_eq!(count(&m, "silent", "failed"), Some(1.0), "{m}");
    let series = m
        .lines()
        .filter(|l| l.starts_with("credwatch_auth_connections_total{") && l.contains(&uid))
        .count();
    assert_eq!(
        series, 4,
        "a connect to a port outside the catalog is not counted:\n{m}"
    );
    drop(cg);
}

/// An IMDSv2-shaped metadata server: `PUT /latest/api/token` issues a session token, `GET
/// /latest/meta-data/iam/security-credentials/<role>` answers 200 with that token, 401 once the
/// file `argv[2]` exists. `argv[1]` is the canary the token and the credentials carry.
const IMDS: &str = r#"
import http.server, os, sys
canary, deny = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        if self.path == "/latest/api/token":
            self.answer(200, ("token-" + canary).encode())
        else:
            self.answer(404, b"")
    def do_GET(self):
        ok = self.headers.get("X-aws-ec2-metadata-token") == "token-" + canary
        if not self.path.startswith("/latest/meta-data/iam/security-credentials/"):
            self.answer(404, b"")
        elif ok and not os.path.exists(deny):
            self.answer(200, ('{"SecretAccessKey": "%s"}' % canary).encode())
        else:
            self.answer(401, b"")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("169.254.169.254", 80), H).serve_forever()
"#;

/// The AWS SDK's dance against the metadata service, over one keep-alive connection: a token,
/// then `n` credential fetches with it. Prints the status codes.
const IMDS_CLIENT: &str = r#"
import http.client, sys
n = int(sys.argv[1])
c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
c.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
r = c.getresponse(); token = r.read().decode(); codes = [r.status]
for _ in range(n):
    c.request("GET", "/latest/meta-data/iam/security-credentials/node-role",
              headers={"X-aws-ec2-metadata-token": token})
    r = c.getresponse(); r.read(); codes.append(r.status)
if len(sys.argv) > 2:
    # Two more, each in one call of several buffers (an iovec): sendmsg(2), then writev(2).
    import os
    head = b"GET /latest/meta-data/iam/security-credentials/node-role HTTP/1.1\r\n"
    rest = [b"Host: 169.254.169.254\r\n", b"X-aws-ec2-metadata-token: " + token.encode() + b"\r\n\r\n"]
    for send in (lambda: c.sock.sendmsg([head] + rest), lambda: os.writev(c.sock.fileno(), [head] + rest)):
        send()
        r = http.client.HTTPResponse(c.sock); r.begin(); r.read(); codes.append(r.status)
print(" ".join(map(str, codes)))
"#;

#[test]
fn metadata_calls_are_classified_and_a_401_names_the_credential_read_before() {
    require_e2e!();
    let _one = METADATA_ADDRESS.lock().unwrap_or_else(|e| e.into_inner());
    let canary = format!("CANARY{}", credwatch_e2e::random_container_id());
    let ns = NetNs::new("169.254.1.1/16", "169.254.169.254/16");
    let dir = TempDir::new("imds");
    let deny = dir.join("deny");
    let mut server = ns.spawn("python3", &["-c", IMDS, &canary, deny.to_str().unwrap()]);
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("aws-web-identity-token"),
        format!("opaque-{canary}"),
    )
    .unwrap();
    let agent = Agent::start(&[&secrets], &[]);
    let (rel, uid, id) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    // The caller reads its web identity token first, as an SDK would.
    cg.read(&[
        "open",
        secrets.join("aws-web-identity-token").to_str().unwrap(),
        "1",
    ]);
    let client = |args: &[&str]| -> String {
        for _ in 0..50 {
            let out = cg
                .command("ip")
                .args(["netns", "exec", &ns.name, "python3", "-c", IMDS_CLIENT])
                .args(args)
                .output()
                .expect("client");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            // The server may not listen yet.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the metadata client never got through");
    };
    assert_eq!(client(&["2", "iovec"]), "200 200 200 200 200");
    std::fs::write(&deny, "").unwrap();
    assert_eq!(client(&["3"]), "200 401 401 401");
    let endpoint = credwatch::sensors::auth::catalog::metadata_name(
        &std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default(),
    );
    let count = |m: &str, operation: &str, code: &str| {
        sample(
            m,
            "credwatch_auth_requests_total",
            &[
                ("pod", &uid),
                ("container", &id[..12]),
                ("endpoint", endpoint),
                ("operation", operation),
                ("code", code),
            ],
        )
    };
    let m = agent.wait_metrics("the 401s", |m| {
        count(m, "metadata_credentials", "401") == Some(3.0)
    });
    assert_eq!(count(&m, "metadata_token", "200"), Some(2.0), "{m}");
    // Two by http.client's write(2)s, one by sendmsg(2), one by writev(2).
    assert_eq!(count(&m, "metadata_credentials", "200"), Some(4.0), "{m}");
    let established = sample(
        &m,
        "credwatch_auth_connections_total",
        &[
            ("pod", &uid),
            ("endpoint", endpoint),
            ("result", "established"),
        ],
    );
    assert_eq!(established, Some(2.0), "{m}");
    assert!(
        m.contains("credwatch_auth_request_duration_seconds_count{endpoint=\""),
        "{m}"
    );
    // One failure event for the burst, naming what the caller read before.
    let failures = agent.get("/api/v1/auth-failures");
    let v: serde_json::Value = serde_json::from_str(&failures).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{failures}");
    assert_eq!(list[0]["code"], 401);
    assert_eq!(list[0]["operation"], "metadata_credentials");
    assert_eq!(
        list[0]["sent_credential"], true,
        "the GETs carried the session token header"
    );
    assert_eq!(list[0]["workload"]["pod"], uid.as_str());
    assert_eq!(
        list[0]["credentials"][0]["file"], "aws-web-identity-token",
        "{failures}"
    );
    let log = agent.log_text();
    assert!(log.contains("auth failure"), "{log}");
    for (what, text) in [("metrics", &m), ("failures", &failures), ("log", &log)] {
        assert!(!text.contains(&canary), "the canary leaked into the {what}");
    }
    let _ = server.kill();
    let _ = server.wait();
    drop(cg);
}

/// A real OpenBao in dev mode with its own TLS on a loopback port, userpass enabled with user
/// `alice`; stopped on drop.
struct OpenBao {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    _dir: TempDir,
}

fn bao_bin() -> std::path::PathBuf {
    credwatch_e2e::project_root().join("target/tools/python/bin/bao")
}

impl OpenBao {
    fn start() -> OpenBao {
        let dir = TempDir::new("openbao");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bao_bin())
            .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=root"])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (cargo xtask setup installs it)",
                    bao_bin().display()
                )
            });
        let bao = OpenBao {
            child,
            port,
            ca: dir.join("vault-ca.pem"),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while bao.cli(&["status"]).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "OpenBao did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        bao.cli(&["auth", "enable", "userpass"]).unwrap();
        bao.cli(&["write", "auth/userpass/users/alice", "password=right"])
            .unwrap();
        bao
    }

    fn cli(&self, args: &[&str]) -> Result<(), String> {
        let out = std::process::Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", format!("https://127.0.0.1:{}", self.port))
            .env("BAO_CACERT", &self.ca)
            .env("BAO_TOKEN", "root")
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The five calls every client makes: (method, path, token header, body), with the code
/// OpenBao answers and the operation credwatch must classify it as.
fn vault_calls(
    canary: &str,
) -> Vec<(
    &'static str,
    &'static str,
    String,
    String,
    &'static str,
    &'static str,
)> {
    vec![
        (
            "GET",
            "/v1/auth/token/lookup-self",
            "root".into(),
            String::new(),
            "lookup",
            "200",
        ),
        (
            "GET",
            "/v1/auth/token/lookup-self",
            format!("bad-{canary}"),
            String::new(),
            "lookup",
            "403",
        ),
        (
            "POST",
            "/v1/auth/userpass/login/alice",
            String::new(),
            r#"{"password":"right"}"#.into(),
            "login",
            "200",
        ),
        (
            "POST",
            "/v1/auth/userpass/login/alice",
            String::new(),
            format!(r#"{{"password":"{canary}"}}"#),
            "login",
            "400",
        ),
        (
            "POST",
            "/v1/identity/oidc/provider/default/token",
            String::new(),
            format!("grant_type=authorization_code&code=x&client_id=app&client_secret={canary}"),
            "oidc_token",
            "401",
        ),
    ]
}

const PY_CLIENT: &str = r#"
import json, ssl, sys, urllib.request, urllib.error
base, ca = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
for method, path, token, body in json.loads(sys.argv[3]):
    req = urllib.request.Request(base + path, method=method, data=body.encode() or None)
    if token:
        req.add_header("X-Vault-Token", token)
    try:
        code = urllib.request.urlopen(req, context=ctx).status
    except urllib.error.HTTPError as e:
        code = e.code
    print(code)
"#;

#[test]
fn vault_calls_over_tls_are_counted_once_each_for_curl_h2_curl_h1_and_python() {
    require_e2e!();
    let bao = OpenBao::start();
    let canary = format!("CANARY{}", &credwatch_e2e::random_container_id()[..24]);
    let dir = TempDir::new("vault");
    let cfg = config(&dir, &[("openbao", "127.0.0.1", bao.port, true, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let base = format!("https://127.0.0.1:{}", bao.port);
    let calls = vault_calls(&canary);
    let mut clients = Vec::new();
    for client in ["curl-h2", "curl-h1", "python"] {
        let (rel, uid, id) = pod_container_cgroup();
        let cg = Cgroup::new(&rel);
        let mut codes = Vec::new();
        if client == "python" {
            let list: Vec<(&str, &str, &str, &str)> = calls
                .iter()
                .map(|(m, p, t, b, _, _)| (*m, *p, t.as_str(), b.as_str()))
                .collect();
            let out = cg
                .command("python3")
                .args(["-c", PY_CLIENT, &base, bao.ca.to_str().unwrap()])
                .arg(serde_json::to_string(&list).unwrap())
                .output()
                .unwrap();
            codes.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        } else {
            for (method, path, token, body, _, _) in &calls {
                let mut cmd = cg.command("curl");
                cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
                    .arg("--cacert")
                    .arg(&bao.ca)
                    .arg(format!("{base}{path}"));
                if client == "curl-h1" {
                    cmd.arg("--http1.1");
                }
                if !token.is_empty() {
                    cmd.args(["-H", &format!("X-Vault-Token: {token}")]);
                }
                if !body.is_empty() {
                    cmd.args(["--data", body]);
                }
                codes.push(String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned());
            }
        }
        let want: Vec<&str> = calls.iter().map(|c| c.5).collect();
        assert_eq!(
            codes, want,
            "{client}: OpenBao answered otherwise than planned"
        );
        clients.push((client, uid, id, cg));
    }
    let count = |m: &str, uid: &str, operation: &str, code: &str| {
        sample(
            m,
            "credwatch_auth_requests_total",
            &[
                ("pod", uid),
                ("endpoint", "openbao"),
                ("operation", operation),
                ("code", code),
            ],
        )
    };
    let last = &clients[2];
    agent.wait_metrics("python's OIDC call", |m| {
        count(m, &last.1, "oidc_token", "401").is_some()
    });
    let m = agent.metrics();
    for (client, uid, id, _) in &clients {
        for (_, _, _, _, operation, code) in &calls {
            let n = count(&m, uid, operation, code);
            assert_eq!(n, Some(1.0), "{client} {operation} {code}:\n{m}");
        }
        let all: f64 = m
            .lines()
            .filter(|l| l.starts_with("credwatch_auth_requests_total{") && l.contains(uid.as_str()))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(all, calls.len() as f64, "{client}: each request once:\n{m}");
        assert!(m.contains(&format!("container=\"{}\"", &id[..12])), "{m}");
    }
    let failures = agent.get("/api/v1/auth-failures");
    let log = agent.log_text();
    for (what, text) in [("metrics", &m), ("failures", &failures), ("log", &log)] {
        assert!(!text.contains(&canary), "the canary leaked into the {what}");
    }
    // curl's SSL_write/SSL_read and Python's _ex forms, all seen through the internal functions
    // they share (the exported ones: the private-copy test below).
    assert!(
        log.lines()
            .any(|l| l.contains("TLS library attached") && l.contains(r#"probes="internal""#)),
        "{log}"
    );
    drop(clients);
}

/// Runs in a private mount namespace with its own copy of libssl on a tmpfs only it sees, and a
/// file named like libssl that has no OpenSSL symbols (a copy of libz); waits for the agent's
/// next scan of /proc, then makes one bad-token lookup. Prints the libssl it mapped, then the code.
const PRIVATE_LIBSSL: &str = r#"
set -e
mount -t tmpfs private "$1"
cp /usr/lib/x86_64-linux-gnu/libssl.so.3 "$1/"
cp /usr/lib/x86_64-linux-gnu/libz.so.1 "$1/libssl.so.0.9.8"
LD_LIBRARY_PATH="$1" exec python3 -c '
import ctypes, ssl, sys, time, urllib.request, urllib.error
ctypes.CDLL(sys.argv[1] + "/libssl.so.0.9.8")
print([l.split()[-1] for l in open("/proc/self/maps") if "libssl.so.3" in l][0])
sys.stdout.flush()
time.sleep(0.5)
req = urllib.request.Request(sys.argv[2] + "/v1/auth/token/lookup-self", headers={"X-Vault-Token": "nope"})
try:
    print(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=sys.argv[3])).status)
except urllib.error.HTTPError as e:
    print(e.code)
' "$1" "$2" "$3"
"#;

#[test]
fn a_libssl_copy_mapped_later_in_a_private_mount_namespace_is_attached_at_once_and_a_fake_one_is_not(
) {
    require_e2e!();
    if !std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3").exists() {
        panic!("this test needs Debian's libssl3 (x86_64) to copy");
    }
    let bao = OpenBao::start();
    let dir = TempDir::new("libssl");
    let cfg = config(&dir, &[("openbao", "127.0.0.1", bao.port, true, "vault")]);
    // The probes on the exported functions, the fallback for an OpenSSL whose internal ones are
    // not found: counted as exactly.
    let agent = Agent::start(&[], &["--config", &cfg, "--tls-probe-points", "exported"]);
    let private = dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let out = cg
        .command("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            PRIVATE_LIBSSL,
            "sh",
        ])
        .arg(&private)
        .arg(format!("https://127.0.0.1:{}", bao.port))
        .arg(&bao.ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let copy = format!("{}/libssl.so.3", private.display());
    assert_eq!(
        lines,
        [copy.as_str(), "403"],
        "the client did not use its own copy"
    );
    assert!(
        std::fs::read_dir(&private).unwrap().next().is_none(),
        "the copy must be invisible outside its mount namespace"
    );
    let m = agent.wait_metrics("the lookup through the private copy", |m| {
        lookups(m, &uid, "403") == Some(1.0)
    });
    let log = agent.log_text();
    // Attached when the process mapped it, not by the periodic scan (every 2 s: the client
    // calls half a second after loading its copy).
    assert!(
        log.lines().any(|l| l.contains("TLS library attached")
            && l.contains(&copy)
            && l.contains(r#"found_by="mapping""#)
            && l.contains(r#"probes="exported""#)),
        "{log}"
    );
    assert!(
        log.contains("TLS library not attached") && log.contains("libssl.so.0.9.8"),
        "a library without OpenSSL's symbols is reported, not fatal:\n{log}"
    );
    assert_eq!(agent.get("/healthz").trim(), "ok", "{m}");
    drop(cg);
}

/// Waits for the go-ahead file (the agent has attached its copy of libssl), then makes token
/// lookups with each token given, over one keep-alive connection; prints the OpenSSL version,
/// then one code per lookup.
const PY_LOOKUPS: &str = r#"
import http.client, os, ssl, sys, time
base, ca, go, tokens = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print(ssl.OPENSSL_VERSION, flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
conn = http.client.HTTPSConnection(base, context=ssl.create_default_context(cafile=ca))
for token in tokens:
    conn.request("GET", "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})
    r = conn.getresponse()
    r.read()
    print(r.status, flush=True)
"#;

/// The libssl and libcrypto 3.5 that `cargo xtask setup` installs (inside PyPI's psycopg-binary
/// wheel, under names of its own), set up as a directory a client's loader takes `libssl.so.3` and
/// `libcrypto.so.3` from.
fn openssl_35(dir: &std::path::Path) -> std::path::PathBuf {
    let lib_root = credwatch_e2e::project_root().join("target/tools/python/lib");
    let libs = std::fs::read_dir(&lib_root)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages/psycopg_binary.libs"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no psycopg_binary.libs under {} (cargo xtask setup)",
                lib_root.display()
            )
        });
    let out = dir.join("openssl35");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&libs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libssl-") {
            std::fs::copy(entry.path(), out.join("libssl.so.3")).unwrap();
        } else if name.starts_with("libcrypto-") {
            // Under its own name (libssl's NEEDED) and as libcrypto.so.3 (Python's), one file.
            std::fs::copy(entry.path(), out.join(&name)).unwrap();
            std::os::unix::fs::symlink(&name, out.join("libcrypto.so.3")).unwrap();
        }
    }
    out
}

/// OpenSSL 3.3 and later give the internal write function a `flags` argument before `written`
/// (with `SSL_write_ex2`): a client on OpenSSL 3.5 is attached at its internal functions too, and
/// each of its requests is counted once with the right code.
#[test]
fn a_client_on_openssl_3_5_is_counted_through_its_internal_functions() {
    require_e2e!();
    let bao = OpenBao::start();
    let dir = TempDir::new("openssl35");
    let libs = openssl_35(dir.path());
    let cfg = config(&dir, &[("openbao", "127.0.0.1", bao.port, true, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let go = dir.join("go");
    let mut client = cg
        .command("python3")
        .env("LD_LIBRARY_PATH", &libs)
        .args(["-c", PY_LOOKUPS, &format!("127.0.0.1:{}", bao.port)])
        .arg(&bao.ca)
        .arg(&go)
        .args(["root", "nope", "root"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut version = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().unwrap()),
        &mut version,
    )
    .unwrap();
    assert!(version.starts_with("OpenSSL 3.5"), "{version:?}");
    let copy = format!("{}/libssl.so.3", libs.display());
    agent.wait_log_line(
        "the OpenSSL 3.5 copy attached at its internal functions",
        |l| {
            l.contains("TLS library attached")
                && l.contains(&copy)
                && l.contains(r#"probes="internal""#)
        },
    );
    std::fs::write(&go, "").unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["200", "403", "200"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = agent.wait_metrics("the 3.5 client's lookups", |m| {
        lookups(m, &uid, "200") == Some(2.0)
    });
    assert_eq!(lookups(&m, &uid, "403"), Some(1.0), "{m}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        lookups(&agent.metrics(), &uid, "200"),
        Some(2.0),
        "counted once"
    );
    drop(cg);
}

/// Starts a Python server script that prints its port first; returns it and the port.
fn python_server(script: &str) -> (std::process::Child, u16) {
    let mut server = std::process::Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    (server, port.trim().parse().unwrap())
}

/// Garbage both ways on a plaintext endpoint's socket, then a request split over three writes
/// whose response is larger than the capture, on the same connection.
const GARBAGE_CLIENT: &str = r#"
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(os.urandom(3000) + sys.argv[2].encode())
s.recv(65536)
s.close()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for part in (b"GET /v1/auth/tok", b"en/lookup-self HTTP/1.1\r\nHost: x\r\nX-Vault-Token: " + sys.argv[2].encode(), b"\r\n\r\n"):
    s.sendall(part)
got = b""
while not got.endswith(b"END"):
    got += s.recv(65536)
print(got.split(b" ")[1].decode())
"#;

const GARBAGE_SERVER: &str = r#"
import os, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(); print(l.getsockname()[1]); sys.stdout.flush()
c, _ = l.accept(); c.recv(65536); c.sendall(os.urandom(5000)); c.close()
c, _ = l.accept(); data = b""
while not data.endswith(b"\r\n\r\n"):
    data += c.recv(65536)
body = b"x" * 20000 + b"END"
c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
c.close()
"#;

#[test]
fn garbage_and_oversized_responses_on_an_endpoint_socket_are_survived_and_classified() {
    require_e2e!();
    let (mut server, port) = python_server(GARBAGE_SERVER);
    let dir = TempDir::new("garbage");
    let cfg = config(&dir, &[("junk", "127.0.0.1", port, false, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let canary = format!("CANARY{}", &credwatch_e2e::random_container_id()[..24]);
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let out = cg
        .command("python3")
        .args(["-c", GARBAGE_CLIENT, &port.to_string(), &canary])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "403");
    let _ = server.wait();
    let m = agent.wait_metrics("the split request", |m| {
        sample(
            m,
            "credwatch_auth_requests_total",
            &[
                ("pod", &uid),
                ("endpoint", "junk"),
                ("operation", "lookup"),
                ("code", "403"),
            ],
        ) == Some(1.0)
    });
    let garbage: f64 = m
        .lines()
        .filter(|l| l.starts_with("credwatch_auth_requests_total{") && l.contains(&uid))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(garbage, 1.0, "the garbage connection is no request:\n{m}");
    assert_eq!(agent.get("/healthz").trim(), "ok");
    for (what, text) in [("metrics", m), ("log", agent.log_text())] {
        assert!(!text.contains(&canary), "the canary leaked into the {what}");
    }
    drop(cg);
}

/// Two lookups on two connections that share a descriptor number: the first socket is kept
/// open by a `dup` while its descriptor is closed and taken by the second connect, and only
/// closes after that. (Python's urllib under load does the same by timing: the old socket's
/// final close comes after the next connect took its descriptor number.)
const REUSED_FD_CLIENT: &str = r#"
import os, socket, sys, time
req = b"GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: x\r\nX-Vault-Token: t\r\n\r\n"
a = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
a.sendall(req); print(a.recv(65536).split(b" ")[1].decode())
keep = os.dup(a.fileno()); number = a.fileno(); a.close()
b = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
assert b.fileno() == number, (b.fileno(), number)
os.close(keep); time.sleep(0.3)
b.sendall(req); print(b.recv(65536).split(b" ")[1].decode())
"#;

const TWO_ANSWERS_SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(); print(l.getsockname()[1]); sys.stdout.flush()
for code in (b"403 Forbidden", b"401 Unauthorized"):
    c, _ = l.accept(); data = b""
    while not data.endswith(b"\r\n\r\n"):
        data += c.recv(65536)
    c.sendall(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\n\r\n")
    c.close()
"#;

#[test]
fn a_socket_closing_after_its_descriptor_number_was_reused_does_not_hide_the_new_one() {
    require_e2e!();
    let (mut server, port) = python_server(TWO_ANSWERS_SERVER);
    let dir = TempDir::new("reused-fd");
    let cfg = config(&dir, &[("lo", "127.0.0.1", port, false, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let out = cg
        .command("python3")
        .args(["-c", REUSED_FD_CLIENT, &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["403", "401"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = server.wait();
    let count = |m: &str, code: &str| {
        sample(
            m,
            "credwatch_auth_requests_total",
            &[
                ("pod", &uid),
                ("endpoint", "lo"),
                ("operation", "lookup"),
                ("code", code),
            ],
        )
    };
    let m = agent.wait_metrics("the first lookup", |m| count(m, "403").is_some());
    // The second request went out 0.3 s after the first connection closed: if it was seen, it
    // is on the page by the time the first is (one ring, drained in order).
    let m = if count(&m, "401").is_none() {
        std::thread::sleep(std::time::Duration::from_secs(1));
        agent.metrics()
    } else {
        m
    };
    assert_eq!(count(&m, "403"), Some(1.0), "{m}");
    assert_eq!(
        count(&m, "401"),
        Some(1.0),
        "the second connection was lost:\n{m}"
    );
    drop(cg);
}

/// Requests as fast as TLS allows (the benchmark's loop: an HTTP/1.1 token lookup and its 200
/// over one keep-alive connection, client and server in one process on the system's libssl): 840
/// of them, in a few milliseconds, every one counted once and none dropped. Their 1,680 records
/// (a request and a response each) fit in the 1 MB ring even if the agent read none of them
/// during the burst, because a record is reserved at the size it needs (512 bytes here; at the
/// full 4 KB, 256 records would fill it).
#[test]
fn a_burst_of_tls_requests_is_counted_exactly_and_nothing_is_dropped() {
    require_e2e!();
    let dir = TempDir::new("tls-burst");
    let (cert, key) = credwatch_e2e::kubelet::self_signed(dir.path());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(&dir, &[("burst", "127.0.0.1", port, true, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let out = cg
        .command(bench_loop_bin())
        .args(["tls", &port.to_string()])
        .arg(&cert)
        .arg(&key)
        .arg("800")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 800 timed and 40 warm-up requests.
    let count = |m: &str| {
        sample(
            m,
            "credwatch_auth_requests_total",
            &[
                ("pod", &uid),
                ("endpoint", "burst"),
                ("operation", "lookup"),
                ("code", "200"),
            ],
        )
    };
    let m = agent.wait_metrics("840 lookups counted", |m| count(m) == Some(840.0));
    let lost = sample(
        &m,
        "credwatch_events_lost_total",
        &[("stage", "kernel_auth_ringbuf")],
    );
    assert_eq!(lost, Some(0.0), "{m}");
    // Counted once: nothing more arrives later.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(count(&agent.metrics()), Some(840.0));
    drop(cg);
}

/// Node.js: waits for the agent's next scan of /proc, then makes a bad-token and a good-token
/// lookup over one keep-alive connection. Prints the two codes.
const NODE_CLIENT: &str = r#"
const https = require("https"), fs = require("fs");
const [port, ca, go] = process.argv.slice(1);
const agent = new https.Agent({ keepAlive: true, ca: fs.readFileSync(ca) });
const get = (token) => new Promise((done) => {
  https.get({ host: "127.0.0.1", port, path: "/v1/auth/token/lookup-self", agent,
              headers: { "X-Vault-Token": token } },
            (r) => { r.resume(); r.on("end", () => done(r.statusCode)); });
});
// Waits for the test's go-ahead: the agent attaches to new processes at its next /proc scan.
const wait = () => fs.existsSync(go) ? run() : setTimeout(wait, 50);
const run = async () => {
  const codes = [await get("nope"), await get("root")];
  console.log(codes.join(" "));
  agent.destroy();
};
wait();
"#;

#[test]
fn node_with_its_own_static_openssl_is_covered() {
    require_e2e!();
    let node = std::path::Path::new("/usr/bin/node");
    if !credwatch::sensors::auth::tls::exports_openssl(node) {
        eprintln!("skipped: no /usr/bin/node that exports a static OpenSSL on this machine");
        return;
    }
    let bao = OpenBao::start();
    let dir = TempDir::new("node");
    let cfg = config(&dir, &[("openbao", "127.0.0.1", bao.port, true, "vault")]);
    let agent = Agent::start(&[], &["--config", &cfg]);
    let (rel, uid, _) = pod_container_cgroup();
    let cg = Cgroup::new(&rel);
    let go = dir.join("go");
    let client = cg
        .command(node)
        .args([
            "-e",
            NODE_CLIENT,
            &bao.port.to_string(),
            bao.ca.to_str().unwrap(),
            go.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // New processes are attached at the agent's next /proc scan (every 2 s; longer on a loaded
    // machine): the client makes its requests once its executable is attached.
    agent.wait_log("/usr/bin/node");
    std::fs::write(&go, "").unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "403 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = agent.wait_metrics("node's lookups", |m| lookups(m, &uid, "200") == Some(1.0));
    assert_eq!(lookups(&m, &uid, "403"), Some(1.0), "{m}");
    drop(cg);
}

#[test]
fn check_and_inventory_show_the_catalog_as_resolved() {
    require_e2e!();
    let dir = TempDir::new("catalog");
    let cfg = config(
        &dir,
        &[
            ("vault-lo", "localhost", 8200, true, "vault"),
            ("idp-range", "10.20.0.0/16", 443, true, "oidc"),
            ("nowhere", "no-such-host.invalid", 443, true, "oidc"),
        ],
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new(credwatch_e2e::agent_bin())
            .args(args)
            .args(["--config", &cfg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A process with the system's libssl mapped: check says where the probes would go in it.
    let mut python = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl, sys; print('mapped', flush=True); sys.stdin.read()",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(python.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    let check = run(&["check"]);
    drop(python.stdin.take());
    python.wait().unwrap();
    assert!(
        check.lines().any(|l| l.contains("TLS library")
            && l.contains("libssl.so.3: probes on the internal write and read functions")),
        "{check}"
    );
    let metadata = format!(
        "endpoint {} :80",
        credwatch::sensors::auth::catalog::metadata_name(
            &std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default()
        )
    );
    assert!(
        check.contains(&metadata),
        "check lacks {metadata:?}:\n{check}"
    );
    for want in [
        "endpoint vault-lo :8200",
        "127.0.0.1/32",
        "endpoint idp-range :443",
        "10.20.0.0/16",
        "endpoint nowhere :443",
        "does not resolve",
        "probe tp_btf/inet_sock_set_state",
    ] {
        assert!(check.contains(want), "check lacks {want:?}:\n{check}");
    }
    let inventory = run(&["inventory", "--no-default-watch"]);
    assert!(
        inventory.contains("AUTH ENDPOINT")
            && inventory.contains("vault-lo")
            && inventory.contains("10.20.0.0/16"),
        "{inventory}"
    );
}
