//! Builds the eBPF objects (crate `credwatch-ebpf`: the agent's programs and the benchmark's floor)
//! with aya-build; `AYA_BUILD_SKIP=1` skips it for lint-only jobs. The eBPF toolchain is the one
//! `ebpf/rust-toolchain.toml` names, whose LLVM matches bpf-linker's (`cargo xtask setup` installs
//! both).
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../ebpf").canonicalize()?;
    let common_dir = ebpf_dir.join("common");
    // aya-build watches the eBPF crate's directory; the shared types live below it too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    let toml = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .with_context(|| format!("no `channel = ` in {}", toolchain_file.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "credwatch-ebpf",
            root_dir: ebpf_dir.to_str().expect("UTF-8 path"),
            ..Default::default()
        }],
        Toolchain::Custom(channel),
    )
}
