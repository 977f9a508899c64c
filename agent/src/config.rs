//! Configuration: command-line flags (each also read from `CREDWATCH_<FLAG>`), an optional YAML
//! file whose keys mirror the flags, and built-in defaults. Flags override the file; `--watch`
//! paths add to the file's and to the built-in list.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// How long a credential whose file disappeared (or whose pod went away) keeps its series, so the
/// last counts get scraped and a file that comes back continues its counters. `--series-grace`.
pub const DEFAULT_SERIES_GRACE: std::time::Duration = std::time::Duration::from_secs(300);
/// Series per metric family; beyond it series are dropped and counted as
/// `events_lost_total{stage="cardinality"}` (once per distinct series). `--max-series`.
pub const DEFAULT_MAX_SERIES: usize = 50_000;
/// Where the file sensor's maps and programs are pinned (`kernel::pin`). `--pin-dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/credwatch";

/// CSI drivers whose volumes hold credentials (secret stores, certificate and identity drivers);
/// the volumes of any other driver (block, NFS, Ceph data disks) are not walked. The YAML key
/// `credential_csi_drivers` adds to it.
pub const DEFAULT_CSI_DRIVERS: &[&str] = &[
    // Secrets Store CSI Driver: Vault, AWS, Azure, GCP and other providers plug into it.
    "secrets-store.csi.k8s.io",
    // cert-manager's csi-driver and csi-driver-spiffe.
    "csi.cert-manager.io",
    "spiffe.csi.cert-manager.io",
    // The SPIFFE CSI driver (SPIRE workload API socket and SVIDs).
    "csi.spiffe.io",
];

/// Host credential locations watched unless `no_default_watch` is set (see README).
pub const DEFAULT_WATCH: &[&str] = &[
    "/run/credentials",
    "/run/secrets",
    "/etc/kubernetes/*.conf",
    "/etc/kubernetes/pki",
    "/root/.kube/config",
    "/home/*/.kube/config",
    "/root/.aws/credentials",
    "/home/*/.aws/credentials",
    "/root/.config/gcloud",
    "/home/*/.config/gcloud",
    "/root/.azure",
    "/home/*/.azure",
    "/root/.docker/config.json",
    "/home/*/.docker/config.json",
    "/etc/ssl/private",
    "/etc/ssh/ssh_host_*_key",
    "/root/.ssh/id_*",
    "/home/*/.ssh/id_*",
];

/// Options shared by `agent` and `inventory` (clap), each with its environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// YAML configuration file; its keys mirror these flags (see README).
    #[arg(long, env = "CREDWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Root of the kubelet's state (pod volumes live under <DIR>/pods) [default: /var/lib/kubelet]
    #[arg(long, env = "CREDWATCH_KUBELET_ROOT", value_name = "DIR")]
    pub kubelet_root: Option<PathBuf>,

    /// A file, directory or glob of credentials to watch, in addition to the built-in list.
    /// Repeat the flag for several; the environment variable takes a ':'-separated list.
    #[arg(
        long,
        env = "CREDWATCH_WATCH",
        value_name = "PATH",
        value_delimiter = ':'
    )]
    pub watch: Vec<String>,

    /// Watch only the --watch paths and the config file's, not the built-in host locations.
    #[arg(long, env = "CREDWATCH_NO_DEFAULT_WATCH")]
    pub no_default_watch: bool,

    /// Where the node's root file system is: watch paths are the node's paths below it. In a
    /// container, mount the host's / read-only (the DaemonSet uses /host) [default: /]
    #[arg(long, env = "CREDWATCH_HOST_ROOT", value_name = "DIR")]
    pub host_root: Option<PathBuf>,
}

