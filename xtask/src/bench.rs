//! `cargo xtask bench`: see the README's Benchmarks section.
//!
//! Measures, side by side in one run, four setups: `none` (nothing attached), `floor` (empty
//! programs on credwatch's tracepoints), `credwatch` (the real agent) and `peer` (a bpftrace
//! script comparing path prefixes on openat entry). Each round starts every setup in turn (see
//! `ORDERS`), runs the measured loops under it and stops it. Medians over rounds, and medians of
//! per-round ratios, go to stdout and to target/bench/report.md.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Iterations of each measured loop (open/close of each file, getppid) [default: 1000000]
    #[arg(long)]
    iterations: Option<u64>,
    /// Rounds; each runs every setup once [default: 10]
    #[arg(long)]
    rounds: Option<usize>,
    /// A fast smoke run: 100000 iterations, 4 rounds (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// The CPU the measured loops are pinned to; the setups' own processes run on the others.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// The realistic workload's source tree (a few thousand files) [default: ~/.cargo/registry/src]
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// Which part to run: the file sensor's, the auth-call sensor's, or both; `scale` is the
    /// agent on kubelet trees of 1,000 and 5,000 pods (memory, scan, /metrics, rotation);
    /// `kernels` the file hooks' BPF run time per open inside Debian 6.1 and 6.12 guests (QEMU),
    /// where the fast hook can run (also part of `all`).
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// The scale benchmark only (`--part scale`).
    #[arg(long, conflicts_with = "part")]
    scale: bool,
    /// HTTPS requests per run of the auth part's TLS loop [default: 20000; --quick: 5000]
    #[arg(long)]
    tls_requests: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    All,
    Files,
    Auth,
    Scale,
    Kernels,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    if args.scale || args.part == Part::Scale {
        return run_scale(root, args.quick);
    }
    if args.part == Part::Kernels {
        return run_kernels(root, args.quick);
    }
    if args.part != Part::Auth {
        run_files(root, args)?;
    }
    if args.part == Part::All {
        run_kernels(root, args.quick)?;
    }
    if args.part != Part::Files {
        let _stats = BpfStats::restore_on_drop();
        let (loop_cpus, setup_cpus) = cpu_lists(args.cpu);
        let quick = args.quick;
        let bench = crate::bench_auth::AuthBench {
            root: root.to_owned(),
            tls_requests: args
                .tls_requests
                .unwrap_or(if quick { 5_000 } else { 20_000 }),
            socket_ops: args
                .iterations
                .unwrap_or(if quick { 100_000 } else { 500_000 }),
            rounds: args.rounds.unwrap_or(if quick { 2 } else { 6 }),
            loop_cpus,
            setup_cpus,
        };
        let out_dir = root.join("target/bench");
        std::fs::create_dir_all(&out_dir)?;
        let report = bench.run(&out_dir)?;
        print!("{report}");
        eprintln!(
            "bench: report written to {}",
            out_dir.join("report-auth.md").display()
        );
    }
    Ok(())
}

/// `credwatch-bench-scale` (tests/src/bin/bench_scale.rs) with the release agent; its Markdown
/// report goes to stdout and target/bench/report-scale.md.
fn run_scale(root: &Path, quick: bool) -> Result<()> {
    let (pods, readers) = if quick {
        ("200,1000", "100")
    } else {
        ("1000,5000", "500")
    };
    let out = Command::new(root.join("target/release/credwatch-bench-scale"))
        .args(["--pods", pods, "--readers", readers])
        .env("CREDWATCH_BIN", root.join("target/release/credwatch"))
        .stderr(Stdio::inherit())
        .output()
        .context("starting credwatch-bench-scale")?;
    ensure!(
        out.status.success(),
        "the scale benchmark failed: {}",
        out.status
    );
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    let path = root.join("target/bench/report-scale.md");
    std::fs::create_dir_all(root.join("target/bench"))?;
    std::fs::write(&path, report.as_bytes())?;
    eprintln!("bench: report written to {}", path.display());
    Ok(())
}

/// The file hooks inside QEMU guests (tests/kernels/run.sh with BENCH), one vCPU counting
/// instructions (`-icount shift=0`: a guest nanosecond is one guest instruction, so the numbers
/// are steady where TCG wall time is not): per open of a file no one watches, the hook's BPF run
/// time from the kernel's accounting, and what the whole open and close costs with the agent
/// against the same loop before it started (which includes what the accounting cannot see: the
/// tracepoints' dispatch, the trampoline), for the fast hook and the syscall tracepoints.
fn run_kernels(root: &Path, quick: bool) -> Result<()> {
    let opens = if quick { "20000" } else { "100000" };
    eprintln!("bench: file hooks in Debian 6.1 and 6.12 guests under QEMU ({opens} opens x 5)");
    let out = Command::new("bash")
        .arg(root.join("tests/kernels/run.sh"))
        .arg(root.join("target/release"))
        .env("BENCH", opens)
        .env("CREDWATCH_KERNEL_CACHE", root.join("target/kernels"))
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run tests/kernels/run.sh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "the guest benchmark failed:\n{text}");
    let rows = kernel_rows(&text)?;
    let mut report = format!(
        "# credwatch file hooks in guests\n\nPer open (and close) of a file no one watches, in Debian \
         kernels under QEMU TCG with one vCPU counting instructions (`-icount shift=0`: 1 ns is one \
         guest instruction); medians of 5 batches of {opens} opens. `BPF` is the hook's run time \
         from the kernel's accounting (BPF_ENABLE_STATS); `added` is the whole loop with the agent \
         minus the same loop before it started (the dispatch, the trampoline and the program).\n\n\
         | kernel | fexit BPF | fexit added | tracepoints BPF (walk) | tracepoints added | fexit / tracepoints (BPF) | (added) |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (kernel, hooks) in &rows {
        let (Some(fast), Some(tp)) = (hooks.get("fexit"), hooks.get("tracepoints")) else {
            bail!("the guest benchmark lacks a hook on {kernel}: {hooks:?}");
        };
        writeln!(
            report,
            "| {kernel} | {:.0} | {:.0} | {:.0} ({}) | {:.0} | {:.2} | {:.2} |",
            fast.bpf,
            fast.added(),
            tp.bpf,
            tp.walk,
            tp.added(),
            fast.bpf / tp.bpf,
            fast.added() / tp.added()
        )?;
    }
    report.push_str(&floor_table(&rows));
    report.push_str(&socket_table(&rows));
    report.push_str(&tls_table(&rows));
    print!("{report}");
    let path = root.join("target/bench/report-kernels.md");
    std::fs::create_dir_all(root.join("target/bench"))?;
    std::fs::write(&path, report.as_bytes())?;
    eprintln!("bench: report written to {}", path.display());
    Ok(())
}

