//! What needs root, and how it gets it. As root (CI), commands run as they are. From a normal
//! account, only the steps that need root go through `sudo -E` (which asks for a password when
//! it must), as aya-template's test runner does: apt, mounts, the agent, the test binaries and the
//! kernel tier. cargo, rustup and pip run as the user, so `target/` and `~/.cargo` stay theirs.
use std::{ffi::OsStr, path::Path, process::Command};

use anyhow::{bail, Result};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has_sudo() -> bool {
    Command::new("sudo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether steps that need root can run here: as root, or through sudo.
pub fn available() -> bool {
    is_root() || has_sudo()
}

/// A command running `program` as root: itself when root, else through `sudo -E` (the
/// environment, `CREDWATCH_*` included, goes along).
pub fn command(program: impl AsRef<OsStr>) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if !has_sudo() {
        bail!(
            "{} needs root: run this task as root, or install sudo",
            program.as_ref().to_string_lossy()
        );
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("-E").arg(program);
    Ok(cmd)
}

/// `cargo test --config` that runs the test binaries as root (nothing when already root, or
/// when sudo is missing: the root tiers then skip themselves and say so).
pub fn test_runner_config() -> Option<&'static str> {
    (!is_root() && has_sudo()).then_some(r#"target."cfg(all())".runner = "sudo -E""#)
}

/// Gives what a root step wrote below `path` back to the user who ran the task.
pub fn give_back(path: &Path) -> Result<()> {
    if is_root() || !path.exists() {
        return Ok(());
    }
    // SAFETY: getuid/getgid have no preconditions.
    let owner = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
    crate::run(command("chown")?.arg("-R").arg(owner).arg(path))
}
