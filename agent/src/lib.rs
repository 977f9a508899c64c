//! credwatch: runtime credential-usage telemetry. The folders are the pipeline's stages, each
//! importing only those listed after it (`cargo xtask lint` checks this); docs/architecture.md
//! draws the whole.
//!
//! - `cli`: the commands; `agent` wires the stages together.
//! - `http`: `/metrics`, health and the JSON API.
//! - `export`: renders the state and the kernel's counters as metrics, at scrape time.
//! - `sensors`: each sensor's kernel hooks and the userspace stages that give their data meaning.
//! - `state`: credentials, readers, hook status, drops; methods, no exposed locks.
//! - `inventory`: credential files on disk and what their content says.
//! - `identity`: cgroup -> reader -> pod and container, and the attribution rules.
//! - `kernel`: aya only: the object, BTF, hooks, maps, the event ring.
//! - `config`, `sys`: configuration and host facts.
// Tests may be long tables; the code they test may not (see clippy.toml).
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod cli;
pub mod config;
pub mod export;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod kernel;
pub mod sensors;
pub mod state;
pub mod sys;
