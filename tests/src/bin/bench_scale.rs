//! The scale benchmark (`cargo xtask bench --scale`): the real agent (release build) on kubelet
//! trees of 1,000 and 5,000 pods, each with a projected service-account volume (token, ca.crt,
//! namespace) and a two-key Secret, as the kubelet writes them, pods listed by the stub API
//! server, and reader cgroups reading their pod's token. Prints a Markdown report.
//!
//! usage: credwatch-bench-scale [--pods 1000,5000] [--readers 500] [--scrapes 5] [--hold SECS]
//! (`--hold` keeps each node and its agent that long after measuring, for a profiler.)
//! (`CREDWATCH_BIN` names the agent binary; root.)
use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use credwatch_e2e::{
    kubeapi::{pod_json, KubeApi},
    kubelet::{sa_claims, KubeletTree, PROJECTED, SECRET},
    random_container_id, random_pod_uid, reads, systemd_container_cgroup, Agent, Cgroup, TempDir,
};

struct Args {
    pods: Vec<usize>,
    readers: usize,
    scrapes: usize,
    hold: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        pods: vec![1_000, 5_000],
        readers: 500,
        scrapes: 5,
        hold: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{flag} {s}: {e}"));
        match flag.as_str() {
            "--pods" => a.pods = v.split(',').map(num).collect::<Result<_, _>>()?,
            "--readers" => a.readers = num(&v)?,
            "--scrapes" => a.scrapes = num(&v)?,
            "--hold" => a.hold = num(&v)? as u64,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// One pod on disk and in the API.
struct Pod {
    uid: String,
    container_id: String,
    token_volume: PathBuf,
}

/// The node: a kubelet tree and the API server listing its pods.
struct Node {
    tree: KubeletTree,
    /// Serves the pods while the agent runs.
    _api: KubeApi,
    kubeconfig: PathBuf,
    _dir: TempDir,
    pods: Vec<Pod>,
}

const NODE: &str = "bench-node";

/// A service-account JWT with the claims the API server puts in, signed with random bytes: the
/// agent reads claims and never verifies signatures, and 5,000 RSA signatures would make the
/// set-up, not the agent, the slow part.
fn token(ns: &str, name: &str, uid: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = sa_claims(ns, name, uid, "default", now, now + 3607, Some(now + 3600));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"bench"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"));
    let sig = URL_SAFE_NO_PAD.encode([0x5au8; 256]);
    format!("{header}.{payload}.{sig}").into_bytes()
}

impl Node {
    fn new(pods: usize) -> Node {
        let mut tree = KubeletTree::new();
        let api = KubeApi::start();
        let dir = TempDir::new("scale");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let mut out = Vec::with_capacity(pods);
        for i in 0..pods {
            let (uid, container_id) = (random_pod_uid(), random_container_id());
            let (ns, name) = (format!("ns-{}", i % 50), format!("app-{i}"));
            let token_volume = tree.volume(&uid, PROJECTED, "kube-api-access-bench");
            let t = token(&ns, &name, &uid);
            tree.write(
                &token_volume,
                &[
                    ("token", &t),
                    ("ca.crt", b"not a certificate: the bench needs no CA"),
                    ("namespace", ns.as_bytes()),
                ],
            );
            let secret = tree.volume(&uid, SECRET, "db");
            tree.write(&secret, &[("username", b"app"), ("password", b"bench")]);
            api.add_pod(pod_json(
                &ns,
                &name,
                &uid,
                NODE,
                "default",
                &[("app", &container_id)],
                serde_json::Value::Null,
            ));
            out.push(Pod {
                uid,
                container_id,
                token_volume,
            });
        }
        Node {
            tree,
            _api: api,
            kubeconfig,
            _dir: dir,
            pods: out,
        }
    }

    fn start_agent(&self) -> Agent {
        let root = self.tree.path().to_str().expect("UTF-8").to_owned();
        let kc = self.kubeconfig.to_str().expect("UTF-8").to_owned();
        Agent::start_args(
            &[
                "--no-default-watch",
                "--kubelet-root",
                &root,
                "--kubeconfig",
                &kc,
                "--node-name",
                NODE,
            ],
            &[],
        )
    }
}

/// The reader helper, built next to this binary.
fn reader_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("credwatch-probe-reader")
}

/// `readers` pods' containers each read their token 3 times, from the container's own cgroup.
fn read_tokens(node: &Node, readers: usize) -> Vec<Cgroup> {
    let mut groups = Vec::new();
    for p in node.pods.iter().take(readers) {
        let cg = Cgroup::new(&systemd_container_cgroup(&p.uid, &p.container_id));
        let out = cg
            .command(reader_bin())
            .args(["open", p.token_volume.join("token").to_str().unwrap(), "3"])
            .output()
            .expect("run reader");
        assert!(out.status.success(), "reader failed");
        groups.push(cg);
    }
    groups
}

/// Sum of `memlock` over the agent's BPF maps, from its descriptors' fdinfo (what `bpftool map
/// show` reports per map), in bytes, and the map count.
fn kernel_map_memory(pid: u32) -> (u64, usize) {
    let (mut bytes, mut maps) = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(m) = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            bytes += m;
            maps += 1;
        }
    }
    (bytes, maps)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `elapsed_ms` of the agent's "inventory scanned" log line: its first scan.
fn first_scan_ms(agent: &Agent) -> String {
    agent
        .log_text()
        .lines()
        .find(|l| l.contains("inventory scanned"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_owned()
}

/// The agent's `WATCHED` map (inode -> credential generation), found among its descriptors.
fn watched_map(pid: u32) -> HashMap<MapData, [u8; 16], [u8; 8]> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("agent fds")
        .flatten()
    {
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        let named = MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some("WATCHED"));
        if named {
            let data = MapData::from_id(id).expect("WATCHED by id");
            let map = Map::from_map_data(data).expect("WATCHED map");
            return HashMap::try_from(map).expect("WATCHED is a hash map");
        }
    }
    panic!("the agent has no WATCHED map");
}

