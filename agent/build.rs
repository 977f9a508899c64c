//! Builds the eBPF object (crate `credwatch-ebpf`) with aya-build; `AYA_BUILD_SKIP=1` skips it for
//! lint-only jobs. The eBPF toolchain is pinned to the nightly whose LLVM matches bpf-linker's
//! (`cargo xtask setup` installs both).
use std::path::PathBuf;

use aya_build::{Package, Toolchain};

/// Keep in sync with `EBPF_TOOLCHAIN` in `xtask/src/main.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../ebpf").canonicalize()?;
    let common_dir = ebpf_dir.join("common");
    // aya-build watches the eBPF crate's directory; the shared types live below it too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [Package {
            name: "credwatch-ebpf",
            root_dir: ebpf_dir.to_str().expect("UTF-8 path"),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
