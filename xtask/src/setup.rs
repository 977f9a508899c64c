//! Idempotent setup of a fresh Debian machine: everything the build and tests need.
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::run as sh;

/// The nightly that builds the eBPF crate; its LLVM (22) must match bpf-linker's.
/// Keep in sync with `agent/build.rs`.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// To build bpf-linker against LLVM 22.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// The end-to-end tier signs tokens and makes certificates with the openssl CLI.
const TEST_PACKAGES: &[&str] = &["openssl"];
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
    if !is_root() {
        bail!("missing apt packages {missing:?}: run `cargo xtask setup` as root, or install them");
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-qq"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
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
        .is_some_and(|s| s.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)));
    if !has_toolchain {
        eprintln!("setup: rustup toolchain install {EBPF_TOOLCHAIN}");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
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
        EBPF_TOOLCHAIN,
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
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

    if is_root() {
        mount_if_missing("/sys/kernel/tracing", "tracefs")?;
        mount_if_missing("/sys/fs/bpf", "bpf")?;
    }
    Ok(())
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

/// kubernetes-validate (PyPI), to check deploy/ against the Kubernetes schema offline. Run as
/// `python3 -m kubernetes_validate`: a pyenv Python may not have a shim for the script yet.
pub fn deploy_tools() -> Result<()> {
    if output(Command::new("python3").args(["-m", "kubernetes_validate", "--version"])).is_none() {
        eprintln!("setup: pip install kubernetes-validate");
        sh(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "kubernetes-validate==1.37.0",
        ]))
        .context("installing kubernetes-validate")?;
    }
    Ok(())
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
    sh(Command::new("mount").args(["-t", fstype, fstype, path]))
}