/// How the agent hooks the kernel: options of `agent` and `check` (which loads the probes as the
/// agent would).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct KernelFlags {
    /// How the file sensor sees opens: `auto` takes the return of security_file_open (fexit:
    /// every open, io_uring's included, no descriptor walk) where the kernel runs BPF trampolines,
    /// else the open syscalls' tracepoints and io_uring's completions (opens into fixed-file
    /// slots unseen); `tracepoints` skips the first [default: auto]
    #[arg(long, env = "CREDWATCH_FILE_HOOK", value_name = "HOOK")]
    pub file_hook: Option<FileHook>,

    /// Directory on bpffs where the file sensor's maps and programs are pinned: the kernel goes on
    /// counting reads while the agent is down (a crash, a restart, an upgrade) and the next agent
    /// takes the counters over. `none`: pin nothing (counters start from zero with each agent)
    /// [default: /sys/fs/bpf/credwatch]
    #[arg(long, env = "CREDWATCH_PIN_DIR", value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// See `KernelFlags::file_hook`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FileHook {
    #[default]
    Auto,
    Tracepoints,
}

/// See `AgentFlags::tls_probe_points`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsProbePoints {
    #[default]
    Auto,
    Exported,
}

/// Options of `credwatch agent` only.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AgentFlags {
    #[command(flatten)]
    pub common: Flags,

    #[command(flatten)]
    pub kernel: KernelFlags,

    /// Address for /metrics, /healthz, /readyz and /api/v1/* (port 0 picks a free port and prints
    /// it) [default: 127.0.0.1:9477]
    #[arg(long, env = "CREDWATCH_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Kubeconfig for the pod watch (in-cluster configuration is used when absent)
    #[arg(long, env = "CREDWATCH_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name, to watch only its pods (the DaemonSet sets it from the downward API)
    #[arg(long, env = "CREDWATCH_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// How long the series of a credential whose file (or pod) is gone are kept [default: 300]
    #[arg(long, env = "CREDWATCH_SERIES_GRACE", value_name = "SECONDS")]
    pub series_grace: Option<u64>,

    /// Series per metric family at most; more are dropped and counted in
    /// events_lost_total{stage="cardinality"} [default: 50000]
    #[arg(long, env = "CREDWATCH_MAX_SERIES", value_name = "N")]
    pub max_series: Option<usize>,

    /// Also serve the JSON API (/api/v1/credentials, /api/v1/readers), to loopback clients only.
    /// Off by default: it maps every credential path, pod, service account, claim subject and
    /// reader process on the node.
    #[arg(long, env = "CREDWATCH_API")]
    pub api: bool,

    /// With --api: answer the JSON API to any client that reaches the listen address, not only
    /// loopback ones.
    #[arg(long, env = "CREDWATCH_API_ALLOW_REMOTE", requires = "api")]
    pub api_allow_remote: bool,

    /// Run without the auth-call sensor (connects, HTTP requests and TLS to auth endpoints): no
    /// syscall tracepoint on reads and writes, no TLS uprobes; the file sensor alone.
    #[arg(long, env = "CREDWATCH_NO_AUTH_SENSOR")]
    pub no_auth_sensor: bool,

    /// Where the TLS uprobes go in each OpenSSL: `auto` puts them on the internal write and read
    /// functions that SSL_write/SSL_write_ex and SSL_read/SSL_read_ex share, where the library's
    /// code shows them (one trap per call fewer: no single-step), else on the exported
    /// functions; `exported` always on the exported functions [default: auto]
    #[arg(long, env = "CREDWATCH_TLS_PROBE_POINTS", value_name = "WHERE")]
    pub tls_probe_points: Option<TlsProbePoints>,

    /// Remove every pin under --pin-dir (the pinned programs stop, the kept counters go) and exit:
    /// the last step of an uninstall. Refused while an agent runs with that directory.
    #[arg(long)]
    pub unpin: bool,
}

/// Who may use the JSON API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApiAccess {
    #[default]
    Off,
    Loopback,
    Anyone,
}

