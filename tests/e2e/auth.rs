//! The auth-call sensor on the real kernel: connect outcomes per workload, and (with the
//! decoders) classified requests over plaintext and TLS.
use std::{net::TcpListener, sync::Mutex};

use credwatch_e2e::{netns::NetNs, pod_container_cgroup, sample, Agent, Cgroup, TempDir};

/// Tests that put a server on the metadata address (one per host) take turns.
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
