use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use credwatch::{
    check,
    config::{AgentFlags, Config, Flags},
    inventory, probes,
    state::State,
    sys,
};

/// credwatch: which processes read which credential files, as Prometheus metrics.
///
/// eBPF probes count every open-for-read of the credential files found under the watch paths,
/// in the kernel, by reader (container or host process), and the agent serves the counts on
/// /metrics. No credential value is ever logged, exported or stored.
#[derive(Parser)]
#[command(name = "credwatch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector: attach the probes, watch the credentials, serve /metrics.
    ///
    /// Example: credwatch agent --listen 127.0.0.1:9477 --watch /etc/myapp/secrets
    Agent(AgentFlags),
    /// List the credentials found on this host without loading eBPF.
    Inventory {
        #[command(flatten)]
        flags: Flags,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Report what the kernel and permissions allow (BTF, tracefs, bpffs, each probe); exits
    /// non-zero if the agent cannot run.
    Check,
    /// Attach empty programs to the file probes' tracepoints until interrupted (benchmark floor).
    #[command(hide = true)]
    BenchFloor,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CREDWATCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Agent(flags) => run_agent(flags),
        Command::Inventory { flags, json } => run_inventory(flags, json),
        Command::Check => {
            return if check::print(&check::run()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::BenchFloor => bench_floor(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(flags: AgentFlags) -> anyhow::Result<()> {
    let cfg = Config::from_agent_flags(&flags)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(credwatch::agent::run(cfg))
}

fn run_inventory(flags: Flags, json: bool) -> anyhow::Result<()> {
    let cfg = Config::from_agent_flags(&AgentFlags {
        common: flags,
        ..Default::default()
    })?;
    let (specs, errors) = inventory::specs(&cfg.watch);
    if !errors.is_empty() {
        anyhow::bail!("bad watch entries: {}", errors.join("; "));
    }
    let sources = inventory::Sources {
        specs,
        kubelet_root: Some(cfg.kubelet_root.clone()),
        sink_volumes: cfg.credential_sink_volumes.clone(),
        grace: cfg.series_grace,
    };
    let state = Arc::new(State::default());
    let scan = inventory::scan_all(&sources, &mut credwatch::kubelet::Scanner::default());
    for p in &scan.problems {
        eprintln!("note: {p}");
    }
    inventory::apply(&state, &scan, sources.grace);
    let creds = state.credentials.lock().expect("credentials lock");
    if json {
        let list: Vec<_> = creds.iter().collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let now = sys::unix_now();
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![[
        "POD", "VOLUME", "FILE", "KIND", "SOURCE", "GEN", "ISSUED", "EXPIRY",
    ]
    .map(String::from)
    .to_vec()];
    for c in creds.iter() {
        rows.push(vec![
            if c.pod.is_empty() {
                dash()
            } else {
                c.pod.clone()
            },
            c.volume.clone(),
            c.file.clone(),
            c.kind.as_str().to_owned(),
            c.source.clone(),
            c.generation.to_string(),
            format!("{} ago", sys::human_duration(now - c.issued())),
            c.parsed
                .expiry
                .map(|e| sys::expiry_phrase(e, now))
                .unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for m in &scan.missing {
        eprintln!("note: watch path {m} does not exist");
    }
    eprintln!("{} credentials", creds.iter().count());
    Ok(())
}

fn bench_floor() -> anyhow::Result<()> {
    if let Some(why) = sys::missing_privileges() {
        anyhow::bail!("{why}");
    }
    sys::ensure_mounted(sys::TRACEFS, "tracefs")?;
    let kernel = credwatch::btf::probe_btf(std::path::Path::new(credwatch::btf::VMLINUX_BTF))?;
    let mut ebpf = probes::load(&kernel, std::process::id())?;
    for s in probes::attach(&mut ebpf, &probes::FLOOR_PROBES) {
        if let Some(e) = s.error {
            anyhow::bail!("{}: {e}", s.probe);
        }
    }
    println!("credwatch: floor programs attached");
    // Block until SIGINT/SIGTERM ends the process; the programs detach with it.
    loop {
        std::thread::park();
    }
}