/// Each hook's cost beyond an empty program on the same hook: what the program's own work
/// costs, without the accounting's clock reads and bookkeeping that both columns of BPF time carry.
fn floor_table(rows: &BTreeMap<String, BTreeMap<String, HookCost>>) -> String {
    let mut table = String::from(
        "\nThe same, net of an empty program on the same hook (`credwatch-bench-floor`): BPF time \
         minus the empty program's (the accounting's own glue), and the loop with the agent minus \
         the loop with the empty program (the program's work beyond the hook's dispatch):\n\n\
         | kernel | fexit BPF net | fexit beyond empty | tracepoints BPF net | tracepoints beyond empty | fexit / tracepoints (BPF net) |\n\
         |---|---|---|---|---|---|\n",
    );
    for (kernel, hooks) in rows {
        let net = |h: &str| {
            let c = hooks.get(h)?;
            let (floor_bpf, floor_wall) = c.floor?;
            Some((c.bpf - floor_bpf, c.wall - floor_wall))
        };
        if let (Some(fast), Some(tp)) = (net("fexit"), net("tracepoints")) {
            let _ = writeln!(
                table,
                "| {kernel} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
                fast.0,
                fast.1,
                tp.0,
                tp.1,
                fast.0 / tp.0
            );
        }
    }
    table
}

/// The socket loop per kernel and file hook: what a socket that is no auth endpoint pays for the
/// whole agent (instructions, so a steady ratio: the 2% target of the auth-call sensor).
fn socket_table(rows: &BTreeMap<String, BTreeMap<String, HookCost>>) -> String {
    let mut table = String::from(
        "\nPer 64-byte send + recv on a loopback TCP pair that is no auth endpoint, before the agent \
         started and with the whole agent (file and auth-call sensors, settled 5 s after start), \
         same guests; and per `getppid`, a syscall no program sees (what every syscall pays: the \
         slow path on the tracepoint kernels, the agent's own timers everywhere); and per io_uring \
         NOP submitted and reaped (what every io_uring completion pays: the io_uring hook of the \
         tracepoint path). `file sensor alone` is the same socket loop while the agent ran its file \
         sensor alone, so `with` over it is the auth-call sensor's own share:\n\n\
         | kernel | file hook | without | with | with / without | file sensor alone (with / it) | getppid without / with | io_uring NOP without / with |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (kernel, hooks) in rows {
        for (hook, cost) in hooks {
            if let Some((with, without)) = cost.sock {
                let pair = |p: Option<(f64, f64)>| {
                    p.map_or("-".to_owned(), |(with, without)| {
                        format!("{without:.0} / {with:.0} ({:.3})", with / without)
                    })
                };
                let (syscall, uring) = (pair(cost.syscall), pair(cost.uring));
                let file_alone = cost
                    .sock_file
                    .map_or("-".to_owned(), |f| format!("{f:.0} ({:.3})", with / f));
                let _ = writeln!(
                    table,
                    "| {kernel} | {hook} | {without:.0} | {with:.0} | {:.3} | {file_alone} | {syscall} | {uring} |",
                    with / without
                );
            }
        }
    }
    table
}

/// The TLS loop per kernel and file hook: what a token lookup over TLS to a catalogued endpoint
/// pays for the whole agent (its uprobes in both ends, the capture, the decoding), in
/// instructions; and whether every request was counted.
fn tls_table(rows: &BTreeMap<String, BTreeMap<String, HookCost>>) -> String {
    let mut table = String::from(
        "\nPer token lookup (HTTP/1.1 keep-alive) over one TLS connection to a catalogued endpoint, \
         client and server in one process on the system's libssl (`credwatch-bench-loop tls`: \
         the lower bound of a request's own cost, so the upper bound of the share credwatch \
         takes), same guests:\n\n\
         | kernel | file hook | probes | without | with | with / without | counted / made |\n\
         |---|---|---|---|---|---|---|\n",
    );
    tls_rows(&mut table, rows, |c| (c.tls, c.tls_counted));
    table.push_str(
        "\nThe same lookups from Python's http.client to Python's ssl server (`xtask/bench/tls_*.py`, \
         the host benchmark's pair, one process each, both on libssl): a request as an HTTP library \
         makes it; the agent's own work runs on the same vCPU and is counted in it:\n\n\
         | kernel | file hook | probes | without | with | with / without | counted / made |\n\
         |---|---|---|---|---|---|---|\n",
    );
    tls_rows(&mut table, rows, |c| (c.py_tls, c.py_tls_counted));
    table
}

/// One row per kernel and hook that measured `loop_of` (with, without; counted, made).
fn tls_rows(
    table: &mut String,
    rows: &BTreeMap<String, BTreeMap<String, HookCost>>,
    loop_of: impl Fn(&HookCost) -> (Option<(f64, f64)>, Option<(f64, f64)>),
) {
    for (kernel, hooks) in rows {
        for (hook, cost) in hooks {
            let (measured, counted) = loop_of(cost);
            if let Some((with, without)) = measured {
                let counted = counted.map_or("-".to_owned(), |(c, m)| format!("{c:.0} / {m:.0}"));
                let probes = cost.tls_probes.as_deref().unwrap_or("?");
                let _ = writeln!(
                    table,
                    "| {kernel} | {hook} | {probes} | {without:.0} | {with:.0} | {:.3} | {counted} |",
                    with / without
                );
            }
        }
    }
}

