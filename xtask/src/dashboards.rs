//! The dashboards' checks: each JSON against `@grafana/schema` (`satisfies Dashboard`, compiled
//! with `tsc --strict`), every datasource a variable, every metric name in every query in the
//! README's catalog. (That every panel query returns data is the end-to-end test
//! tests/e2e/prometheus.rs, against a real Prometheus scraping the real agent.)
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{project_root, run, setup};

/// Grafana's JSON spells a string enum (`"mode": "absolute"`) by its value, which TypeScript does
/// not accept for an `enum` type: `Json<T>` turns string enums into the union of their values and
/// keeps every other check (unknown keys, wrong types, missing required fields).
const PRELUDE: &str = "import type { Dashboard } from \"@grafana/schema\";\n\
type Json<T> = T extends string ? `${T}` : T extends (infer U)[] ? Json<U>[] : \
T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n";

/// Metric names the dashboards may use that are not credwatch's (Prometheus's own `up`).
const FOREIGN_METRICS: &[&str] = &["up"];

pub fn files() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(project_root().join("dashboards"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn check() -> Result<()> {
    let catalog = catalog()?;
    let check_dir = project_root().join("target/tools/node/check");
    std::fs::create_dir_all(&check_dir)?;
    let mut sources = Vec::new();
    for file in files()? {
        let text = std::fs::read_to_string(&file)?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        check_datasources(&json, "").with_context(|| name.clone())?;
        let queries = queries(&json);
        for q in &queries {
            check_metrics(q, &catalog).with_context(|| format!("{name}: {q}"))?;
        }
        let ts = check_dir.join(format!("{name}.ts"));
        let body = text.trim_end();
        std::fs::write(
            &ts,
            format!("{PRELUDE}export const dashboard = {body} satisfies Json<Dashboard>;\n"),
        )?;
        sources.push(ts);
        eprintln!(
            "xtask: {name}: {} queries, every metric in the catalog, every datasource a variable",
            queries.len()
        );
    }
    eprintln!("xtask: tsc: the dashboards satisfy @grafana/schema's Dashboard");
    run(Command::new("node")
        .arg(setup::tsc())
        .args(["--noEmit", "--strict", "--target", "es2022"])
        .args(["--module", "nodenext", "--moduleResolution", "nodenext"])
        .args(&sources))
}

/// Every `datasource` anywhere is the `${datasource}` variable (the variable itself picks
/// among Prometheus datasources).
fn check_datasources(v: &Value, path: &str) -> Result<()> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{path}/{k}");
                if k == "datasource" {
                    let uid = child.get("uid").and_then(Value::as_str).or(child.as_str());
                    if uid != Some("${datasource}") {
                        bail!("{here} is {child}, not the ${{datasource}} variable");
                    }
                }
                check_datasources(child, &here)?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_datasources(child, &format!("{path}/{i}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every PromQL text of a dashboard: panel targets and query variables.
pub fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    for p in &panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

/// The metric names a query selects: every identifier directly followed by `{`.
fn selected_metrics(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    for (i, _) in query.match_indices('{') {
        let start = query[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        if start < i && !bytes[start].is_ascii_digit() {
            names.push(query[start..i].to_owned());
        }
    }
    names
}

fn check_metrics(query: &str, catalog: &BTreeSet<String>) -> Result<()> {
    for name in selected_metrics(query) {
        if FOREIGN_METRICS.contains(&name.as_str()) {
            continue;
        }
        let base = name
            .strip_prefix("credwatch_")
            .with_context(|| format!("{name} is not a credwatch metric"))?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| base.strip_suffix(s))
            .filter(|f| catalog.contains(*f))
            .unwrap_or(base);
        if !catalog.contains(family) {
            bail!("{name} is not in the README's metric catalog");
        }
    }
    // Metric names outside a selector (`label_values(credwatch_build_info, ...)`).
    for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("credwatch_") {
            if !catalog.contains(base) && !catalog.contains(base.trim_end_matches("_bucket")) {
                bail!("{word} is not in the README's metric catalog");
            }
        }
    }
    Ok(())
}

/// The README's "## Metrics" table, and the names its "Still to come" line announces (the
/// auth-call sensor's: the dashboards show them already; the end-to-end test expects them empty).
pub fn catalog() -> Result<BTreeSet<String>> {
    let readme = std::fs::read_to_string(project_root().join("README.md"))?;
    let section = readme
        .split_once("\n## Metrics\n")
        .context("README has no ## Metrics")?
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut names = BTreeSet::new();
    for line in section.lines() {
        let cell = if let Some(row) = line.strip_prefix("| `") {
            row.split('`').next()
        } else {
            None
        };
        names.extend(cell.map(str::to_owned));
        if line.starts_with("Still to come") {
            names.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    if names.len() < 10 {
        bail!("README's metric catalog has only {names:?}");
    }
    Ok(names)
}