/// The kernel's key for a file: inode number, then `MKDEV(major, minor)`.
fn inode_key(path: &std::path::Path) -> [u8; 16] {
    let m = std::fs::metadata(path).expect("new token");
    let dev = (libc::major(m.dev()) << 20) | libc::minor(m.dev());
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&m.ino().to_ne_bytes());
    key[8..12].copy_from_slice(&dev.to_ne_bytes());
    key
}

/// The kubelet's `..data` swap of pod 0's token volume, and a reloader in that pod reading the
/// new token at once: the time until the new file is in `WATCHED`, and whether the reloader's
/// read was counted (it happened before the agent could know the file).
fn swap_to_watched(node: &mut Node, agent: &Agent) -> (Duration, bool) {
    let pod = &node.pods[0];
    let labels = [("pod", "app-0"), ("file", "token"), ("container", "app")];
    let before = reads(&agent.metrics(), &labels).unwrap_or(0.0);
    let map = watched_map(agent.pid());
    let vol = pod.token_volume.clone();
    let cg = Cgroup::new(&systemd_container_cgroup(&pod.uid, &pod.container_id));
    let mut reloader = cg.command(reader_bin());
    reloader.args(["open", vol.join("token").to_str().unwrap(), "1"]);
    let t = token("ns-0", "app-0", &pod.uid);
    let start = Instant::now();
    node.tree
        .write(&vol, &[("token", &t), ("namespace", b"ns-0")]);
    let out = reloader.output().expect("reloader");
    assert!(out.status.success(), "reloader failed");
    let key = inode_key(&vol.join("token"));
    while map.get(&key, 0).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the new generation was not watched within 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let watched = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let now = reads(&agent.metrics(), &labels).unwrap_or(0.0);
        if now >= before + 1.0 || Instant::now() > deadline {
            eprintln!("bench-scale: reads of pod 0's token {before} -> {now}");
            break now == before + 1.0;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (watched, counted)
}

fn scale_row(pods: usize, args: &Args) -> String {
    let setup = Instant::now();
    let mut node = Node::new(pods);
    eprintln!(
        "bench-scale: {pods} pods written in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let agent = node.start_agent();
    let ready = started.elapsed();
    // The pod watch fills in names asynchronously: wait until the last pod is known.
    let last = format!("pod=\"app-{}\"", pods - 1);
    agent.wait_metrics("every pod named", |m| m.contains(&last));
    let rss_scan = agent.rss_kib();
    let _readers = read_tokens(&node, args.readers.min(pods));
    let mut times = Vec::new();
    let mut size = 0;
    let mut series = 0;
    for _ in 0..args.scrapes {
        let t = Instant::now();
        let m = agent.metrics();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = m.len();
        series = m.lines().filter(|l| !l.starts_with('#')).count();
    }
    // The last page (20 MB at 5,000 pods) is unmapped once written: not part of the steady state.
    std::thread::sleep(Duration::from_secs(1));
    let rss_scrapes = agent.rss_kib();
    let (map_bytes, maps) = kernel_map_memory(agent.pid());
    let (swap, counted) = swap_to_watched(&mut node, &agent);
    let scan_ms = first_scan_ms(&agent);
    if args.hold > 0 {
        eprintln!(
            "bench-scale: holding agent pid {} at http://{} for {} s",
            agent.pid(),
            agent.addr,
            args.hold
        );
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    drop(agent);
    format!(
        "| {pods} | {:.2} | {} | {} | {} | {:.0} ({:.0}-{:.0}) | {:.1} | {series} | {:.1} ({maps} maps) | {:.1} | {} |\n",
        ready.as_secs_f64(),
        scan_ms,
        mib(rss_scan),
        mib(rss_scrapes),
        median(times.clone()),
        times.iter().copied().fold(f64::MAX, f64::min),
        times.iter().copied().fold(0.0, f64::max),
        size as f64 / 1e6,
        map_bytes as f64 / (1024.0 * 1024.0),
        swap.as_secs_f64() * 1000.0,
        if counted { "yes" } else { "NO" },
    )
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("credwatch-bench-scale: {e}");
        std::process::exit(2)
    });
    // A mount namespace of our own (the agent and readers, our children, share it): the
    // thousands of volume tmpfs mounts go with it even when the bench is killed before it
    // cleans up.
    credwatch_e2e::mounts::private_namespace().expect("a private mount namespace");
    let empty = TempDir::new("scale-empty");
    std::fs::create_dir_all(empty.join("pods")).expect("pods dir");
    let idle = Agent::start_args(
        &[
            "--no-default-watch",
            "--kubelet-root",
            empty.path().to_str().unwrap(),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = idle.rss_kib();
    let (idle_maps, n_maps) = kernel_map_memory(idle.pid());
    drop(idle);
    let mut report = format!(
        "# credwatch scale benchmark\n\n\
         Idle agent (no credentials): RSS {} MiB; kernel maps {:.1} MiB ({n_maps} maps, memlock).\n\n\
         | pods | ready (s) | first scan (ms) | RSS after scan (MiB) | RSS 1 s after {} scrapes (MiB) | /metrics render ms, median (min-max) | size (MB) | series | kernel maps (MiB) | ..data swap to watched (ms) | read right after the swap counted |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        mib(idle_rss),
        idle_maps as f64 / (1024.0 * 1024.0),
        args.scrapes,
    );
    for &pods in &args.pods {
        report.push_str(&scale_row(pods, &args));
    }
    print!("{report}");
}