/// One guest's figures for one hook (ns under `-icount shift=0`: instructions).
#[derive(Debug)]
struct HookCost {
    walk: String,
    /// The program's run time per open, from the kernel's accounting.
    bpf: f64,
    /// The open loop per open with the agent, and before it started.
    wall: f64,
    base: f64,
    /// An empty program on the same hook: its run time per open (the accounting's glue), and
    /// the open loop with it.
    floor: Option<(f64, f64)>,
    /// 64-byte send + recv on a loopback TCP pair (no auth endpoint) with the whole agent, and
    /// before it started.
    sock: Option<(f64, f64)>,
    /// The same loop while the agent ran its file sensor alone.
    sock_file: Option<f64>,
    /// `getppid` with the whole agent, and before it started.
    syscall: Option<(f64, f64)>,
    /// An io_uring NOP submitted and reaped with the whole agent, and before it started.
    uring: Option<(f64, f64)>,
    /// A token lookup over TLS to a catalogued endpoint with the whole agent, and before it
    /// started; and the requests credwatch counted against those made.
    tls: Option<(f64, f64)>,
    tls_counted: Option<(f64, f64)>,
    /// The same lookups from Python's http.client to Python's ssl server.
    py_tls: Option<(f64, f64)>,
    py_tls_counted: Option<(f64, f64)>,
    /// Where the agent put the TLS probes in the guest's libssl (`internal` or `exported`).
    tls_probes: Option<String>,
}

impl HookCost {
    fn added(&self) -> f64 {
        self.wall - self.base
    }
}

/// "BENCH <pkg> KERNEL <release> ... hook=<h> walk=<w> ns_per_open=<n> runs_per_open=<r>
/// wall_ns_per_open=<w> base_wall_ns_per_open=<b>" lines, by kernel and hook.
fn kernel_rows(text: &str) -> Result<BTreeMap<String, BTreeMap<String, HookCost>>> {
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_owned)
    };
    let num = |line: &str, key: &str| field(line, key).and_then(|n| n.parse::<f64>().ok());
    let mut rows: BTreeMap<String, BTreeMap<String, HookCost>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("BENCH ")) {
        let kernel = line.split_whitespace().nth(3).unwrap_or("?").to_owned();
        let cost = (
            field(line, "hook="),
            field(line, "walk="),
            num(line, "ns_per_open="),
            num(line, "wall_ns_per_open="),
            num(line, "base_wall_ns_per_open="),
        );
        let (Some(hook), Some(walk), Some(bpf), Some(wall), Some(base)) = cost else {
            bail!("unreadable line from the guest benchmark: {line}");
        };
        // The socket loop: absent where the guest had no loop binary (or it failed).
        let sock = num(line, "sock_ns_per_op=").zip(num(line, "base_sock_ns_per_op="));
        let syscall = num(line, "ppid_ns_per_op=").zip(num(line, "base_ppid_ns_per_op="));
        let uring = num(line, "uring_ns_per_op=").zip(num(line, "base_uring_ns_per_op="));
        let tls = num(line, "tls_ns_per_op=").zip(num(line, "base_tls_ns_per_op="));
        let tls_counted = num(line, "tls_counted=").zip(num(line, "tls_made="));
        let py_tls = num(line, "py_tls_ns_per_op=").zip(num(line, "base_py_tls_ns_per_op="));
        let py_tls_counted = num(line, "py_tls_counted=").zip(num(line, "py_tls_made="));
        let floor = num(line, "floor_ns_per_open=").zip(num(line, "floor_wall_ns_per_open="));
        let cost = HookCost {
            walk,
            bpf,
            wall,
            base,
            floor,
            sock,
            sock_file: num(line, "file_sock_ns_per_op="),
            syscall,
            uring,
            tls,
            tls_counted,
            py_tls,
            py_tls_counted,
            tls_probes: field(line, "tls_probes="),
        };
        rows.entry(kernel).or_default().insert(hook, cost);
    }
    Ok(rows)
}

/// Archives of the tree per setup and round; their median damps one-off page-cache hiccups.
const TAR_RUNS: usize = 5;
/// bpftrace's `str()` reads at most 64 bytes: the credential prefix must fit.
const BPFTRACE_STRLEN: usize = 64;
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    None,
    Floor,
    Credwatch,
    Peer,
}

const SETUPS: [Setup; 4] = [Setup::None, Setup::Floor, Setup::Credwatch, Setup::Peer];

/// The setups' order, by round (cycled): each setup goes first and last in turn, and floor and
/// credwatch always run back to back, so the ratio between them sees the least drift.
const ORDERS: [[Setup; 4]; 4] = {
    use Setup::*;
    [
        [None, Floor, Credwatch, Peer],
        [Peer, Credwatch, Floor, None],
        [Floor, Credwatch, Peer, None],
        [None, Peer, Credwatch, Floor],
    ]
};

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Floor => "floor",
            Setup::Credwatch => "credwatch",
            Setup::Peer => "peer",
        }
    }
}

/// What is measured; each (metric, setup) cell collects one value per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    /// Wall clock, ns per open+close of a file no one watches (fresh descriptor table).
    OpenPlain,
    /// The same from a process whose descriptor table was expanded (credwatch's slow path).
    OpenPlainExpanded,
    /// Wall clock, ns per open+close of the watched credential.
    OpenCred,
    /// Wall clock, ns per getppid: the cost every syscall pays once any syscall tracepoint is on.
    Getppid,
    /// Wall clock, ms to archive the source tree.
    Tar,
    /// Kernel-measured ns per run of the openat program during the non-credential loop.
    BpfPlain,
    /// The same with an expanded descriptor table.
    BpfPlainExpanded,
    /// The same during the credential loop.
    BpfCred,
}

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::OpenPlain => "open+close, non-credential (ns/op)",
            Metric::OpenPlainExpanded => "open+close, non-credential, expanded fd table (ns/op)",
            Metric::OpenCred => "open+close, credential (ns/op)",
            Metric::Getppid => "getppid (ns/op)",
            Metric::Tar => "tar of the tree (ms)",
            Metric::BpfPlain => "BPF ns/run, non-credential opens",
            Metric::BpfPlainExpanded => "BPF ns/run, non-credential opens, expanded fd table",
            Metric::BpfCred => "BPF ns/run, credential opens",
        }
    }
}

