//! `credwatch inventory`: the credentials on this host, as a table or JSON, without eBPF.
use std::time::Instant;

use crate::{
    config::{AgentFlags, Config, Flags},
    inventory::{self, content, kubelet::GenerationNumbers, Sources},
    sensors::auth::catalog::{kind_label, system_resolve, Catalog},
    state::{Credential, State},
    sys,
};

pub fn run(flags: Flags, json: bool) -> anyhow::Result<()> {
    let cfg = Config::from_agent_flags(&AgentFlags {
        common: flags,
        ..Default::default()
    })?;
    let sources = Sources::from_config(&cfg).map_err(anyhow::Error::msg)?;
    let scan = inventory::scan_all(&sources, &mut GenerationNumbers::default());
    for p in &scan.problems {
        eprintln!("note: {p}");
    }
    let state = State::default();
    state.apply_scan(
        &scan.found,
        |_, at| std::sync::Arc::new(content::parse_file_logged(at)),
        Instant::now(),
        sys::unix_now(),
        sources.grace,
    );
    let creds: Vec<_> = state.credentials().iter().map(|c| (**c).clone()).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&creds)?);
        return Ok(());
    }
    print_table(&creds);
    for m in &scan.missing {
        eprintln!("note: watch path {m} does not exist");
    }
    eprintln!("{} credentials", creds.len());
    print_endpoints(&Catalog::from_config(&cfg)?);
    Ok(())
}

/// The auth endpoint catalog as it resolves now.
fn print_endpoints(catalog: &Catalog) {
    let (_, resolved) = catalog.routes(system_resolve);
    println!("\nAUTH ENDPOINT       PORT   KIND        ADDRESSES");
    for (e, r) in catalog.entries.iter().zip(resolved) {
        let addresses = match r.error {
            None => r.addresses.join(", "),
            Some(err) => format!("(does not resolve: {err})"),
        };
        println!(
            "{:18}  {:5}  {:10}  {addresses}",
            r.name,
            r.port,
            kind_label(e.kind)
        );
    }
}

fn print_table(creds: &[Credential]) {
    let now = sys::unix_now();
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![[
        "POD", "VOLUME", "FILE", "KIND", "SOURCE", "GEN", "ISSUED", "EXPIRY",
    ]
    .map(String::from)
    .to_vec()];
    for c in creds {
        rows.push(vec![
            if c.pod.is_empty() {
                dash()
            } else {
                c.pod.clone()
            },
            c.volume.clone(),
            c.file.clone(),
            c.kind.as_str().to_owned(),
            c.source.clone(),
            c.generation.to_string(),
            format!("{} ago", sys::human_duration(now - c.issued())),
            c.parsed
                .expiry
                .map(|e| sys::expiry_phrase(e, now))
                .unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
