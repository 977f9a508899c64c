//! The endpoint catalog: which (address, port) pairs are authentication endpoints, by name.
//!
//! Built-in entries (the cloud metadata services, EKS pod identity, ECS credentials, AWS STS, and
//! the Kubernetes API from the in-cluster environment or the kubeconfig) come first, then the
//! configured `endpoints:`. Hostnames are resolved here and again every `RESOLVE_EVERY`; the
//! result is the set of routes the kernel's `ENDPOINTS` trie holds. An endpoint's id (its index
//! here) is what the kernel reports; its name is the `endpoint` label.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, ToSocketAddrs as _},
    path::Path,
    time::Duration,
};

use credwatch_common::auth::{Endpoint, ENDPOINT_PLAINTEXT};
use serde::Serialize;

use crate::{
    config::{self, EndpointKind},
    kernel::auth_maps::Route,
};

/// How often hostnames are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// The link-local address every cloud's instance metadata service answers on.
pub const METADATA_V4: [u8; 4] = [169, 254, 169, 254];

/// Where an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// An address range (a single address is a /32 or /128).
    Net { addr: IpAddr, prefix: u8 },
    /// A name, resolved periodically.
    Host(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    pub target: Target,
    pub port: u16,
    pub tls: bool,
    #[serde(serialize_with = "kind_name")]
    pub kind: EndpointKind,
}

fn kind_name<S: serde::Serializer>(k: &EndpointKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind_label(*k))
}

pub fn kind_label(k: EndpointKind) -> &'static str {
    match k {
        EndpointKind::Kubernetes => "kubernetes",
        EndpointKind::Metadata => "metadata",
        EndpointKind::Sts => "sts",
        EndpointKind::Vault => "vault",
        EndpointKind::Oidc => "oidc",
        EndpointKind::Generic => "generic",
    }
}

#[derive(Debug, thiserror::Error)]
#[error("endpoint {name:?}: {why}")]
pub struct Error {
    name: String,
    why: String,
}

/// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or range, or else takes a hostname.
pub fn parse_target(name: &str, address: &str) -> Result<Target, Error> {
    let err = |why: String| Error {
        name: name.to_owned(),
        why,
    };
    let (addr, prefix) = match address.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (address, None),
    };
    let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() else {
        if prefix.is_some() || !is_hostname(address) {
            return Err(err(format!(
                "address {address:?} is neither an IP address, a CIDR range nor a hostname"
            )));
        }
        return Ok(Target::Host(address.to_ascii_lowercase()));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| err(format!("prefix length {p:?} is not 0-{max}")))?,
    };
    Ok(Target::Net { addr: ip, prefix })
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The catalog: built-in entries, then the configured ones. Ids are indexes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

impl Catalog {
    pub fn from_config(cfg: &config::Config) -> Result<Self, Error> {
        let mut entries = builtin(cfg.kubeconfig.as_deref(), &Env::from_process());
        for e in &cfg.endpoints {
            if e.name.is_empty() || e.name.len() > 63 {
                return Err(Error {
                    name: e.name.clone(),
                    why: "a name of 1-63 characters is needed (it becomes a label)".into(),
                });
            }
            if e.port == 0 {
                return Err(Error {
                    name: e.name.clone(),
                    why: "port 0 is not a port".into(),
                });
            }
            entries.push(Entry {
                name: e.name.clone(),
                target: parse_target(&e.name, &e.address)?,
                port: e.port,
                tls: e.tls,
                kind: e.kind,
            });
        }
        Ok(Self { entries })
    }

    /// The endpoint's name, the `endpoint` label; `_unknown` for an id not in the catalog.
    pub fn name(&self, id: u32) -> &str {
        self.entries
            .get(id as usize)
            .map_or("_unknown", |e| e.name.as_str())
    }

    pub fn entry(&self, id: u32) -> Option<&Entry> {
        self.entries.get(id as usize)
    }