/// Everything the rounds share.
struct Bench {
    loop_bin: PathBuf,
    floor_bin: PathBuf,
    credwatch_bin: PathBuf,
    peer_script: PathBuf,
    /// The watched directory (no trailing slash) and the credential file in it.
    cred_dir: PathBuf,
    cred_file: PathBuf,
    /// A file outside the watched directory, whose path shares no prefix with it beyond "/":
    /// a typical open, which a prefix compare rejects early.
    plain_file: PathBuf,
    tree: PathBuf,
    /// Where tar writes its archive: a file on a tmpfs of its own (no pipe, no reader process).
    archive: PathBuf,
    iterations: u64,
    /// `taskset` CPU lists: the measured loops' CPU and the others (None: no pinning).
    loop_cpus: Option<String>,
    setup_cpus: Option<String>,
    log_dir: PathBuf,
}

fn run_files(root: &Path, args: &Args) -> Result<()> {
    let iterations = args
        .iterations
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let rounds = args.rounds.unwrap_or(if args.quick { 4 } else { 10 });
    ensure!(
        iterations > 0 && rounds > 0,
        "--iterations and --rounds must be positive"
    );
    let out_dir = root.join("target/bench");
    let log_dir = out_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    let tmp = TempDir::new("bench")?;
    let files = Files::create(&tmp.0, &out_dir)?;
    let source_tree =
        match &args.tree {
            Some(t) => t.clone(),
            None => PathBuf::from(std::env::var("CARGO_HOME").unwrap_or_else(|_| {
                format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
            }))
            .join("registry/src"),
        };
    let (tree, tree_files) = copy_tree(&source_tree, &tmp.0)?;
    let (loop_cpus, setup_cpus) = cpu_lists(args.cpu);
    let bench = Bench {
        loop_bin: root.join("target/release/credwatch-bench-loop"),
        floor_bin: root.join("target/release/credwatch-bench-floor"),
        credwatch_bin: root.join("target/release/credwatch"),
        peer_script: root.join("xtask/bench/peer.bt"),
        cred_dir: files.cred_dir.clone(),
        cred_file: files.cred_file.clone(),
        plain_file: files.plain_file.clone(),
        tree,
        archive: files.archive.clone(),
        iterations,
        loop_cpus,
        setup_cpus,
        log_dir,
    };
    for bin in [
        &bench.loop_bin,
        &bench.floor_bin,
        &bench.credwatch_bin,
        &bench.peer_script,
    ] {
        ensure!(
            bin.exists(),
            "{} is missing (cargo build --release -p credwatch -p credwatch-e2e --bins)",
            bin.display()
        );
    }

    // The kernel's per-program run time and count; the old value comes back on any exit.
    // Off for the wall-clock loops (its clock reads add to every program run); each round turns
    // it on only for its accounting loops. The previous value is restored at the end.
    let _stats = BpfStats::restore_on_drop();

    // Warm the page cache with the tree once, so the first archive is not the odd one out.
    bench.tar()?;

    let header = format!(
        "{} rounds x 4 setups; {iterations} iterations per loop; tar of a copy of {} \
         ({tree_files} files) x{TAR_RUNS}; loops on CPU {}; kernel {}; load average at start {}",
        rounds,
        source_tree.display(),
        bench.loop_cpus.as_deref().unwrap_or("any"),
        read_trimmed("/proc/sys/kernel/osrelease"),
        read_trimmed("/proc/loadavg"),
    );
    eprintln!("bench: {header}");
    let outcome = bench.rounds(rounds)?;
    outcome.report(&out_dir, &header, iterations)
}

/// The bench's own files. The credential lives on a tmpfs of its own, as a kubelet secret volume
/// does; removed when the bench ends. Not beside the loops' files: an inotify watch (the agent's)
/// on a filesystem nothing else watches costs every open and close there about 3% (fsnotify's
/// slow path), a cost hosts with systemd or a kubelet already pay; see the README's Benchmarks
/// section.
struct Files {
    cred_dir: PathBuf,
    cred_file: PathBuf,
    plain_file: PathBuf,
    /// Where tar writes its archive: a file on a tmpfs of its own (no pipe, no reader process).
    archive: PathBuf,
    _mounts: [Tmpfs; 2],
}

impl Files {
    fn create(tmp: &Path, out_dir: &Path) -> Result<Self> {
        let cred_dir = tmp.join("creds");
        std::fs::create_dir_all(&cred_dir)?;
        let cred_mount = Tmpfs::mount(&cred_dir, "1m")?;
        let archive_dir = tmp.join("archive");
        std::fs::create_dir_all(&archive_dir)?;
        let archive_mount = Tmpfs::mount(&archive_dir, "4g")?;
        let cred_file = cred_dir.join("token");
        std::fs::write(&cred_file, "bench-not-a-real-secret\n")?;
        let plain_file = out_dir.join("plain.txt");
        std::fs::write(&plain_file, "not a credential\n")?;
        ensure!(
            cred_dir.as_os_str().len() + 1 < BPFTRACE_STRLEN,
            "credential directory {} too long for bpftrace's str()",
            cred_dir.display()
        );
        Ok(Self {
            cred_dir,
            cred_file,
            plain_file,
            archive: archive_dir.join("tree.tar"),
            _mounts: [cred_mount, archive_mount],
        })
    }
}

/// A private copy of the realistic workload's tree (cargo may be extracting crates into the
/// registry while we measure), and how many files it holds.
fn copy_tree(source: &Path, tmp: &Path) -> Result<(PathBuf, usize)> {
    let tree = tmp.join("tree");
    eprintln!("bench: copying {} to {}", source.display(), tree.display());
    crate::run(Command::new("cp").arg("-a").arg(source).arg(&tree))?;
    let files =
        count_files(&tree).with_context(|| format!("counting files under {}", tree.display()))?;
    ensure!(
        files >= 1000,
        "{} holds only {files} files; pass --tree with a tree of a few thousand",
        source.display()
    );
    Ok((tree, files))
}

