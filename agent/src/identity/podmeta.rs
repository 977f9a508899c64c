//! Pod metadata from the Kubernetes API: a watch of this node's pods (kube-rs), kept in an index
//! by pod uid. The agent never depends on it: without it, pods are labelled by uid; counts come
//! from the kernel and labels are applied at scrape time, so metadata arriving late relabels
//! series without double counting.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
    Api, Client,
};

/// How long a deleted pod's metadata is kept, so that late events and series still resolve.
pub const DELETED_POD_TTL: Duration = Duration::from_secs(600);

/// How often deleted pods past their TTL are looked for, at most.
const EVICTION_PERIOD: Duration = Duration::from_secs(30);

/// What the agent needs of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    /// Container id (64 hex, runtime prefix removed) -> container name; init and ephemeral
    /// containers included.
    pub containers: HashMap<String, String>,
    /// Volume name -> `secret/<name>`, `serviceaccount/<name>`, `csi/<driver>`, `projected`, ...
    pub volume_sources: HashMap<String, String>,
    #[serde(skip)]
    pub deleted_at: Option<Instant>,
}

impl PodMeta {
    pub fn from_pod(pod: &Pod) -> Option<PodMeta> {
        let md = &pod.metadata;
        let uid = md.uid.clone()?;
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            let all = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .chain(status.ephemeral_container_statuses.iter().flatten());
            for cs in all {
                // A restarted container's previous id too: its cgroup's reads keep the name
                // (and the counter does not move to a 12-hex label and look like a reset).
                let previous = cs
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.container_id.as_deref());
                for id in [cs.container_id.as_deref(), previous].into_iter().flatten() {
                    if let Some(id) = strip_runtime(id) {
                        containers.insert(id.to_owned(), cs.name.clone());
                    }
                }
            }
        }
        let mut volume_sources = HashMap::new();
        for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
            let source = if let Some(s) = &v.secret {
                format!("secret/{}", s.secret_name.as_deref().unwrap_or(&v.name))
            } else if let Some(p) = &v.projected {
                let sources = p.sources.iter().flatten();
                if sources.clone().any(|s| s.service_account_token.is_some()) {
                    format!("serviceaccount/{service_account}")
                } else if let Some(name) = sources
                    .clone()
                    .find_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
                {
                    format!("secret/{name}")
                } else {
                    "projected".to_owned()
                }
            } else if let Some(c) = &v.csi {
                format!("csi/{}", c.driver)
            } else if v.empty_dir.is_some() {
                "emptydir".to_owned()
            } else {
                continue;
            };
            volume_sources.insert(v.name.clone(), source);
        }
        Some(PodMeta {
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone().unwrap_or_default(),
            uid,
            service_account,
            containers,
            volume_sources,
            deleted_at: None,
        })
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`.
fn strip_runtime(id: &str) -> Option<&str> {
    let (_, id) = id.split_once("://")?;
    super::ids::is_container_id(id).then_some(id)
}

/// Pods of this node by uid, and whether the API is answering.
#[derive(Debug, Default)]
pub struct PodIndex {
    /// Shared: a scrape looks up every pod, and copying each one's maps was a tenth of its time.
    pods: DashMap<String, Arc<PodMeta>>,
    up: AtomicBool,
}

impl PodIndex {
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.get(uid).map(|p| Arc::clone(&p))
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn apply(&self, meta: PodMeta) {
        self.pods.insert(meta.uid.clone(), Arc::new(meta));
    }

    fn delete(&self, uid: &str, now: Instant) {
        if let Some(mut p) = self.pods.get_mut(uid) {
            Arc::make_mut(&mut p).deleted_at.get_or_insert(now);
        }
    }

    /// After a relist: pods that were not listed again are gone.
    fn resync(&self, listed: &HashSet<String>, now: Instant) {
        for mut p in self.pods.iter_mut() {
            if !listed.contains(p.key()) {
                Arc::make_mut(p.value_mut()).deleted_at.get_or_insert(now);
            }
        }
        self.evict_deleted(now);
    }

    /// Forgets pods deleted longer than `DELETED_POD_TTL` ago.
    fn evict_deleted(&self, now: Instant) {
        self.pods.retain(|_, p| {
            p.deleted_at
                .is_none_or(|t| now.duration_since(t) < DELETED_POD_TTL)
        });
    }
}

/// Where the API is, if anywhere.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
}

async fn client(cfg: &ApiConfig) -> anyhow::Result<Option<Client>> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => kube::Config::incluster()?,
        None => return Ok(None),
    };
    Ok(Some(Client::try_from(config)?))
}

/// A kubeconfig error told without anything the file holds: parser messages may quote the text
/// around the fault, which can be a token or a key. Keeps the outermost error's own words (up to
/// its first `: `), the line and column of a parse error, and an I/O error's kind.
fn describe_config_error(e: &anyhow::Error) -> String {
    let outer = e.to_string();
    let mut out = outer
        .split_once(": ")
        .map_or(outer.as_str(), |(head, _)| head)
        .to_owned();
    let whole = format!("{e:#}");
    if let Some(at) = whole.find("line ") {
        let words: Vec<&str> = whole[at..].split_whitespace().take(4).collect();
        if let ["line", l, "column", c] = words.as_slice() {
            let num = |s: &str| s.trim_end_matches([',', ':']).parse::<u64>().ok();
            if let (Some(l), Some(c)) = (num(l), num(c)) {
                out.push_str(&format!(" at line {l} column {c}"));
            }
        }
    }
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        out.push_str(&format!(" ({})", io.kind()));
    }
    out
}

fn node_name(cfg: &ApiConfig) -> String {
    cfg.node_name.clone().unwrap_or_else(|| {
        // The kubelet's default node name is the host name.
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Watches this node's pods until the process ends. Errors (unreachable, 401/403, a dropped or
/// expired watch) are retried with backoff, each time with a fresh list; `index.up()` says
/// whether the last attempt worked.
pub async fn run(cfg: ApiConfig, index: Arc<PodIndex>) {
    let client = match client(&cfg).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::info!("no Kubernetes API configured (no --kubeconfig, not in a cluster): pods are labelled by uid");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %describe_config_error(&e), "cannot configure the Kubernetes client: pods are labelled by uid");
            return;
        }
    };
    let node = node_name(&cfg);
    tracing::info!(node = %node, "watching this node's pods for metadata");
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(290);
    let mut delay = RETRY_MIN;
    let mut last_eviction = Instant::now();
    loop {
        // A fresh watcher lists first. After an error metadata counts as up again only once a
        // list went through: a watch that merely resumes sends nothing that shows it works (with
        // kube's own retries, a 401 on a watch start left `up` at 0 until the next relist).
        let mut stream = watcher(api.clone(), config.clone()).boxed();
        let mut listing: HashSet<String> = HashSet::new();
        while let Some(item) = stream.next().await {
            // Deleted pods go after their TTL even when no relist comes (a watch can last hours).
            if last_eviction.elapsed() >= EVICTION_PERIOD {
                index.evict_deleted(Instant::now());
                last_eviction = Instant::now();
            }
            match item {
                Ok(event) => {
                    if on_event(&index, &mut listing, event) {
                        delay = RETRY_MIN;
                    }
                }
                Err(e) => {
                    if index.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "pod metadata is down: counting goes on, new pods are labelled by uid; retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, "pod watch still failing");
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Backoff between attempts after an error: doubling from `RETRY_MIN` to `RETRY_MAX`, back to
/// the minimum after a list goes through (kube's own default is the same range).
const RETRY_MIN: Duration = Duration::from_millis(800);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Applies one watch event to the index; true when a list completed (metadata is up).
fn on_event(index: &PodIndex, listing: &mut HashSet<String>, event: watcher::Event<Pod>) -> bool {
    match event {
        watcher::Event::Init => listing.clear(),
        watcher::Event::InitApply(pod) => {
            if let Some(meta) = PodMeta::from_pod(&pod) {
                listing.insert(meta.uid.clone());
                index.apply(meta);
            }
        }
        watcher::Event::InitDone => {
            index.resync(listing, Instant::now());
            if !index.up.swap(true, Ordering::Relaxed) {
                tracing::info!(pods = listing.len(), "pod metadata is up");
            }
            return true;
        }
        watcher::Event::Apply(pod) => {
            if let Some(meta) = PodMeta::from_pod(&pod) {
                index.apply(meta);
            }
        }
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod.metadata.uid.as_deref() {
                index.delete(uid, Instant::now());
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metadata_from_api_json() {
        let id = "a".repeat(64);
        let old = "b".repeat(64);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-0", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "serviceAccountName": "builder",
                "containers": [{"name": "app"}],
                "volumes": [
                    {"name": "tls", "secret": {"secretName": "api-tls"}},
                    {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "c"}}
                ]
            },
            "status": {
                "containerStatuses": [{"name": "app", "containerID": format!("containerd://{id}"), "image": "", "imageID": "", "ready": true, "restartCount": 1,
                    "lastState": {"terminated": {"exitCode": 1, "containerID": format!("containerd://{old}")}}}],
                "initContainerStatuses": [{"name": "init", "containerID": "cri-o://bad", "image": "", "imageID": "", "ready": false, "restartCount": 0}]
            }
        }))
        .unwrap();
        let m = PodMeta::from_pod(&pod).unwrap();
        assert_eq!(
            (
                m.namespace.as_str(),
                m.name.as_str(),
                m.service_account.as_str()
            ),
            ("shop", "api-0", "builder")
        );
        assert_eq!(m.containers.get(&id).map(String::as_str), Some("app"));
        assert_eq!(
            m.containers.get(&old).map(String::as_str),
            Some("app"),
            "the restarted container's previous id"
        );
        assert_eq!(m.containers.len(), 2, "a malformed id is ignored");
        assert_eq!(m.volume_sources["tls"], "secret/api-tls");
        assert_eq!(
            m.volume_sources["kube-api-access-x"],
            "serviceaccount/builder"
        );
        assert_eq!(m.volume_sources["vault"], "csi/secrets-store.csi.k8s.io");
        assert_eq!(m.volume_sources["cache"], "emptydir");
        assert!(!m.volume_sources.contains_key("cfg"));
    }

    #[test]
    fn config_errors_never_quote_the_file() {
        let e = anyhow::anyhow!(
            "invalid type: string \"CANARY-token\", expected a map at line 6 column 12"
        )
        .context("failed to parse kubeconfig YAML: near `token: CANARY-token`");
        let d = describe_config_error(&e);
        assert_eq!(d, "failed to parse kubeconfig YAML at line 6 column 12");
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("failed to read kubeconfig from \"/x\"");
        assert_eq!(
            describe_config_error(&io),
            "failed to read kubeconfig from \"/x\" (entity not found)"
        );
    }

    #[test]
    fn deleted_pods_are_kept_for_a_while() {
        let idx = PodIndex::default();
        let t0 = Instant::now();
        idx.apply(PodMeta {
            uid: "a".into(),
            ..Default::default()
        });
        idx.apply(PodMeta {
            uid: "b".into(),
            ..Default::default()
        });
        idx.resync(&HashSet::from(["a".to_owned()]), t0);
        assert!(
            idx.get("b").unwrap().deleted_at.is_some(),
            "not relisted: deleted, still resolvable"
        );
        idx.delete("a", t0);
        idx.evict_deleted(t0 + DELETED_POD_TTL);
        assert!(
            idx.get("a").is_none(),
            "evicted without a relist once its TTL passed"
        );
        idx.resync(&HashSet::new(), t0 + DELETED_POD_TTL);
        assert!(idx.is_empty());
    }
}
