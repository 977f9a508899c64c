//! deploy/: the Helm chart, what is rendered from it (the plain manifests, the rules file), and
//! the checks `cargo xtask test` runs on them: helm lint and template with default and
//! non-default values, the Kubernetes 1.32 schema in strict mode, rendered files equal to the
//! chart, promtool's rule check and unit tests, and the dashboards (dashboards.rs).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{project_root, run, setup};

const RELEASE: &str = "credwatch";
const NAMESPACE: &str = "credwatch";
/// The values deploy/manifests and deploy/rules are rendered with.
const MANIFEST_VALUES: &str = "deploy/chart/ci/manifests-values.yaml";
const RULES: &str = "deploy/rules/credwatch.rules.yaml";
const RULE_TESTS: &str = "deploy/rules/credwatch.rules.test.yaml";

fn helm() -> Command {
    let mut cmd = Command::new(setup::helm());
    let home = project_root().join("target/tools/helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `helm template` of the chart with a values file (`None`: the defaults).
fn template(values: Option<&Path>) -> Result<String> {
    let mut cmd = helm();
    cmd.args(["template", RELEASE])
        .arg(project_root().join("deploy/chart"))
        .args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.output().context("cannot run helm")?;
    if !out.status.success() {
        bail!(
            "helm template {values:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A render's documents grouped by the template they came from: `daemonset.yaml` -> its text.
fn by_template(render: &str) -> BTreeMap<String, Vec<String>> {
    let mut docs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for doc in render.split("\n---\n") {
        let doc = doc.trim_start_matches("---\n");
        let Some((first, body)) = doc.split_once('\n') else {
            continue;
        };
        if let Some(src) = first.strip_prefix("# Source: credwatch/templates/") {
            docs.entry(src.to_owned())
                .or_default()
                .push(body.trim_end().to_owned());
        }
    }
    docs
}

/// The `groups:` of a PrometheusRule document: its `spec`, two spaces less indented.
fn rules_of(prometheus_rule: &str) -> Result<String> {
    let (_, spec) = prometheus_rule
        .split_once("\nspec:\n")
        .context("the PrometheusRule has no spec")?;
    let mut out = String::new();
    for line in spec.lines() {
        out.push_str(line.strip_prefix("  ").unwrap_or(line));
        out.push('\n');
    }
    Ok(out)
}

/// What deploy/ holds rendered from the chart: path (from the project root) -> content.
fn rendered() -> Result<BTreeMap<PathBuf, String>> {
    let root = project_root();
    let docs = by_template(&template(Some(&root.join(MANIFEST_VALUES)))?);
    let header = format!(
        "# Rendered from deploy/chart with {MANIFEST_VALUES} by `cargo xtask render`:\n\
         # edit the chart, not this file (`cargo xtask test` checks that they are equal).\n"
    );
    let mut files = BTreeMap::new();
    for (name, docs) in &docs {
        let text = format!("{header}{}\n", docs.join("\n---\n"));
        files.insert(PathBuf::from("deploy/manifests").join(name), text);
    }
    let rule = docs
        .get("prometheusrule.yaml")
        .and_then(|d| d.first())
        .context("the manifests' values render no PrometheusRule")?;
    files.insert(PathBuf::from(RULES), format!("{header}{}", rules_of(rule)?));
    Ok(files)
}

/// `cargo xtask render`: writes deploy/manifests and deploy/rules from the chart.
pub fn render() -> Result<()> {
    setup::chart_tools()?;
    let root = project_root();
    for (path, text) in rendered()? {
        std::fs::write(root.join(&path), text)?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}

/// The files in deploy/manifests and the rules file are the chart's render, and nothing else
/// lies in deploy/manifests.
fn check_rendered() -> Result<()> {
    let root = project_root();
    let files = rendered()?;
    let mut stale = Vec::new();
    for (path, text) in &files {
        if std::fs::read_to_string(root.join(path)).ok().as_ref() != Some(text) {
            stale.push(path.display().to_string());
        }
    }
    for e in std::fs::read_dir(root.join("deploy/manifests"))?.flatten() {
        let rel = Path::new("deploy/manifests").join(e.file_name());
        if !files.contains_key(&rel) {
            stale.push(format!("{} (not rendered by the chart)", rel.display()));
        }
    }
    if !stale.is_empty() {
        bail!(
            "not equal to the chart's render: {}; run `cargo xtask render`",
            stale.join(", ")
        );
    }
    eprintln!(
        "xtask: deploy/manifests and {RULES} equal the chart's render ({} files)",
        files.len()
    );
    Ok(())
}

/// helm lint, then helm template with each values set, validated against Kubernetes 1.32
/// (strict: unknown fields are errors; the operator's kinds only warn), and the rules each
/// set renders through promtool.
fn check_chart() -> Result<()> {
    let root = project_root();
    let chart = root.join("deploy/chart");
    let out_dir = root.join("target/deploy-check");
    std::fs::create_dir_all(&out_dir)?;
    let sets: [(&str, Option<PathBuf>); 3] = [
        ("default", None),
        ("manifests", Some(root.join(MANIFEST_VALUES))),
        ("custom", Some(chart.join("ci/custom-values.yaml"))),
    ];
    for (name, values) in &sets {
        let mut lint = helm();
        lint.args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(&chart);
        if let Some(v) = values {
            lint.arg("--values").arg(v);
        }
        run(&mut lint)?;
        let render = template(values.as_deref())?;
        let file = out_dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &render)?;
        eprintln!("xtask: chart with {name} values: validating (Kubernetes 1.32, strict)");
        run(Command::new(setup::python())
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(["--kubernetes-version", "1.32.0"])
            .arg(&file))?;
        if let Some(rule) = by_template(&render)
            .get("prometheusrule.yaml")
            .and_then(|d| d.first())
        {
            let rules = out_dir.join(format!("{name}.rules.yaml"));
            std::fs::write(&rules, rules_of(rule)?)?;
            run(Command::new("promtool")
                .args(["check", "rules"])
                .arg(&rules))?;
        }
    }
    Ok(())
}

/// Everything under deploy/ and dashboards/ that `cargo xtask test` checks.
pub fn check() -> Result<()> {
    setup::chart_tools()?;
    check_chart()?;
    check_rendered()?;
    let root = project_root();
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join(RULES)))?;
    eprintln!("xtask: promtool test rules {RULE_TESTS} (about 30 s: one test spans 7 days)");
    run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(root.join(RULE_TESTS)))?;
    crate::dashboards::check()
}