/// `taskset` CPU lists: the loops' CPU and all the others; none on a single CPU.
fn cpu_lists(cpu: usize) -> (Option<String>, Option<String>) {
    let ncpu = thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu >= 2 && cpu < ncpu {
        let others: Vec<String> = (0..ncpu)
            .filter(|&c| c != cpu)
            .map(|c| c.to_string())
            .collect();
        (Some(cpu.to_string()), Some(others.join(",")))
    } else {
        eprintln!("bench: {ncpu} CPU(s): not pinning");
        (None, None)
    }
}

/// Every round's measurements and checks.
#[derive(Default)]
struct Outcome {
    results: BTreeMap<(Metric, Setup), Vec<f64>>,
    exact_failures: Vec<String>,
    exact_checks: usize,
    notes: Vec<String>,
}

impl Outcome {
    fn add(&mut self, setup: Setup, round: usize, r: RoundResult, peer_out: Option<&[String]>) {
        // The peer's own count is a sanity check that its compare really matches.
        if let Some(out) = peer_out {
            let want = r.cred_opens;
            match parse_bpftrace_count(out, "@matches") {
                Some(got) if got >= want => {}
                got => self.notes.push(format!(
                    "round {}: peer counted {got:?} credential opens, expected at least {want}",
                    round + 1
                )),
            }
        }
        if let Some((delta, want)) = r.exact {
            self.exact_checks += 1;
            if delta != want {
                self.exact_failures.push(format!(
                    "round {}: reads_total rose by {delta}, expected {want}",
                    round + 1
                ));
            }
        }
        for (m, v) in r.values {
            self.results.entry((m, setup)).or_default().push(v);
        }
    }

    /// Prints the report and writes it to target/bench/report.md; an inexact count fails.
    fn report(mut self, out_dir: &Path, header: &str, iterations: u64) -> Result<()> {
        // Other work on the machine is the main source of noise: show how busy it was.
        self.notes.push(format!(
            "load average at end {}",
            read_trimmed("/proc/loadavg")
        ));
        let warmup = loop_warmup(iterations);
        let exact = if self.exact_failures.is_empty() {
            format!(
                "exact: yes (credwatch_credential_reads_total rose by exactly {} = {iterations} timed + {warmup} warm-up opens, in all {} rounds)",
                iterations + warmup,
                self.exact_checks
            )
        } else {
            format!("exact: no ({})", self.exact_failures.join("; "))
        };
        let report = render(header, &self.results, &exact, &self.notes);
        print!("{report}");
        let path = out_dir.join("report.md");
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: report written to {}", path.display());
        ensure!(
            self.exact_failures.is_empty(),
            "credwatch's count was not exact: {}",
            self.exact_failures.join("; ")
        );
        Ok(())
    }
}

/// One setup's measurements in one round.
struct RoundResult {
    values: Vec<(Metric, f64)>,
    /// credwatch only: (observed rise of reads_total, opens the loop made).
    exact: Option<(u64, u64)>,
    /// Opens of the credential the loop made (timed + warm-up).
    cred_opens: u64,
}

