//! `credwatch check`: what the kernel and this process's privileges allow, probe by probe.
use std::path::Path;

use crate::{
    config::{Config, FileHook, TlsProbePoints},
    kernel::{attach_can_pin, btf, pin::Pins},
    sensors::{
        auth::{self, catalog::Catalog, probe_points, tls},
        file,
    },
    sys,
};

#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub ok: bool,
    /// The agent cannot run without it.
    pub required: bool,
    pub detail: String,
}

fn item(name: impl Into<String>, ok: bool, required: bool, detail: impl Into<String>) -> Item {
    Item {
        name: name.into(),
        ok,
        required,
        detail: detail.into(),
    }
}

/// Runs every check. Probes are really loaded and attached (then detached) when privileges allow.
pub fn run(catalog: &Catalog, cfg: &Config) -> Vec<Item> {
    let mut items = Vec::new();
    let privileged = sys::missing_privileges();
    items.push(match &privileged {
        None => item("privileges", true, true, "can load eBPF programs"),
        Some(why) => item("privileges", false, true, why.clone()),
    });
    let kernel = btf::probe_btf(Path::new(btf::VMLINUX_BTF));
    items.push(match &kernel {
        Ok(k) => item(
            "kernel BTF",
            true,
            true,
            format!(
                "{} (task_struct.files@{}, file.f_inode@{}, inode.i_ino@{}; bpf_rdonly_cast {})",
                btf::VMLINUX_BTF,
                k.offsets.task_files,
                k.offsets.file_f_inode,
                k.offsets.inode_i_ino,
                if k.rdonly_cast.is_some() {
                    "present"
                } else {
                    "absent or disabled"
                }
            ),
        ),
        Err(e) => item("kernel BTF", false, true, e.to_string()),
    });
    for (path, fstype, required, why) in [
        (
            sys::TRACEFS,
            "tracefs",
            true,
            "tracepoint ids are read from it",
        ),
        (sys::BPFFS, "bpf", false, "for pinning maps"),
    ] {
        items.push(mount_item(
            path,
            fstype,
            required,
            why,
            privileged.is_none(),
        ));
    }
    items.push(match sys::cgroup2_mount() {
        Some(m) => item("cgroup v2", true, false, format!("mounted at {m}")),
        None => item(
            "cgroup v2",
            false,
            false,
            "not mounted: reads are counted but readers cannot be told apart",
        ),
    });
    match (&privileged, &kernel) {
        (None, Ok(k)) => items.extend(probe_items(k, cfg.file_hook)),
        _ => items.push(item(
            "probes",
            false,
            true,
            "not tried: needs the privileges and BTF above",
        )),
    }
    if privileged.is_none() {
        items.push(pin_item(cfg.pin_dir.as_deref()));
    }
    items.extend(endpoint_items(catalog));
    items.extend(tls_library_items(Path::new("/proc"), cfg.tls_probe_points));
    items
}

/// Whether the file sensor can pin here, and what is pinned now (looked at, nothing changed).
fn pin_item(dir: Option<&Path>) -> Item {
    let name = "pinning";
    let Some(dir) = dir else {
        return item(
            name,
            true,
            false,
            "off (--pin-dir none): counters start from zero with each agent",
        );
    };
    if !attach_can_pin() {
        return item(name, false, false, "this kernel makes no bpf_link for tracepoints (before 5.15): probes stop with the agent");
    }
    match Pins::look(dir) {
        Ok(what) => item(name, true, false, format!("{}: {what}", dir.display())),
        Err(e) => item(name, false, false, e.to_string()),
    }
}

/// The catalog as it resolves now: what the kernel's endpoint map would hold.
pub fn endpoint_items(catalog: &Catalog) -> Vec<Item> {
    let (_, resolved) = catalog.routes(auth::catalog::system_resolve);
    resolved
        .into_iter()
        .map(|r| {
            let name = format!("endpoint {} :{}", r.name, r.port);
            match r.error {
                None => item(name, true, false, r.addresses.join(", ")),
                Some(e) => item(name, false, false, format!("does not resolve: {e}")),
            }
        })
        .collect()
}

