//! `cargo xtask lint`'s layering check: the agent's folders are the pipeline's stages, and a
//! module may import only the modules listed after it in `LAYERS` (so no import circles, and no
//! stage reaching back up). Also: the eBPF crates never depend on the agent, and the shared types
//! stay `no_std`. docs/architecture.md draws the same walls.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// The top-level modules of `agent/src`, highest first.
pub const LAYERS: &[&str] = &[
    "cli",
    "http",
    "export",
    "sensors",
    "state",
    "inventory",
    "identity",
    "kernel",
    "config",
    "sys",
];

pub fn check(root: &Path) -> Result<()> {
    let src = root.join("agent/src");
    let mut problems = Vec::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("below agent/src");
        let Some(own) = top_module(rel) else {
            continue; // lib.rs, main.rs: the crate root may name every module
        };
        let Some(own_rank) = rank(&own) else {
            problems.push(format!(
                "agent/src/{}: module `{own}` is not in xtask's LAYERS (add it where it belongs)",
                rel.display()
            ));
            continue;
        };
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for used in crate_imports(&text) {
            match rank(&used) {
                Some(r) if r > own_rank || used == own => {}
                Some(_) => problems.push(format!(
                    "agent/src/{}: `{own}` imports `{used}`, which is not below it",
                    rel.display()
                )),
                None => problems.push(format!(
                    "agent/src/{}: imports `crate::{used}`, which is not in LAYERS",
                    rel.display()
                )),
            }
        }
    }
    for manifest in ["ebpf/Cargo.toml", "ebpf/common/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(manifest))?;
        if text
            .lines()
            .any(|l| l.trim_start().starts_with("credwatch "))
        {
            problems.push(format!("{manifest} depends on the agent"));
        }
    }
    let common = std::fs::read_to_string(root.join("ebpf/common/src/lib.rs"))?;
    if !common.contains("no_std") {
        problems.push("ebpf/common is not no_std".to_owned());
    }
    if !problems.is_empty() {
        bail!("layering:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "xtask: layering ok: {} files under agent/src import only downward ({})",
        files.len(),
        LAYERS.join(" > ")
    );
    Ok(())
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `kernel/maps.rs` -> `kernel`, `sys.rs` -> `sys`; `None` for the crate roots.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules a file names through `crate::`: `crate::a::b`, `crate::{a, b::c}`.
fn crate_imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, `my_crate::`
        }
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_heads(group)),
            None => out.extend(ident(rest)),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The first identifier of each item of a `{...}` group (the text after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 1;
    let mut expect_head = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_head = true,
            c if expect_head && depth == 1 && (c.is_alphabetic() || c == '_') => {
                heads.extend(ident(&group[i..]));
                expect_head = false;
            }
            c if c.is_whitespace() => {}
            _ if depth == 1 => expect_head = false,
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_form_of_crate_path() {
        let text = "use crate::{\n    config::Config,\n    identity::{attribution, PodIndex},\n    sys,\n};\n\
                    let x = crate::kernel::maps::take(); $crate::e2e_enabled();\n\
                    use crate::state::State;";
        assert_eq!(
            crate_imports(text),
            ["config", "identity", "kernel", "state", "sys"]
        );
    }

    #[test]
    fn modules_are_named_by_their_top_folder() {
        assert_eq!(
            top_module(Path::new("kernel/maps.rs")).as_deref(),
            Some("kernel")
        );
        assert_eq!(top_module(Path::new("sys.rs")).as_deref(), Some("sys"));
        assert_eq!(top_module(Path::new("lib.rs")), None);
    }

    #[test]
    fn the_agent_imports_only_downward() {
        check(&crate::project_root()).unwrap();
    }
}