impl Bench {
    /// Runs every setup in every round, in `ORDERS`.
    fn rounds(&self, rounds: usize) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        for round in 0..rounds {
            for setup in ORDERS[round % ORDERS.len()] {
                eprintln!("bench: round {}/{rounds}: {}", round + 1, setup.name());
                let started = Instant::now();
                let mut running = self.start(setup, round)?;
                // Loading, attaching and the previous setup's teardown leave the kernel deferred
                // work (freeing maps and programs) for a few seconds; measured loops started at
                // once ran up to 15% slower. Every setup, `none` included, gets the same pause.
                thread::sleep(SETTLE);
                let r = self.measure(setup, running.as_ref())?;
                let out = match running.as_mut() {
                    Some(run) => Some(run.stop()?),
                    None => None,
                };
                let peer_out = out.as_deref().filter(|_| setup == Setup::Peer);
                outcome.add(setup, round, r, peer_out);
                eprintln!("bench:   done in {:.1}s", started.elapsed().as_secs_f64());
            }
        }
        Ok(outcome)
    }

    /// Starts a setup and waits until its programs are attached (None for `none`).
    fn start(&self, setup: Setup, round: usize) -> Result<Option<Running>> {
        let log = self
            .log_dir
            .join(format!("{}-round{}.log", setup.name(), round + 1));
        let mut cmd = self.pinned_setup();
        match setup {
            Setup::None => return Ok(None),
            Setup::Floor => {
                cmd.arg(&self.floor_bin);
            }
            Setup::Credwatch => {
                cmd.arg(&self.credwatch_bin)
                    .args([
                        "agent",
                        "--no-default-watch",
                        // Pinned programs would go on costing in the other setups' rounds.
                        "--pin-dir",
                        "none",
                        "--listen",
                        "127.0.0.1:0",
                        "--watch",
                    ])
                    .arg(&self.cred_dir);
            }
            Setup::Peer => {
                // The prefix with its trailing slash, so that "creds2/" does not match "creds/".
                let prefix = format!("{}/", self.cred_dir.display());
                cmd.arg("bpftrace")
                    .arg(&self.peer_script)
                    .arg(&prefix)
                    .arg(prefix.len().to_string());
            }
        }
        let mut run = Running::spawn(setup, cmd, log)?;
        match setup {
            Setup::None => unreachable!(),
            Setup::Floor => {
                run.wait_line(|l| l.contains("floor programs attached"))?;
                run.prog = Some(aya_program(run.pid(), "floor_sys_exit_openat")?);
            }
            Setup::Credwatch => {
                let line = run.wait_line(|l| l.starts_with("credwatch: serving http://"))?;
                let port = line
                    .rsplit(':')
                    .next()
                    .and_then(|s| s.trim_end_matches("/metrics").parse::<u16>().ok())
                    .with_context(|| format!("no port in {line:?}"))?;
                run.port = Some(port);
                let deadline = Instant::now() + START_TIMEOUT;
                while http_status(port, "/readyz")? != 200 {
                    run.check_alive()?;
                    ensure!(
                        Instant::now() < deadline,
                        "credwatch not ready after {START_TIMEOUT:?}; see {}",
                        run.log.display()
                    );
                    thread::sleep(Duration::from_millis(50));
                }
                run.prog = Some(aya_program(run.pid(), "sys_exit_openat")?);
            }
            Setup::Peer => {
                // bpftrace prints "Attaching" before it attaches: wait until the kernel lists the
                // attachment, then a little more for its other set-up work to settle.
                run.wait_line(|l| l.starts_with("Attaching"))?;
                let deadline = Instant::now() + START_TIMEOUT;
                loop {
                    if let Some(id) = perf_tracepoint_program(run.pid(), "sys_enter_openat")? {
                        run.prog = Some(id);
                        break;
                    }
                    run.check_alive()?;
                    ensure!(
                        Instant::now() < deadline,
                        "bpftrace not attached after {START_TIMEOUT:?}; see {}",
                        run.log.display()
                    );
                    thread::sleep(Duration::from_millis(50));
                }
                thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(Some(run))
    }

    /// The measured loops and the workload under one running setup.
    fn measure(&self, setup: Setup, run: Option<&Running>) -> Result<RoundResult> {
        let prog = run.and_then(|r| r.prog);
        let mut values = Vec::new();
        let plain = self.plain_file.as_os_str();
        let cred_file = self.cred_file.as_os_str();

        // Wall clock, with the kernel's BPF accounting off.
        BpfStats::set(false)?;
        let l = self.bench_loop(&["open".as_ref(), plain])?;
        values.push((Metric::OpenPlain, l.ns_per_op));
        let l = self.bench_loop(&["open-expanded".as_ref(), plain])?;
        values.push((Metric::OpenPlainExpanded, l.ns_per_op));

        let port = run.and_then(|r| r.port);
        let reads_before = port.map(|p| self.cred_reads(p)).transpose()?;
        let cred = self.bench_loop(&["open".as_ref(), cred_file])?;
        values.push((Metric::OpenCred, cred.ns_per_op));
        let cred_opens = cred.timed + cred.warmup;
        let exact = match (port, reads_before) {
            (Some(p), Some(b)) => Some((self.cred_reads(p)?.saturating_sub(b), cred_opens)),
            _ => None,
        };
        if setup == Setup::Credwatch {
            ensure!(exact.is_some(), "credwatch has no /metrics port");
        }

        let getppid = self.bench_loop(&["getppid".as_ref()])?;
        values.push((Metric::Getppid, getppid.ns_per_op));

        let mut tars: Vec<f64> = (0..TAR_RUNS).map(|_| self.tar()).collect::<Result<_>>()?;
        values.push((Metric::Tar, median(&mut tars)));

        // The kernel's own accounting: BPF ns per run of the openat program, in loops of their own.
        if let Some(id) = prog {
            BpfStats::set(true)?;
            for (metric, kind, file) in [
                (Metric::BpfPlain, "open", plain),
                (Metric::BpfPlainExpanded, "open-expanded", plain),
                (Metric::BpfCred, "open", cred_file),
            ] {
                let before = prog_stats(id)?;
                self.bench_loop(&[kind.as_ref(), file])?;
                values.push((metric, prog_stats(id)?.ns_per_run_since(before)?));
            }
            BpfStats::set(false)?;
        }
        Ok(RoundResult {
            values,
            exact,
            cred_opens,
        })
    }

    /// `taskset` onto the setups' CPUs, or no pinning.
    fn pinned_setup(&self) -> Command {
        pinned(self.setup_cpus.as_deref())
    }

    fn pinned_loop(&self) -> Command {
        pinned(self.loop_cpus.as_deref())
    }

    /// Runs credwatch-bench-loop with `args` then the iteration count; parses its JSON line.
    fn bench_loop(&self, args: &[&std::ffi::OsStr]) -> Result<LoopResult> {
        let mut cmd = self.pinned_loop();
        cmd.arg(&self.loop_bin)
            .args(args)
            .arg(self.iterations.to_string());
        run_loop(&mut cmd)
    }

    /// Archives the tree to a pipe (tar skips reading files when writing to /dev/null) and
    /// returns the wall-clock ms.
    fn tar(&self) -> Result<f64> {
        let mut cmd = self.pinned_loop();
        cmd.arg("tar")
            .arg("-cf")
            .arg(&self.archive)
            .arg("-C")
            .arg(&self.tree)
            .arg(".");
        let t = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(ms)
    }

    /// credwatch_credential_reads_total of the bench credential, summed over readers.
    fn cred_reads(&self, port: u16) -> Result<u64> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .context("cannot run curl")?;
        ensure!(out.status.success(), "GET /metrics failed: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let volume = format!("volume=\"{}\"", self.cred_dir.display());
        let mut total = None;
        for line in text.lines() {
            if line.starts_with("credwatch_credential_reads_total{")
                && line.contains(&volume)
                && line.contains("file=\"token\"")
            {
                let v: u64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("bad sample {line:?}"))?;
                *total.get_or_insert(0) += v;
            }
        }
        total.with_context(|| {
            format!(
                "/metrics has no credwatch_credential_reads_total for {}",
                self.cred_file.display()
            )
        })
    }
}

pub(crate) struct LoopResult {
    pub(crate) ns_per_op: f64,
    pub(crate) timed: u64,
    pub(crate) warmup: u64,
}

/// Runs a measured loop that prints `{"ns_per_op": F, "timed": N, "warmup": W}` and parses it.
pub(crate) fn run_loop(cmd: &mut Command) -> Result<LoopResult> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bad output from {cmd:?}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let field = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    Ok(LoopResult {
        ns_per_op: field("ns_per_op")?,
        timed: field("timed")? as u64,
        warmup: field("warmup")? as u64,
    })
}

/// The untimed iterations credwatch-bench-loop makes before timing (mirrors its `warmup`).
fn loop_warmup(n: u64) -> u64 {
    (n / 20).clamp(1, 10_000)
}

pub(crate) fn pinned(cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]);
            c
        }
        None => Command::new("env"),
    }
}

/// A started setup. Dropping it stops the process, so that no error path leaves programs attached.
struct Running {
    setup: Setup,
    child: Option<Child>,
    lines: Receiver<String>,
    log: PathBuf,
    /// The openat program whose kernel run time is accounted.
    prog: Option<u32>,
    /// credwatch's /metrics port.
    port: Option<u16>,
}

