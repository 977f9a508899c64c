//! Harness for credwatch's end-to-end tests: the real agent binary, real cgroups, real processes.
//!
//! Everything a test creates is removed by a guard's `Drop` (agent processes, cgroups, files).
// Test support: the stub API server's protocol handlers read best whole.
#![allow(clippy::too_many_lines)]

pub mod kubeapi;
pub mod kubelet;
pub mod mounts;
pub mod netns;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// True when the end-to-end tier can run (root). Without root it says why, and panics when
/// `CREDWATCH_E2E=required` (CI) so that a skipped tier cannot pass.
pub fn e2e_enabled() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = "the end-to-end tier needs root (it loads eBPF programs and makes cgroups)";
    if std::env::var("CREDWATCH_E2E").as_deref() == Ok("required") {
        panic!("{msg}, and CREDWATCH_E2E=required");
    }
    eprintln!("SKIPPED: {msg}; run `cargo xtask test` (it runs the test binaries through sudo)");
    false
}

/// Returns from the calling test when the end-to-end tier cannot run here (see `e2e_enabled`).
#[macro_export]
macro_rules! require_e2e {
    () => {
        if !$crate::e2e_enabled() {
            return;
        }
    };
}

/// The agent binary: `$CREDWATCH_BIN` (set by `cargo xtask test`), else the debug build.
/// The repository's root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("CREDWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/credwatch"))
}

/// The helper that opens files in controlled ways (see `src/bin/reader.rs`).
/// Cargo builds it next to the test binary's `deps/` directory.
pub fn reader_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("credwatch-probe-reader")
}

/// The FUSE file system whose reads never answer (see `src/bin/hung_fs.rs`), built next to
/// the reader.
pub fn hung_fs_bin() -> PathBuf {
    reader_bin().with_file_name("credwatch-hung-fs")
}

/// The benchmark's loops (see `src/bin/bench_loop.rs`), built next to the reader.
pub fn bench_loop_bin() -> PathBuf {
    reader_bin().with_file_name("credwatch-bench-loop")
}

/// `credwatch-hung-fs` mounted on a temporary directory: `token` reads normally, `id_rsa` (and
/// every file `hang` adds) never answers a read. On drop: stdin closed (the server detaches the
/// mount and exits, which aborts the reads still waiting), the server killed if it lingers, and
/// the mount detached here too, so that no stuck mount outlives the test.
pub struct HungFs {
    server: Child,
    stdin: Option<std::process::ChildStdin>,
    dir: TempDir,
}

