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
    let state = Arc::new(State::default());
    let scan = inventory::scan(&specs);
    inventory::apply(&state, &scan);
    let creds = state.credentials.lock().expect("credentials lock");
    if json {
        let list: Vec<_> = creds.iter().collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = creds
        .iter()
        .map(|c| {
            [
                c.kind.as_str().to_owned(),
                c.source.clone(),
                c.generation.to_string(),
                c.volume.clone(),
                c.file.clone(),
            ]
        })
        .collect();
    let head = ["KIND", "SOURCE", "GEN", "VOLUME", "FILE"];
    let w: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
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
    let offsets =
        credwatch::btf::kernel_offsets(std::path::Path::new(credwatch::btf::VMLINUX_BTF))?;
    let mut ebpf = probes::load(&offsets, std::process::id())?;
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