impl Running {
    fn spawn(setup: Setup, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        // stdout is read on a thread to the end: a setup never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            setup,
            child: Some(child),
            lines,
            log,
            prog: None,
            port: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_line(&self, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} did not start within {START_TIMEOUT:?}; see {}",
                        self.setup.name(),
                        self.log.display()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "{} exited before it was ready: {}",
                    self.setup.name(),
                    tail(&self.log)
                ),
            }
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "{} exited ({status}): {}",
                self.setup.name(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it lingers; returns what it printed on stdout after starting.
    fn stop(&mut self) -> Result<Vec<String>> {
        let Some(mut child) = self.child.take() else {
            return Ok(Vec::new());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let s = child.wait()?;
                eprintln!(
                    "bench: {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed",
                    self.setup.name()
                );
                break s;
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF; give it a moment to pass the last lines on.
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            out.push(l);
        }
        // Killed by our SIGTERM is a normal end too.
        ensure!(
            status.success() || status.code().is_none(),
            "{} failed on stop ({status}): {}",
            self.setup.name(),
            tail(&self.log)
        );
        Ok(out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Turns on kernel.bpf_stats_enabled; puts the previous value back when dropped.
pub(crate) struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn restore_on_drop() -> Self {
        BpfStats(read_trimmed(BPF_STATS))
    }

    pub(crate) fn set(on: bool) -> Result<()> {
        std::fs::write(BPF_STATS, if on { "1" } else { "0" })
            .with_context(|| format!("writing {BPF_STATS} (root needed)"))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = std::fs::write(BPF_STATS, &self.0);
        }
    }
}

/// A tmpfs mounted for the bench, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self> {
        crate::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("credwatch-bench")
                .arg(dir),
        )?;
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A temporary directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("credwatch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
struct ProgStats {
    run_time_ns: u64,
    run_cnt: u64,
}

impl ProgStats {
    fn ns_per_run_since(self, before: ProgStats) -> Result<f64> {
        let runs = self.run_cnt.saturating_sub(before.run_cnt);
        ensure!(
            runs > 0,
            "the program did not run during the loop (is kernel.bpf_stats_enabled on?)"
        );
        Ok(self.run_time_ns.saturating_sub(before.run_time_ns) as f64 / runs as f64)
    }
}

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(args)
        .arg("--json")
        .output()
        .context("cannot run bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bad JSON from bpftool {}", args.join(" ")))
}

fn prog_stats(id: u32) -> Result<ProgStats> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    // Without kernel.bpf_stats_enabled the fields are absent: that counts as zero runs.
    let field = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(ProgStats {
        run_time_ns: field("run_time_ns"),
        run_cnt: field("run_cnt"),
    })
}

/// The id of the program `name` that process `pid` has attached (aya attaches through BPF links,
/// which /proc/PID/fdinfo lists with their prog_id; `bpftool perf` does not show them).
fn aya_program(pid: u32, name: &str) -> Result<u32> {
    let mut ids = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        if !info.lines().any(|l| l.starts_with("link_type:")) {
            continue;
        }
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        ids.extend(id);
    }
    ids.sort_unstable();
    ids.dedup();
    // The kernel keeps 15 characters of a name; bpftool shows the full one when BTF has it.
    // With only truncated names, the lowest id is the first attached: the openat program.
    let mut truncated = None;
    let mut seen = Vec::new();
    for &id in &ids {
        let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        let got = v["name"].as_str().unwrap_or_default().to_owned();
        if got == name {
            return Ok(id);
        }
        if got.len() == 15 && name.starts_with(&got) && truncated.is_none() {
            truncated = Some(id);
        }
        seen.push(format!("{id}:{got}"));
    }
    truncated.with_context(|| {
        format!(
            "process {pid} has no attached program {name} (found: {})",
            seen.join(", ")
        )
    })
}

/// The program process `pid` attached to tracepoint `tp` with perf_event_open (as bpftrace does).
fn perf_tracepoint_program(pid: u32, tp: &str) -> Result<Option<u32>> {
    let v = bpftool_json(&["perf", "show"])?;
    Ok(v.as_array().into_iter().flatten().find_map(|e| {
        (e["pid"].as_u64() == Some(pid.into()) && e["tracepoint"].as_str() == Some(tp))
            .then(|| e["prog_id"].as_u64().map(|id| id as u32))
            .flatten()
    }))
}

