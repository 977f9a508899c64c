//! `cargo xtask bench`, auth-call part: what the auth-call sensor costs, side by side with
//! nothing attached, in one run.
//!
//! - TLS: `--tls-requests` token lookups (default 20,000) over one keep-alive HTTPS connection
//!   (Python's http.client against Python's ssl server, both on OpenSSL and on the loops' CPU: the
//!   uprobes fire in both), the server configured as a catalogued auth endpoint, so every request
//!   is captured, decoded and counted. credwatch's count must equal the requests made; the
//!   agent's own CPU time per request is reported beside.
//! - Sockets: 64-byte send + recv over a loopback TCP pair that is no endpoint (what every other
//!   connection on the node pays).
//!
//! Each round runs `none` and `credwatch` (alternating which goes first); wall-clock medians and
//! medians of per-round ratios, and the kernel's BPF accounting (every program credwatch loaded,
//! summed) per request and per socket operation.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use crate::bench::{
    median, pinned, read_trimmed, run_loop, BpfStats, TempDir, SETTLE, START_TIMEOUT,
};

pub struct AuthBench {
    pub root: PathBuf,
    pub tls_requests: u64,
    pub socket_ops: u64,
    pub rounds: usize,
    pub loop_cpus: Option<String>,
    pub setup_cpus: Option<String>,
}

/// A process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Cells {
    /// (metric, setup) -> one value per round.
    values: BTreeMap<(&'static str, &'static str), Vec<f64>>,
    /// credwatch's request count against the requests made, per round.
    exact: Vec<(u64, u64)>,
}

impl AuthBench {
    pub fn run(&self, out_dir: &Path) -> Result<String> {
        let tmp = TempDir::new("bench-auth")?;
        let dir = &tmp.0;
        let (cert, key) = self_signed(dir)?;
        let (server, port) = self.tls_server(&cert, &key)?;
        let config = dir.join("credwatch.yaml");
        std::fs::write(
            &config,
            format!("endpoints:\n  - {{name: bench-tls, address: 127.0.0.1, port: {port}, tls: true, kind: vault}}\n"),
        )?;
        let mut cells = Cells::default();
        for round in 0..self.rounds {
            let order = if round % 2 == 0 {
                ["none", "credwatch"]
            } else {
                ["credwatch", "none"]
            };
            for setup in order {
                eprintln!("bench: auth round {}/{}: {setup}", round + 1, self.rounds);
                self.round(setup, &config, port, &cert, &mut cells)?;
            }
        }
        drop(server);
        let report = self.render(&cells);
        std::fs::write(out_dir.join("report-auth.md"), &report)?;
        ensure!(
            cells.exact.iter().all(|(got, want)| got == want),
            "credwatch's auth_requests_total was not exact: {:?}",
            cells.exact
        );
        Ok(report)
    }