/// The distinct OpenSSL libraries processes have mapped now (the agent attaches to each), and
/// where in each the probes would go.
fn tls_library_items(proc_root: &Path, points: TlsProbePoints) -> Vec<Item> {
    // path -> the first (pid, mapped range) seen: its map_files link reaches the very file.
    let mut seen = std::collections::BTreeMap::new();
    for pid in tls::pids(proc_root) {
        for (range, path) in tls::ssl_mappings(proc_root, pid) {
            seen.entry(path).or_insert((pid, range));
        }
    }
    if seen.is_empty() {
        return vec![item(
            "TLS libraries",
            true,
            false,
            "no process has libssl mapped now; the agent attaches as they appear",
        )];
    }
    seen.into_iter()
        .map(|(path, (pid, range))| {
            let link = proc_root.join(format!("{pid}/map_files/{range}"));
            let at = match points {
                TlsProbePoints::Exported => {
                    "probes on SSL_write/SSL_read and their _ex forms \
                                             (--tls-probe-points exported)"
                }
                TlsProbePoints::Auto if probe_points::internal(&link).is_some() => {
                    "probes on the internal write and read functions that SSL_write/SSL_read \
                     and their _ex forms share (no single-step per call)"
                }
                TlsProbePoints::Auto => "probes on SSL_write/SSL_read and their _ex forms",
            };
            item("TLS library", true, false, format!("{path}: {at}"))
        })
        .collect()
}

/// Whether pseudo-filesystem `fstype` is at `path`, mounting it as the agent would when we may.
fn mount_item(path: &str, fstype: &str, required: bool, why: &str, may_mount: bool) -> Item {
    let name = format!("{fstype} at {path}");
    if sys::is_mounted(path, fstype) || Path::new(path).join("events").exists() {
        return item(name, true, required, "mounted");
    }
    if !may_mount {
        return item(
            name,
            false,
            required,
            format!("not mounted; the agent mounts it when run as root ({why})"),
        );
    }
    match sys::ensure_mounted(path, fstype) {
        Ok(_) => item(
            name,
            true,
            required,
            "was not mounted; mounted it now (the agent does the same)",
        ),
        Err(e) => item(
            name,
            false,
            required,
            format!("not mounted and mounting failed: {e} ({why})"),
        ),
    }
}

/// Loads the object and attaches the file sensor's hooks exactly as the agent does, then detaches.
fn probe_items(kernel: &btf::ProbeBtf, file_hook: FileHook) -> Vec<Item> {
    let loaded = match file::attach(kernel, std::process::id(), file_hook, None) {
        Ok(loaded) => loaded,
        Err(e) => return vec![item("eBPF object", false, true, format!("{e}"))],
    };
    let any = loaded.any_attached();
    let mut items: Vec<Item> = crate::kernel::maps::memory()
        .into_iter()
        .map(|(map, detail)| item(format!("map {map}"), true, false, detail))
        .collect();
    items.push(match &loaded.fast_refused {
        None => item(
            "file hook",
            true,
            false,
            "fexit/security_file_open: every open, with the file in hand",
        ),
        Some(why) => item(
            "file hook",
            true,
            false,
            format!("the open syscalls' tracepoints (the fast hook: {why})"),
        ),
    });
    if any && loaded.fast_refused.is_some() {
        items.push(item(
            "descriptor to inode",
            true,
            false,
            loaded.btf.file_walk(),
        ));
    }
    let mut loaded = loaded;
    let trampolines = !loaded.trampolines_refused;
    let auth_hooks = auth::attach(&mut loaded.ebpf, trampolines);
    for s in loaded.hooks.into_iter().chain(auth_hooks) {
        // openat is what every libc uses; without it the agent is blind.
        let required = s.probe == file::REQUIRED_HOOK
            || file::FAST_HOOKS.iter().any(|h| h.label() == s.probe)
            || !any;
        let detail = s.error.unwrap_or_else(|| "attached".to_owned());
        items.push(item(
            format!("probe {}", s.probe),
            s.attached,
            required,
            detail,
        ));
    }
    items
}

/// Prints the report; returns whether the agent can run.
pub fn print(items: &[Item]) -> bool {
    let width = items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for i in items {
        let mark = match (i.ok, i.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        let mut lines = i.detail.lines();
        println!("{mark}  {:width$}  {}", i.name, lines.next().unwrap_or(""));
        for l in lines {
            println!("      {:width$}  {l}", "");
        }
    }
    let can_run = items.iter().all(|i| i.ok || !i.required);
    if can_run {
        println!("\nthe agent can run on this host");
    } else {
        println!("\nthe agent cannot run on this host: see FAIL above");
    }
    can_run
}