/// The HTTP status of GET `path` on the agent (0 while nothing listens).
fn http_status(port: u16, path: &str) -> Result<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .context("cannot run curl")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// `@name: N` from bpftrace's map dump at exit.
fn parse_bpftrace_count(lines: &[String], name: &str) -> Option<u64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The last lines of a setup's log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    format!("{} (log {})", lines[start..].join(" | "), log.display())
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[allow(clippy::too_many_lines)] // the report reads best as one template
fn render(
    header: &str,
    results: &BTreeMap<(Metric, Setup), Vec<f64>>,
    exact: &str,
    notes: &[String],
) -> String {
    let med = |m: Metric, s: Setup| results.get(&(m, s)).map(|v| median(&mut v.clone()));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fmt_ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.3}x"));
    // The median of a/b within each round: both setups ran minutes apart at most, so the machine's
    // drift between rounds (other tenants) cancels out of every ratio.
    let paired = |m: Metric, a: Setup, b: Setup| -> Option<f64> {
        let (a, b) = (results.get(&(m, a))?, results.get(&(m, b))?);
        let mut r: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        (!r.is_empty()).then(|| median(&mut r))
    };

    let mut out = String::new();
    let _ = writeln!(out, "# credwatch benchmark\n\n{header}\n");

    let _ = writeln!(
        out,
        "## Wall clock (median over rounds; ratio vs none; last column: median of the per-round \
         ratios)\n"
    );
    let _ = writeln!(
        out,
        "| loop | none | floor | credwatch | peer | credwatch/floor |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for m in [
        Metric::OpenPlain,
        Metric::OpenPlainExpanded,
        Metric::OpenCred,
        Metric::Getppid,
        Metric::Tar,
    ] {
        let none = med(m, Setup::None);
        let mut row = format!("| {} |", m.label());
        for s in SETUPS {
            let v = med(m, s);
            let cell = match (v, s) {
                (None, _) => "-".to_owned(),
                (Some(v), Setup::None) => format!("{v:.1}"),
                (Some(v), _) => format!("{v:.1} ({})", fmt_ratio(ratio(Some(v), none))),
            };
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(
            out,
            "{row} {} |",
            fmt_ratio(paired(m, Setup::Credwatch, Setup::Floor))
        );
    }

    let _ = writeln!(
        out,
        "\n## Kernel BPF run time of the openat program (bpf_stats; median ns per run)\n"
    );
    let _ = writeln!(
        out,
        "Measured in loops of their own with kernel.bpf_stats_enabled on (it is off for the \
         wall-clock numbers above); the accounting itself adds its two clock reads to every run.\n"
    );
    let _ = writeln!(
        out,
        "| loop | floor | credwatch | peer | credwatch/peer (median of per-round ratios) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for m in [Metric::BpfPlain, Metric::BpfPlainExpanded, Metric::BpfCred] {
        let cell = |s| med(m, s).map_or("-".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            m.label(),
            cell(Setup::Floor),
            cell(Setup::Credwatch),
            cell(Setup::Peer),
            fmt_ratio(paired(m, Setup::Credwatch, Setup::Peer))
        );
    }

    let _ = writeln!(out, "\n## Targets\n");
    // The targets. The realistic workload's 2% is read as above the floor, like the loop's
    // 5%: any syscall-tracepoint design pays the floor (the table shows it against none too).
    let targets = [
        (
            "credwatch BPF ns per non-credential open <= 0.7x peer's",
            paired(Metric::BpfPlain, Setup::Credwatch, Setup::Peer),
            0.7,
        ),
        (
            "credwatch BPF ns per non-credential open, expanded fd table <= 0.7x peer's",
            paired(Metric::BpfPlainExpanded, Setup::Credwatch, Setup::Peer),
            0.7,
        ),
        (
            "credwatch wall clock, non-credential open <= 1.05x floor's",
            paired(Metric::OpenPlain, Setup::Credwatch, Setup::Floor),
            1.05,
        ),
        (
            "credwatch wall clock, non-credential open, expanded fd table <= 1.05x floor's",
            paired(Metric::OpenPlainExpanded, Setup::Credwatch, Setup::Floor),
            1.05,
        ),
        (
            "realistic workload (tar) with credwatch <= 1.02x floor's",
            paired(Metric::Tar, Setup::Credwatch, Setup::Floor),
            1.02,
        ),
    ];
    for (what, got, limit) in targets {
        let mark = match got {
            Some(r) if r <= limit => "PASS",
            Some(_) => "MISS",
            None => "n/a",
        };
        let _ = writeln!(out, "- [{mark}] {what}: {}", fmt_ratio(got));
    }
    let _ = writeln!(out, "\n{exact}");
    for n in notes {
        let _ = writeln!(out, "\nnote: {n}");
    }

    // Every round's value, to judge the noise behind each median.
    let _ = writeln!(out, "\n## Per-round values\n");
    let _ = writeln!(out, "| metric | setup | values (round order) |");
    let _ = writeln!(out, "|---|---|---|");
    for ((m, s), v) in results {
        let vals: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            m.label(),
            s.name(),
            vals.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_benchmark_lines_are_read_by_kernel_and_hook() {
        let text = "\
BENCH linux-image-6.1.0-57-cloud-amd64 KERNEL 6.1.0-57-cloud-amd64 hook=fexit walk=none ns_per_open=314.9 runs_per_open=1.00 wall_ns_per_open=10571.9 base_wall_ns_per_open=10034.4 floor_ns_per_open=290.9 floor_wall_ns_per_open=10371.9
BENCH linux-image-6.1.0-57-cloud-amd64 KERNEL 6.1.0-57-cloud-amd64 hook=tracepoints walk=helpers ns_per_open=394.4 runs_per_open=1.00 wall_ns_per_open=10877.2 base_wall_ns_per_open=10033.8 floor_ns_per_open=314.4 floor_wall_ns_per_open=10577.2 sock_ns_per_op=20400 base_sock_ns_per_op=20000 file_sock_ns_per_op=20100 ppid_ns_per_op=420 base_ppid_ns_per_op=330 tls_ns_per_op=110000 base_tls_ns_per_op=100000 tls_counted=5355 tls_made=5355 tls_probes=internal py_tls_ns_per_op=1030000 base_py_tls_ns_per_op=1000000 py_tls_counted=2100 py_tls_made=2100
";
        let rows = kernel_rows(text).unwrap();
        let k = &rows["6.1.0-57-cloud-amd64"];
        assert_eq!(k["fexit"].bpf, 314.9);
        assert!((k["fexit"].added() - 537.5).abs() < 1e-6);
        assert_eq!(k["tracepoints"].walk, "helpers");
        assert_eq!(k["fexit"].sock, None);
        assert!(
            floor_table(&rows).contains("| 6.1.0-57-cloud-amd64 | 24 | 200 | 80 | 300 | 0.30 |")
        );
        assert_eq!(k["tracepoints"].sock, Some((20400.0, 20000.0)));
        assert!(socket_table(&rows).contains(
            "| 6.1.0-57-cloud-amd64 | tracepoints | 20000 | 20400 | 1.020 | 20100 (1.015) | 330 / 420 (1.273) |"
        ));
        assert!(tls_table(&rows).contains(
            "| 6.1.0-57-cloud-amd64 | tracepoints | internal | 100000 | 110000 | 1.100 | 5355 / 5355 |"
        ));
        assert!(tls_table(&rows).contains(
            "| 6.1.0-57-cloud-amd64 | tracepoints | internal | 1000000 | 1030000 | 1.030 | 2100 / 2100 |"
        ));
        let bad = "BENCH x KERNEL y hook=fexit walk=none ns_per_open=1 wall_ns_per_open=2\n";
        assert!(
            kernel_rows(bad).is_err(),
            "no baseline: an error, not a row"
        );
    }
}
