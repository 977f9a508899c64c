//! Project tasks: `cargo xtask <setup|build|run|test|bench|lint>`.
//!
//! Every task starts with `setup`, which is idempotent: it installs only what is missing.
mod bench;
mod bench_auth;
mod dashboards;
mod deploy;
mod layers;
mod root;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "credwatch's build, run, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, the pinned nightly with rust-src,
    /// bpf-linker) and mount tracefs and bpffs; skips whatever is already there.
    Setup,
    /// Build the agent (release) with its eBPF object.
    Build,
    /// Set up, build, and run the agent on this host with the built-in defaults
    /// (arguments after `--` go to `credwatch agent`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the unit tests, the end-to-end tier on the real kernel (needs root;
    /// with CREDWATCH_E2E=required a skipped end-to-end tier is a failure) and a bounded fuzz run
    /// of the credential parsers (CREDWATCH_FUZZ_SECONDS, default 30; 0 skips it).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write deploy/manifests and deploy/rules/credwatch.rules.yaml from the Helm chart
    /// (`test` checks that they are equal to its render).
    Render,
    /// Only the checks of deploy/ and dashboards/ that `test` runs: helm lint and template, the
    /// Kubernetes schema, rendered files equal to the chart, promtool, the dashboards' schema.
    CheckDeploy,
    /// Measure the agent's overhead against nothing, the empty-program floor and a bpftrace peer.
    Bench(bench::Args),
    /// cargo fmt --check, clippy with warnings as errors (functions over 80 lines included), and
    /// the layering of agent/src (each module imports only the modules below it).
    Lint,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(true)
        }
        Task::Run { args } => {
            setup::run()?;
            build(true)?;
            let bin = root.join("target/release/credwatch");
            eprintln!("xtask: running {} agent {}", bin.display(), args.join(" "));
            eprintln!("xtask: every first read of a credential by a process is logged below; Ctrl-C stops");
            run(root::command(&bin)?.arg("agent").args(&args))
        }
        Task::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Task::Render => deploy::render(),
        Task::CheckDeploy => deploy::check(),
        Task::Bench(args) if std::env::var_os(BUILT).is_some() => bench::run(&root, &args),
        Task::Bench(args) if root::is_root() => {
            setup::run()?;
            setup::bench_tools()?;
            build(true)?;
            bench::run(&root, &args)
        }
        Task::Bench(_) => {
            setup::run()?;
            setup::bench_tools()?;
            build(true)?;
            // The bench itself mounts, loads programs and reads BPF statistics: all of it as root.
            let xtask = std::env::current_exe()?;
            let args: Vec<String> = std::env::args().skip(1).collect();
            let result = run(root::command(xtask)?.args(args).env(BUILT, "1"));
            root::give_back(&root.join("target/bench"))?;
            result
        }
        Task::Lint => {
            setup::run()?;
            run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
            run(Command::new("cargo").args([
                "clippy",
                "--all-targets",
                "--",
                "-D",
                "warnings",
                "-W",
                "clippy::too_many_lines",
            ]))?;
            layers::check(&root)
        }
    }
}

/// Set for the root half of `bench`: setup and build are done.
const BUILT: &str = "CREDWATCH_XTASK_BUILT";

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command with inherited output; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--package",
        "credwatch",
        "--package",
        "credwatch-e2e",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    // The end-to-end tier runs the real agent binary; build it (with its eBPF object) first.
    build(false)?;
    setup::test_tools()?;
    let bin = project_root().join("target/debug/credwatch");
    let mut cmd = Command::new("cargo");
    cmd.arg("test");
    // Test binaries load eBPF programs and make cgroups: as root (cargo itself stays the user).
    if let Some(runner) = root::test_runner_config() {
        cmd.args(["--config", runner]);
    }
    let (mut passed, failed) = cargo_test(
        cmd.args(["--workspace", "--exclude", "credwatch-ebpf"])
            .args(args)
            .env("CREDWATCH_BIN", bin),
    )?;
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    if args.is_empty() {
        passed += kernel_tier()?;
        deploy::check()?;
        fuzz()?;
    }
    // One closing line for the whole run (each test binary prints its own, some with 0 tests).
    println!("xtask: {passed} passed, {failed} failed");
    Ok(())
}

/// The kernel-compatibility tier (tests/kernels/run.sh): the agent just built, booted with Debian's
/// 6.1 and 6.12 kernels under QEMU, must attach, take each kernel's walk and count exactly. Needs
/// root (it installs QEMU and fetches the kernels with apt). Returns the runs that passed.
fn kernel_tier() -> Result<u64> {
    if !root::available() {
        if std::env::var("CREDWATCH_E2E").as_deref() == Ok("required") {
            bail!("the kernel tier needs root (or sudo) and CREDWATCH_E2E=required");
        }
        eprintln!("xtask: kernel tier skipped: needs root (run as root, or install sudo)");
        return Ok(0);
    }
    eprintln!("xtask: kernel tier: booting Debian's 6.1 and 6.12 kernels under QEMU");
    let root = project_root();
    let out = root::command("bash")?
        .arg(root.join("tests/kernels/run.sh"))
        .arg(root.join("target/debug"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run tests/kernels/run.sh")?;
    root::give_back(&root.join("target/kernels"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let passed = text
        .lines()
        .filter(|l| l.ends_with(']') && l.contains(" PASS ["))
        .count();
    let failed = text.lines().filter(|l| l.contains(" FAIL")).count();
    if !out.status.success() || failed > 0 || passed == 0 {
        bail!(
            "kernel tier failed ({passed} passed, {failed} failed): {}",
            out.status
        );
    }
    Ok(passed as u64)
}

/// Runs `cargo test`, passing its output through, and adds up its "test result:" lines.
fn cargo_test(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += num(" passed");
            failed += num(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((passed, failed))
}

/// A bounded libFuzzer run of the JWT/PEM parsing (agent/fuzz), from the committed seeds.
fn fuzz() -> Result<()> {
    let secs: u64 = std::env::var("CREDWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    if secs == 0 {
        eprintln!("xtask: fuzzing skipped (CREDWATCH_FUZZ_SECONDS=0)");
        return Ok(());
    }
    setup::fuzz_tools()?;
    let agent = project_root().join("agent");
    let corpus = agent.join("fuzz/corpus/parse_credential");
    std::fs::create_dir_all(&corpus)?;
    eprintln!("xtask: fuzzing the credential parsers for {secs} s");
    run(Command::new("cargo")
        .current_dir(&agent)
        .args([
            &format!("+{}", setup::ebpf_toolchain()),
            "fuzz",
            "run",
            "parse_credential",
        ])
        .arg(&corpus)
        .arg(agent.join("fuzz/seeds/parse_credential"))
        .args(["--", &format!("-max_total_time={secs}")]))
}