/// The YAML file. Unknown keys and wrong types are errors that name the line.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub kubelet_root: Option<PathBuf>,
    pub watch: Vec<String>,
    pub no_default_watch: bool,
    pub host_root: Option<PathBuf>,
    pub file_hook: Option<FileHook>,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub series_grace: Option<u64>,
    pub max_series: Option<usize>,
    pub endpoints: Vec<Endpoint>,
    pub credential_sink_volumes: Vec<String>,
    pub credential_csi_drivers: Vec<String>,
    pub api: bool,
    pub api_allow_remote: bool,
    pub pin_dir: Option<PathBuf>,
    pub no_auth_sensor: bool,
    pub tls_probe_points: Option<TlsProbePoints>,
}

/// An outbound authentication endpoint, added to the built-in catalog.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub kind: EndpointKind,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Kubernetes,
    Metadata,
    Sts,
    Vault,
    Oidc,
    #[default]
    Generic,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The merged configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub kubelet_root: PathBuf,
    /// Built-in paths (unless disabled), then the file's, then the flags'; duplicates removed.
    /// The node's paths: found below `host_root`.
    pub watch: Vec<String>,
    pub host_root: PathBuf,
    pub file_hook: FileHook,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub series_grace: std::time::Duration,
    pub max_series: usize,
    pub endpoints: Vec<Endpoint>,
    pub credential_sink_volumes: Vec<String>,
    /// `DEFAULT_CSI_DRIVERS`, then the file's.
    pub credential_csi_drivers: Vec<String>,
    pub api: ApiAccess,
    /// Where the file sensor pins its maps and programs; `None`: nowhere (`--pin-dir none`).
    pub pin_dir: Option<PathBuf>,
    /// Whether the auth-call sensor runs (`--no-auth-sensor` turns it off).
    pub auth_sensor: bool,
    pub tls_probe_points: TlsProbePoints,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            // serde_yaml's message ends with "at line L column C".
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

impl Config {
    pub fn from_agent_flags(flags: &AgentFlags) -> Result<Self, Error> {
        let file = match &flags.common.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Ok(Self::merge(flags, file))
    }

    pub fn merge(flags: &AgentFlags, file: FileConfig) -> Self {
        let no_defaults = flags.common.no_default_watch || file.no_default_watch;
        let mut watch: Vec<String> = Vec::new();
        let defaults = DEFAULT_WATCH.iter().map(|s| s.to_string());
        let all = (if no_defaults { None } else { Some(defaults) })
            .into_iter()
            .flatten()
            .chain(file.watch)
            .chain(flags.common.watch.iter().cloned());
        for w in all {
            let w = expand_home(&w);
            if !w.is_empty() && !watch.contains(&w) {
                watch.push(w);
            }
        }
        let mut sinks = file.credential_sink_volumes;
        if !sinks.iter().any(|s| s == "vault-secrets") {
            sinks.insert(0, "vault-secrets".to_owned());
        }
        Self {
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            kubelet_root: flags
                .common
                .kubelet_root
                .clone()
                .or(file.kubelet_root)
                .unwrap_or_else(|| DEFAULT_KUBELET_ROOT.into()),
            watch,
            host_root: flags
                .common
                .host_root
                .clone()
                .or(file.host_root)
                .unwrap_or_else(|| "/".into()),
            file_hook: flags
                .kernel
                .file_hook
                .or(file.file_hook)
                .unwrap_or_default(),
            kubeconfig: flags.kubeconfig.clone().or(file.kubeconfig),
            node_name: flags.node_name.clone().or(file.node_name),
            series_grace: flags
                .series_grace
                .or(file.series_grace)
                .map(std::time::Duration::from_secs)
                .unwrap_or(DEFAULT_SERIES_GRACE),
            max_series: flags
                .max_series
                .or(file.max_series)
                .unwrap_or(DEFAULT_MAX_SERIES),
            endpoints: file.endpoints,
            credential_sink_volumes: sinks,
            api: match (
                flags.api || file.api,
                flags.api_allow_remote || file.api_allow_remote,
            ) {
                (false, _) => ApiAccess::Off,
                (true, false) => ApiAccess::Loopback,
                (true, true) => ApiAccess::Anyone,
            },
            pin_dir: pin_dir(flags.kernel.pin_dir.clone().or(file.pin_dir)),
            auth_sensor: !(flags.no_auth_sensor || file.no_auth_sensor),
            tls_probe_points: flags
                .tls_probe_points
                .or(file.tls_probe_points)
                .unwrap_or_default(),
            credential_csi_drivers: DEFAULT_CSI_DRIVERS
                .iter()
                .map(|d| d.to_string())
                .chain(file.credential_csi_drivers)
                .fold(Vec::new(), |mut v, d| {
                    if !v.contains(&d) {
                        v.push(d);
                    }
                    v
                }),
        }
    }
}