impl HungFs {
    pub fn mount() -> HungFs {
        let dir = TempDir::new("hung-fs");
        let mut server = Command::new(hung_fs_bin())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", hung_fs_bin().display()));
        let stdin = server.stdin.take();
        let mut first = String::new();
        let _ = BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut first);
        let fs = HungFs { server, stdin, dir };
        assert!(
            first.starts_with("mounted "),
            "credwatch-hung-fs did not mount: {first:?}"
        );
        fs
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a file `name` whose reads never answer; returns once it is listed.
    pub fn hang(&mut self, name: &str) {
        let stdin = self.stdin.as_mut().expect("server running");
        writeln!(stdin, "{name}").expect("credwatch-hung-fs takes a name");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listed(self.path(), name) {
            assert!(Instant::now() < deadline, "{name} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn listed(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() == name)
}

impl Drop for HungFs {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.server.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Killing the server closes /dev/fuse: the kernel aborts the connection.
        let _ = self.server.kill();
        let _ = self.server.wait();
        mounts::detach(self.dir.path());
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory removed on drop (after unmounting anything a test left in it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(unique(&format!("credwatch-e2e-{name}")));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory on bpffs for an agent's pins (`--pin-dir`), removed with every pin in it on drop:
/// the pinned programs stop counting then.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// A new name under `/sys/fs/bpf` (the agent makes the directory). bpffs refuses dots in
    /// names.
    pub fn new(name: &str) -> Self {
        PinDir(PathBuf::from("/sys/fs/bpf").join(unique(name).replace('.', "-")))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `credwatch agent`, stopped with SIGTERM on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
    /// Its own pin directory, unless the test gave one (dropped after the agent stopped).
    _pins: Option<PinDir>,
}

impl Agent {
    /// Starts the agent on a free port with only the given watch paths and extra arguments, and
    /// waits until /readyz says ready.
    pub fn start(watch: &[&Path], extra: &[&str]) -> Agent {
        Self::start_with_env(watch, extra, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(watch: &[&Path], extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut args = vec!["--no-default-watch".to_owned()];
        for w in watch {
            args.push("--watch".to_owned());
            args.push(w.to_str().expect("UTF-8 path").to_owned());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_args(&args, env)
    }

    /// Starts `credwatch agent --listen 127.0.0.1:0 --api ARGS...` (the built-in watch list
    /// stays on unless ARGS turn it off) and waits until /readyz says ready. Unless ARGS name a
    /// `--pin-dir`, the agent pins into a directory of its own, removed when it is dropped
    /// (agents of tests running at once must not share counters).
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = TempDir::new("agent");
        let log = dir.join("agent.log");
        let mut cmd = Command::new(agent_bin());
        // --api: the tests look at /api/v1/* (from loopback).
        cmd.args(["agent", "--listen", "127.0.0.1:0", "--api"]);
        let pins = (!args.contains(&"--pin-dir")).then(|| PinDir::new("agent-pins"));
        if let Some(p) = &pins {
            cmd.args(["--pin-dir", p.path()]);
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .env("CREDWATCH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", agent_bin().display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("agent stdout");
        let addr = first
            .trim()
            .strip_prefix("credwatch: serving http://")
            .and_then(|s| s.strip_suffix("/metrics"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "agent did not print its address (got {first:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let agent = Agent {
            child,
            addr,
            log,
            _dir: dir,
            _pins: pins,
        };
        agent.wait_ready();
        agent
    }

    /// SIGKILL, as a crash or the OOM killer would: nothing of the agent runs after it. Returns
    /// its log.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.addr, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready after 60 s; log:\n{}", self.log_text());
    }

    pub fn get(&self, path: &str) -> String {
        match http_get(self.addr, path) {
            Ok((200, body)) => body,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` until `pred` holds of the body (60 s at most): for what the agent records from
    /// its event rings, which trails the kernel's counters by a decode.
    pub fn wait_get(&self, path: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.get(path);
            if pred(&body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; {path}:\n{body}\nlog:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log once it holds `needle` (60 s at most): lines written from the event
    /// rings trail the kernel's counters, which /metrics reads at once.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_line(needle, |l| l.contains(needle))
    }

    /// The agent's log once one of its lines satisfies `pred` (60 s at most); `what` names it
    /// in the failure.
    pub fn wait_log_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log_text();
            if log.lines().any(&pred) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls /metrics until `pred` holds for it (the inventory follows files asynchronously; on
    /// a loaded 2-CPU machine running every test at once, that can take a while).
    pub fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_get("/metrics", what, pred)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL: how the tests stop the servers they start.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return; // reaped already: its pid may be another process's now
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `name{...}` whose labels include every `(key, value)` in `labels`
/// (values as they appear in the text format, escaped).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (lbl, value) = if let Some(r) = rest.strip_prefix('{') {
            let end = label_set_end(r)?;
            (&r[..end], r[end + 1..].strip_prefix(' ')?)
        } else {
            ("", rest.strip_prefix(' ')?)
        };
        labels
            .iter()
            .all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Where a label set ends: the first `}` outside a quoted value (values may hold `}`, `\"`).
fn label_set_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The `credential_reads_total` sample whose labels include every `(key, value)` in `labels`.
pub fn reads(metrics: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(metrics, "credwatch_credential_reads_total", labels)
}

/// A cgroup v2 directory made by the test (nested path allowed), removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
    /// Directories this guard created, deepest last.
    created: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates `rel` (e.g. `kubepods.slice/.../cri-containerd-<id>.scope`) under the cgroup2 mount.
    /// Tests run in parallel and share ancestors: one that another guard removes between our
    /// look and our mkdir is made again.
    pub fn new(rel: &str) -> Cgroup {
        let root = cgroup2_mount();
        let mut created = Vec::new();
        'attempt: for _ in 0..50 {
            let mut p = root.clone();
            for part in rel.split('/').filter(|s| !s.is_empty()) {
                p.push(part);
                match std::fs::create_dir(&p) {
                    Ok(()) => created.push(p.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'attempt,
                    Err(e) => panic!("mkdir {}: {e}", p.display()),
                }
            }
            return Cgroup { path: p, created };
        }
        panic!("cannot create cgroup {rel}: its ancestors keep vanishing");
    }

    /// A command that starts inside this cgroup (it moves itself in before exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs =
            std::ffi::CString::new(self.path.join("cgroup.procs").to_string_lossy().as_bytes())
                .unwrap();
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs the reader helper in this cgroup; returns the number of opens it made.
    pub fn read(&self, args: &[&str]) -> u64 {
        let out = self
            .command(reader_bin())
            .args(args)
            .output()
            .expect("run reader");
        assert!(
            out.status.success(),
            "reader {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("reader prints its count")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in self.created.iter().rev() {
            // Processes have exited by now; a cgroup with none can be removed.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A pod directory another Cgroup created (two containers of one pod) could not go while
        // this one's container was in it, nor later by its creator: whoever leaves it empty
        // removes it. rmdir takes only an empty directory; a test creating beneath it meanwhile
        // retries (`new`).
        let root = cgroup2_mount();
        for dir in self.path.ancestors().skip(1) {
            if dir == root || std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// Where cgroup v2 is mounted (the agent's own answer).
pub fn cgroup2_mount() -> PathBuf {
    PathBuf::from(credwatch::sys::cgroup2_mount().expect("cgroup v2 is mounted"))
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_owned()
}

/// A random pod uid (UUID form).
pub fn random_pod_uid() -> String {
    let u = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &u[..8],
        &u[8..12],
        &u[12..16],
        &u[16..20],
        &u[20..32]
    )
}

/// A random 64-hex container id.
pub fn random_container_id() -> String {
    random_hex(64)
}

/// The systemd-driver cgroup of a container.
pub fn systemd_container_cgroup(uid: &str, id: &str) -> String {
    format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )
}

/// The cgroupfs-driver cgroup of a container.
pub fn cgroupfs_container_cgroup(uid: &str, id: &str) -> String {
    format!("kubepods/besteffort/pod{uid}/{id}")
}

/// A random 64-hex container id and a pod uid, and the systemd-driver cgroup path of that
/// container: `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`.
pub fn pod_container_cgroup() -> (String, String, String) {
    let (uid, id) = (random_pod_uid(), random_container_id());
    (systemd_container_cgroup(&uid, &id), uid, id)
}

/// Continues in a child forked after closing every descriptor above 2, so that its descriptor
/// table lives inside `files_struct` (the file probe's helper-free path) even when this process
/// inherited an expanded one. Returns `None` in the child; in the parent, waits and returns the
/// child's exit status.
pub fn continue_in_fresh_fd_table() -> Option<i32> {
    // SAFETY: close_range, fork and waitpid with valid arguments.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        match libc::fork() {
            0 => None,
            pid if pid > 0 => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    1
                })
            }
            _ => Some(1),
        }
    }
}
