//! `cargo xtask bench`: see the README's Benchmarks section.
use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_root: &Path, _args: &Args) -> Result<()> {
    anyhow::bail!("the benchmark is being written")
}