/// The pin directory asked for, the default if none was, nothing for `none`.
fn pin_dir(asked: Option<PathBuf>) -> Option<PathBuf> {
    Some(asked.unwrap_or_else(|| DEFAULT_PIN_DIR.into())).filter(|d| d.as_os_str() != "none")
}

/// `~/x` becomes `$HOME/x`; nothing else is expanded.
fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{}/{rest}", home.trim_end_matches('/')),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(Path::new("cw.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn full_file_parses() {
        let cfg = parse(
            "listen: 0.0.0.0:9477\nkubelet_root: /k\nwatch: [/a, '/b/*.pem']\n\
             kubeconfig: /kc\nnode_name: n1\nendpoints:\n  - name: vault\n    address: 127.0.0.1\n\
             \x20   port: 8200\n    tls: true\n    kind: vault\ncredential_sink_volumes: [x]\n",
        )
        .unwrap();
        assert_eq!(cfg.listen, Some("0.0.0.0:9477".parse().unwrap()));
        assert_eq!(cfg.watch, vec!["/a", "/b/*.pem"]);
        assert_eq!(cfg.endpoints[0].kind, EndpointKind::Vault);
        assert_eq!(cfg.endpoints[0].port, 8200);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "listen: 1.2.3.4:1\nbogus: 1\n",
                "unknown field `bogus`",
                "line 2",
            ),
            ("watch: /a\n", "invalid type", "line 1"),
            (
                "listen: 1.2.3.4:1\n\nlisten_port: x\n",
                "unknown field",
                "line 3",
            ),
            (
                "endpoints:\n  - name: v\n    address: a\n    port: 99999\n",
                "invalid value",
                "line 4",
            ),
            (
                "endpoints:\n  - name: v\n    address: a\n    port: 1\n    kind: ftp\n",
                "unknown variant",
                "line 5",
            ),
            ("listen: [1\n", "", "line"),
        ];
        for (text, what, line) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("config file cw.yaml: "), "{err}");
            assert!(err.contains(what), "{text:?}: {err}");
            assert!(err.contains(line), "{text:?}: {err}");
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), FileConfig::default());
        assert_eq!(parse("# only a comment\n").unwrap(), FileConfig::default());
    }

    #[test]
    fn flags_override_file_and_watch_lists_add_up() {
        let mut flags = AgentFlags {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            common: Flags {
                watch: vec!["/from/flag".into(), "/from/file".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let file = FileConfig {
            listen: Some("0.0.0.0:1".parse().unwrap()),
            node_name: Some("n".into()),
            watch: vec!["/from/file".into()],
            ..Default::default()
        };
        let cfg = Config::merge(&flags, file);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:0");
        assert_eq!(cfg.node_name.as_deref(), Some("n"));
        assert_eq!(cfg.watch.len(), DEFAULT_WATCH.len() + 2);
        assert_eq!(
            &cfg.watch[DEFAULT_WATCH.len()..],
            ["/from/file", "/from/flag"]
        );
        assert_eq!(cfg.kubelet_root, PathBuf::from(DEFAULT_KUBELET_ROOT));
        assert!(cfg
            .credential_sink_volumes
            .contains(&"vault-secrets".to_owned()));

        flags.common.no_default_watch = true;
        let cfg = Config::merge(&flags, FileConfig::default());
        assert_eq!(cfg.watch, ["/from/flag", "/from/file"]);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:0");
    }
}