    /// Every route of the catalog, hostnames resolved with `resolve`; a route claimed twice
    /// keeps its first entry. Returns the routes and, per entry, its resolved addresses or why not.
    pub fn routes(
        &self,
        resolve: impl Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
    ) -> (BTreeMap<Route, Endpoint>, Vec<Resolved>) {
        let mut routes = BTreeMap::new();
        let mut report = Vec::new();
        for (id, e) in self.entries.iter().enumerate() {
            let nets: Result<Vec<(IpAddr, u8)>, String> = match &e.target {
                Target::Net { addr, prefix } => Ok(vec![(*addr, *prefix)]),
                Target::Host(h) => resolve(h, e.port)
                    .map(|ips| {
                        ips.into_iter()
                            .map(|ip| (ip, if ip.is_ipv4() { 32 } else { 128 }))
                            .collect()
                    })
                    .map_err(|err| err.to_string()),
            };
            let flags = if e.tls { 0 } else { ENDPOINT_PLAINTEXT };
            if let Ok(nets) = &nets {
                for (ip, prefix) in nets {
                    let (addr, prefix) = mapped(*ip, *prefix);
                    let route = Route {
                        addr,
                        prefix,
                        port: e.port,
                    };
                    routes.entry(route).or_insert(Endpoint {
                        id: id as u32,
                        flags,
                    });
                }
            }
            report.push(Resolved {
                name: e.name.clone(),
                port: e.port,
                addresses: nets
                    .as_ref()
                    .map(|n| n.iter().map(|(ip, p)| format!("{ip}/{p}")).collect())
                    .unwrap_or_default(),
                error: nets.err(),
            });
        }
        (routes, report)
    }
}

/// What an entry resolved to, for `credwatch check` and the log.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub port: u16,
    pub addresses: Vec<String>,
    pub error: Option<String>,
}

/// The system resolver.
pub fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = (host, port).to_socket_addrs()?.map(|a| a.ip()).collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// IPv4 as IPv4-mapped IPv6, as the kernel's trie keys are.
fn mapped(ip: IpAddr, prefix: u8) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + prefix.min(32)),
        IpAddr::V6(v6) => (v6.octets(), prefix.min(128)),
    }
}

