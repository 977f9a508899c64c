//! credwatch: runtime credential-usage telemetry.
//!
//! Stages, each in its own module (see `agent` for how they connect):
//! - `btf`: kernel struct offsets for the kernel programs.
//! - `probes`: loading and attaching the eBPF object; typed map handles.
//! - `inventory`, `kubelet`: credential files on disk (host watch paths, kubelet pod volumes)
//!   -> `state::Credentials` and the `WATCHED` map.
//! - `credential`: what a file holds (JWT claims, certificate dates), never the value.
//! - `events`: first-read events from the ring buffer -> reader records.
//! - `identity`: cgroup id -> cgroup path -> container or host process.
//! - `metrics`, `http`: scrape-time collector and the HTTP endpoints.
//! - `check`: `credwatch check`.
pub mod agent;
pub mod btf;
pub mod check;
pub mod config;
pub mod credential;
pub mod events;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod kubelet;
pub mod lifecycle;
pub mod metrics;
pub mod podmeta;
pub mod probes;
pub mod state;
pub mod sys;
