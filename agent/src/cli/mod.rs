//! The `credwatch` command line: `agent` wires the stages together, `inventory` lists what is on
//! disk, `check` says what this kernel allows.
pub mod agent;
pub mod check;
pub mod inventory;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::{AgentFlags, Config, Flags, KernelFlags},
    sensors::auth::catalog::Catalog,
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
    /// Report what the kernel and permissions allow (BTF, tracefs, bpffs, each probe), the auth
    /// endpoint catalog as resolved now and the TLS libraries in use; exits non-zero if the agent
    /// cannot run.
    Check {
        #[command(flatten)]
        flags: Flags,
        #[command(flatten)]
        kernel: KernelFlags,
    },
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

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Agent(flags) => run_agent(flags),
        Command::Inventory { flags, json } => inventory::run(flags, json),
        Command::Check { flags, kernel } => {
            let (catalog, cfg) = match catalog_of(flags, kernel) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("credwatch: error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            return if check::print(&check::run(&catalog, &cfg)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The endpoint catalog and configuration the agent would use with these flags.
fn catalog_of(flags: Flags, kernel: KernelFlags) -> anyhow::Result<(Catalog, Config)> {
    let cfg = Config::from_agent_flags(&AgentFlags {
        common: flags,
        kernel,
        ..Default::default()
    })?;
    Ok((Catalog::from_config(&cfg)?, cfg))
}

fn run_agent(flags: AgentFlags) -> anyhow::Result<()> {
    let cfg = Config::from_agent_flags(&flags)?;
    if flags.unpin {
        return agent::unpin(&cfg);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(agent::run(cfg))
}