/// What the built-in entries depend on besides the kubeconfig.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`.
    pub kubernetes_service: Option<(String, u16)>,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`: adds that region's STS hostname.
    pub aws_region: Option<String>,
    /// `/sys/class/dmi/id/sys_vendor`: names the metadata service after the cloud.
    pub sys_vendor: String,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            kubernetes_service: var("KUBERNETES_SERVICE_HOST").map(|h| {
                let port = var("KUBERNETES_SERVICE_PORT")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(443);
                (h, port)
            }),
            aws_region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            sys_vendor: std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default(),
        }
    }
}

/// The name of the 169.254.169.254 service: every cloud answers there, and one address is one
/// endpoint, so the node's own cloud names it (`cloud-metadata` when it cannot be told).
pub fn metadata_name(sys_vendor: &str) -> &'static str {
    let v = sys_vendor.trim();
    if v.contains("Amazon") {
        "aws-imds"
    } else if v.contains("Google") {
        "gcp-metadata"
    } else if v.contains("Microsoft") {
        "azure-imds"
    } else {
        "cloud-metadata"
    }
}

fn net(addr: IpAddr) -> Target {
    Target::Net {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    }
}

fn entry(name: &str, target: Target, port: u16, tls: bool, kind: EndpointKind) -> Entry {
    Entry {
        name: name.to_owned(),
        target,
        port,
        tls,
        kind,
    }
}

/// The built-in entries.
pub fn builtin(kubeconfig: Option<&Path>, env: &Env) -> Vec<Entry> {
    use EndpointKind::{Kubernetes, Metadata, Sts};
    let mut v = Vec::new();
    let api = env
        .kubernetes_service
        .clone()
        .or_else(|| kubeconfig.and_then(kubeconfig_server));
    if let Some((host, port)) = api {
        let target = parse_target("kubernetes", &host).unwrap_or(Target::Host(host));
        v.push(entry("kubernetes", target, port, true, Kubernetes));
    }
    let metadata = IpAddr::from(METADATA_V4);
    let metadata_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254));
    let name = metadata_name(&env.sys_vendor);
    v.push(entry(name, net(metadata), 80, false, Metadata));
    v.push(entry("aws-imds", net(metadata_v6), 80, false, Metadata));
    v.push(entry(
        "eks-pod-identity",
        net(IpAddr::from([169, 254, 170, 23])),
        80,
        false,
        Metadata,
    ));
    let eks_v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23));
    v.push(entry("eks-pod-identity", net(eks_v6), 80, false, Metadata));
    v.push(entry(
        "ecs-credentials",
        net(IpAddr::from([169, 254, 170, 2])),
        80,
        false,
        Metadata,
    ));
    let sts = |h: &str| Target::Host(h.to_owned());
    v.push(entry("aws-sts", sts("sts.amazonaws.com"), 443, true, Sts));
    if let Some(region) = env.aws_region.as_deref().filter(|r| is_hostname(r)) {
        let host = format!("sts.{region}.amazonaws.com");
        v.push(entry("aws-sts", sts(&host), 443, true, Sts));
    }
    v
}

/// The API server of the kubeconfig's current context, as (host, port).
fn kubeconfig_server(path: &Path) -> Option<(String, u16)> {
    let kc = kube::config::Kubeconfig::read_from(path).ok()?;
    let context = kc.current_context.as_deref()?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .clone();
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)?
        .cluster
        .as_ref()?
        .server
        .clone()?;
    server_host_port(&server)
}

/// `https://host:port/path` -> (host, port); the port defaults by scheme.
pub fn server_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default = if scheme == "http" { 80 } else { 443 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_why() {
        assert_eq!(
            parse_target("a", "10.0.0.0/8").unwrap(),
            Target::Net {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        assert_eq!(
            parse_target("a", "::1").unwrap(),
            Target::Net {
                addr: "::1".parse().unwrap(),
                prefix: 128
            }
        );
        assert_eq!(
            parse_target("a", "Vault.Example.com").unwrap(),
            Target::Host("vault.example.com".into())
        );
        for bad in ["10.0.0.0/33", "host/8", "a b", "-x.com", ""] {
            assert!(parse_target("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builtins_follow_the_environment() {
        let env = Env {
            kubernetes_service: Some(("10.96.0.1".into(), 443)),
            aws_region: Some("eu-west-1".into()),
            sys_vendor: "Amazon EC2\n".into(),
        };
        let names: Vec<String> = builtin(None, &env).into_iter().map(|e| e.name).collect();
        assert_eq!(names[0], "kubernetes");
        assert_eq!(names[1], "aws-imds");
        assert!(names.contains(&"eks-pod-identity".to_owned()));
        assert_eq!(names.iter().filter(|n| *n == "aws-sts").count(), 2);
        let bare = builtin(None, &Env::default());
        assert_eq!(bare[0].name, "cloud-metadata");
    }

    #[test]
    fn routes_map_v4_and_keep_the_first_claim() {
        let catalog = Catalog {
            entries: vec![
                entry(
                    "a",
                    net("127.0.0.1".parse().unwrap()),
                    80,
                    false,
                    EndpointKind::Vault,
                ),
                entry(
                    "b",
                    Target::Host("x.test".into()),
                    80,
                    true,
                    EndpointKind::Vault,
                ),
                entry(
                    "c",
                    Target::Host("bad.test".into()),
                    443,
                    true,
                    EndpointKind::Oidc,
                ),
            ],
        };
        let (routes, report) = catalog.routes(|h, _| match h {
            "x.test" => Ok(vec!["127.0.0.1".parse().unwrap(), "::2".parse().unwrap()]),
            _ => Err(std::io::Error::other("no such host")),
        });
        assert_eq!(routes.len(), 2, "{routes:?}");
        let v4 = routes
            .iter()
            .find(|(r, _)| r.prefix == 128 && r.addr[15] == 1)
            .unwrap();
        assert_eq!(v4.0.addr[10..12], [0xff, 0xff]);
        assert_eq!((v4.1.id, v4.1.flags), (0, ENDPOINT_PLAINTEXT));
        assert_eq!(report[2].error.as_deref(), Some("no such host"));
        assert_eq!(report[1].addresses, ["127.0.0.1/32", "::2/128"]);
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            server_host_port("https://10.0.0.1:6443"),
            Some(("10.0.0.1".into(), 6443))
        );
        assert_eq!(
            server_host_port("https://api.example.com/"),
            Some(("api.example.com".into(), 443))
        );
        assert_eq!(
            server_host_port("https://[fd00::1]:6443/x"),
            Some(("fd00::1".into(), 6443))
        );
        assert_eq!(server_host_port("nonsense"), None);
    }
}
