//! End-to-end tests on the real kernel: the real agent, real cgroups, real processes.
//! Run as root through `cargo xtask test`; without root they say so (and fail under
//! `CREDWATCH_E2E=required`).
// Scenarios read best whole.
#![allow(clippy::too_many_lines)]

#[macro_use]
extern crate credwatch_e2e;

mod auth;
mod files;
mod hostile;
mod inputs;
mod kubelet;
mod pods;
mod prometheus;
mod restart;