    fn round(
        &self,
        setup: &'static str,
        config: &Path,
        port: u16,
        cert: &Path,
        cells: &mut Cells,
    ) -> Result<()> {
        let agent = match setup {
            "credwatch" => Some(self.start_agent(config)?),
            _ => None,
        };
        thread::sleep(SETTLE);
        let before = agent.as_ref().map(|(_, p)| requests(*p)).transpose()?;
        BpfStats::set(false)?;
        let cpu_before = agent.as_ref().map(|(a, _)| cpu_ns(a.0.id())).transpose()?;
        let tls = self.tls_client(port, cert)?;
        let cpu_after = agent.as_ref().map(|(a, _)| cpu_ns(a.0.id())).transpose()?;
        let sock = self.socket_loop()?;
        let mut add = |m: &'static str, v: f64| cells.values.entry((m, setup)).or_default().push(v);
        add("tls", tls.0);
        add("socket", sock.0);
        if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
            add("agent_cpu_tls", (a - b) / tls.1 as f64);
        }
        let (Some((agent, metrics)), Some(before)) = (&agent, before) else {
            return Ok(());
        };
        // The kernel's accounting, in runs of their own (its clock reads cost every program run).
        BpfStats::set(true)?;
        let b = bpf_totals(agent.0.id())?;
        let (_, made) = self.tls_client(port, cert)?;
        let t = bpf_totals(agent.0.id())?;
        let (_, ops) = self.socket_loop()?;
        let s = bpf_totals(agent.0.id())?;
        BpfStats::set(false)?;
        add("bpf_tls", (t - b) / made as f64);
        add("bpf_socket", (s - t) / ops as f64);
        // Every request of both TLS runs, warm-up included, counted exactly once.
        let want = tls.1 + made;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = requests(*metrics)? - before;
        while got < want && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
            got = requests(*metrics)? - before;
        }
        cells.exact.push((got, want));
        Ok(())
    }

    /// credwatch with the bench's endpoint; returns it and its /metrics port once ready.
    fn start_agent(&self, config: &Path) -> Result<(Guard, u16)> {
        let mut cmd = pinned(self.setup_cpus.as_deref());
        cmd.arg(self.root.join("target/release/credwatch"))
            .args([
                "agent",
                "--no-default-watch",
                // Pinned programs would go on costing in the rounds without the agent.
                "--pin-dir",
                "none",
                "--listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = Guard(cmd.spawn().context("starting credwatch")?);
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().expect("piped")).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches("/metrics").parse().ok())
            .with_context(|| format!("credwatch printed {line:?}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while curl(port, "/readyz").is_err() {
            ensure!(Instant::now() < deadline, "credwatch not ready");
            thread::sleep(Duration::from_millis(50));
        }
        Ok((child, port))
    }

    /// The server is part of the workload: it runs on the loops' CPU, beside its client, so the
    /// agent's own work (on the other CPUs) is not counted in the requests' time but reported
    /// apart, as CPU time per request.
    fn tls_server(&self, cert: &Path, key: &Path) -> Result<(Guard, u16)> {
        let mut cmd = pinned(self.loop_cpus.as_deref());
        cmd.arg("python3")
            .arg(self.root.join("xtask/bench/tls_server.py"))
            .args([cert, key])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Guard(cmd.spawn().context("starting the TLS server")?);
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().expect("piped")).read_line(&mut line)?;
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("TLS server printed {line:?}"))?;
        Ok((child, port))
    }

    /// (ns per request, requests made including warm-up).
    fn tls_client(&self, port: u16, cert: &Path) -> Result<(f64, u64)> {
        let mut cmd = pinned(self.loop_cpus.as_deref());
        cmd.arg("python3")
            .arg(self.root.join("xtask/bench/tls_client.py"))
            .arg(port.to_string())
            .arg(cert)
            .arg(self.tls_requests.to_string());
        json_loop(&mut cmd)
    }

    /// (ns per send + recv, operations including warm-up).
    fn socket_loop(&self) -> Result<(f64, u64)> {
        let mut cmd = pinned(self.loop_cpus.as_deref());
        cmd.arg(self.root.join("target/release/credwatch-bench-loop"))
            .arg("tcp")
            .arg(self.socket_ops.to_string());
        json_loop(&mut cmd)
    }

    fn render(&self, cells: &Cells) -> String {
        let med = |m: &'static str, s: &'static str| {
            cells
                .values
                .get(&(m, s))
                .map_or(f64::NAN, |v| median(&mut v.clone()))
        };
        let ratio = |m: &'static str| {
            let (n, c) = (
                &cells.values.get(&(m, "none")),
                &cells.values.get(&(m, "credwatch")),
            );
            let mut r: Vec<f64> = match (n, c) {
                (Some(n), Some(c)) => n.iter().zip(c.iter()).map(|(n, c)| c / n).collect(),
                _ => Vec::new(),
            };
            median(&mut r)
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## Auth-call sensor\n\n{} rounds x 2 setups; {} TLS requests (keep-alive, Python \
             http.client + ssl server on OpenSSL, a catalogued endpoint) and {} socket ops per run; \
             loops on CPU {}; load average {}\n",
            self.rounds,
            self.tls_requests,
            self.socket_ops,
            self.loop_cpus.as_deref().unwrap_or("any"),
            read_trimmed("/proc/loadavg")
        );
        let _ = writeln!(
            out,
            "| measure | none | credwatch | credwatch / none (median of rounds) | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (m, label, target) in [
            ("tls", "HTTPS request, keep-alive (us)", "<= 1.05"),
            ("socket", "send + recv, non-endpoint TCP (ns)", "<= 1.02"),
        ] {
            let scale = if m == "tls" { 1e-3 } else { 1.0 };
            let _ = writeln!(
                out,
                "| {label} | {:.2} | {:.2} | {:.3} | {target} |",
                med(m, "none") * scale,
                med(m, "credwatch") * scale,
                ratio(m)
            );
        }
        let _ = writeln!(
            out,
            "\nBPF run time of all of credwatch's programs (kernel accounting): {:.0} ns per TLS \
             request, {:.0} ns per socket operation (median of rounds).",
            med("bpf_tls", "credwatch"),
            med("bpf_socket", "credwatch")
        );
        let _ = writeln!(
            out,
            "\nThe agent's own CPU time (all its threads, on the other CPUs): {:.1} us \
             per TLS request (median of rounds).",
            med("agent_cpu_tls", "credwatch") * 1e-3
        );
        // Every round's value: how far this machine's wall clock moves between rounds.
        let _ = writeln!(
            out,
            "\n| per round | setup | values (round order) |\n|---|---|---|"
        );
        for ((m, setup), values) in &cells.values {
            let list: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
            let _ = writeln!(out, "| {m} | {setup} | {} |", list.join(", "));
        }
        let exact = cells.exact.iter().all(|(g, w)| g == w);
        let _ = writeln!(
            out,
            "exact: {} (auth_requests_total against requests made, per round: {:?})",
            if exact { "yes" } else { "NO" },
            cells.exact
        );
        out
    }
}

/// Runs a loop; (ns per operation, operations including warm-up).
fn json_loop(cmd: &mut Command) -> Result<(f64, u64)> {
    let l = run_loop(cmd)?;
    Ok((l.ns_per_op, l.timed + l.warmup))
}

fn curl(port: u16, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}{path}")])
        .output()?;
    ensure!(out.status.success(), "GET {path}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bench endpoint's requests counted by credwatch.
fn requests(port: u16) -> Result<u64> {
    Ok(curl(port, "/metrics")?
        .lines()
        .filter(|l| {
            l.starts_with("credwatch_auth_requests_total{") && l.contains("endpoint=\"bench-tls\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// CPU time (ns) process `pid`'s threads have used, summed from each one's
/// `/proc/<pid>/task/<tid>/schedstat` (time on CPU, in ns: clock ticks would be too coarse).
fn cpu_ns(pid: u32) -> Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // a thread that just ended
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(total)
}

/// Run time (ns) of every program process `pid` holds, summed: their ids from the `prog_id:` of
/// its descriptors (program and link fds), their times from one `bpftool prog show`.
fn bpf_totals(pid: u32) -> Result<f64> {
    let mut ids = std::collections::HashSet::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("cannot run bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let list = v.as_array().context("bpftool prog show: not a list")?;
    Ok(list
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["run_time_ns"].as_f64())
        .sum())
}

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    Ok((cert, key))
}
