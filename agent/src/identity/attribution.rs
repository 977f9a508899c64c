//! Attribution: which `container` label a read gets, and what pod metadata says about a pod's
//! credential. The decisions live here; the exporter only renders them.
use super::{
    podmeta::{PodIndex, PodMeta},
    Reader,
};

/// The `container` label of host processes.
pub const NODE: &str = "_node";
/// The `container` label of the kubelet: it re-reads every file of secret, configMap and
/// projected volumes on each resync (its atomic writer compares before writing), which is no use
/// by a workload.
pub const KUBELET: &str = "_kubelet";
/// The `container` label of a reader whose cgroup is gone and was never described (its event
/// was dropped): counted, but not attributable.
pub const UNKNOWN_READER: &str = "_unknown";
/// The `container` label of a process of another pod than the credential's.
pub const OTHER_POD: &str = "_other_pod";
/// The `container` label of a process of the credential's pod that is in no container cgroup we
/// can name (a sandbox runtime such as Kata or gVisor, or the pod cgroup itself).
pub const SANDBOX: &str = "_sandbox";

/// The label of a reader without pod metadata: `_node` for host processes, else the first 12
/// characters of the container id.
pub fn fallback_label(reader: &Reader) -> String {
    match reader {
        Reader::Node { .. } => node_label(reader),
        Reader::Container { container_id, .. } => short_id(container_id),
        Reader::PodSandbox { .. } => SANDBOX.to_owned(),
    }
}

/// `_kubelet` for the kubelet's own cgroup, else `_node`.
fn node_label(reader: &Reader) -> String {
    if reader.is_kubelet() {
        KUBELET.to_owned()
    } else {
        NODE.to_owned()
    }
}

fn short_id(container_id: &str) -> String {
    container_id.chars().take(12).collect()
}

/// True when `reader` is a container outside the pod `cred_pod_uid` (empty for host
/// credentials, which no pod owns).
pub fn is_other_pod(cred_pod_uid: &str, reader: &Reader) -> bool {
    match reader {
        Reader::Node { .. } => false,
        Reader::Container { pod_uid, .. } => {
            !cred_pod_uid.is_empty() && pod_uid.as_deref() != Some(cred_pod_uid)
        }
        Reader::PodSandbox { pod_uid } => !cred_pod_uid.is_empty() && pod_uid != cred_pod_uid,
    }
}

/// The `container` label of a read of a credential owned by the pod `cred_pod_uid` (empty for
/// host credentials): `_node` for host processes, `_other_pod` for a process of another pod,
/// the container's name when pod metadata knows it, else the first 12 characters of its id,
/// `_unknown` when the reader's cgroup is gone and was never described.
pub fn container_label(cred_pod_uid: &str, reader: Option<&Reader>, pods: &PodIndex) -> String {
    let Some(reader) = reader else {
        return UNKNOWN_READER.to_owned();
    };
    if is_other_pod(cred_pod_uid, reader) {
        return OTHER_POD.to_owned();
    }
    match reader {
        Reader::Node { .. } => node_label(reader),
        Reader::PodSandbox { .. } => SANDBOX.to_owned(),
        Reader::Container {
            container_id,
            pod_uid,
            ..
        } => pod_uid
            .as_deref()
            .and_then(|uid| pods.get(uid))
            .and_then(|m| m.containers.get(container_id).cloned())
            .unwrap_or_else(|| short_id(container_id)),
    }
}

/// Labels that aggregate many readers and outlive any one of them: their counts are kept when a
/// reader's cgroup is purged, so these counters never go down.
pub fn is_aggregate_label(label: &str) -> bool {
    AGGREGATE_LABELS.contains(&label)
}

/// The labels that sum several readers; reads of gone readers are kept under them. Their order
/// numbers them in the pinned `KEPT` map: append only.
pub const AGGREGATE_LABELS: [&str; 5] = [NODE, KUBELET, OTHER_POD, UNKNOWN_READER, SANDBOX];

/// Who made a call: the `namespace`, `pod` and `container` labels of the auth metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Workload {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The workload of a process by its cgroup's reader: host processes are `_node` (or `_kubelet`)
/// with empty namespace and pod; a container is its pod's namespace and name and its own name
/// when pod metadata knows them, else the pod uid and the container id's first 12 characters;
/// a gone, never-described cgroup is `_unknown`.
pub fn workload(reader: Option<&Reader>, pods: &PodIndex) -> Workload {
    let Some(reader) = reader else {
        return Workload {
            container: UNKNOWN_READER.to_owned(),
            ..Workload::default()
        };
    };
    let (pod_uid, container) = match reader {
        Reader::Node { .. } => {
            return Workload {
                container: node_label(reader),
                ..Workload::default()
            }
        }
        Reader::PodSandbox { pod_uid } => (Some(pod_uid.as_str()), SANDBOX.to_owned()),
        Reader::Container { pod_uid, .. } => {
            (pod_uid.as_deref(), container_label("", Some(reader), pods))
        }
    };
    match pod_uid.and_then(|uid| pods.get(uid)) {
        Some(m) => Workload {
            namespace: m.namespace.clone(),
            pod: m.name.clone(),
            container,
        },
        None => Workload {
            namespace: String::new(),
            pod: pod_uid.unwrap_or_default().to_owned(),
            container,
        },
    }
}

/// What pod metadata says about a credential of a pod's volume, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub struct PodNames<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub service_account: &'a str,
    /// `secret/<name>`, `serviceaccount/<name>`, `csi/<driver>`, ...; `None` keeps the scan's.
    pub source: Option<&'a str>,
}

/// The names the metadata `m` of a pod gives a credential in its volume `volume` whose source
/// the scan took as `scanned_source`. A projected volume the token's claims already named
/// (`serviceaccount/<name>`) keeps that name.
pub fn names_in<'a>(m: &'a PodMeta, volume: &str, scanned_source: &str) -> PodNames<'a> {
    let source = m
        .volume_sources
        .get(volume)
        .filter(|src| !(*src == "projected" && scanned_source.starts_with("serviceaccount/")))
        .map(String::as_str);
    PodNames {
        namespace: &m.namespace,
        pod: &m.name,
        service_account: &m.service_account,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn container(id: &str, runtime: &str, pod: Option<&str>) -> Reader {
        Reader::Container {
            container_id: id.into(),
            runtime: runtime.into(),
            pod_uid: pod.map(Into::into),
        }
    }

    #[test]
    fn labels() {
        assert_eq!(fallback_label(&Reader::Node { unit: None }), "_node");
        let kubelet = Reader::Node {
            unit: Some("kubelet.service".into()),
        };
        assert_eq!(fallback_label(&kubelet), "_kubelet");
        assert_eq!(
            container_label("p1", Some(&kubelet), &PodIndex::default()),
            "_kubelet"
        );
        assert_eq!(
            fallback_label(&container(ID, "containerd", None)),
            "0123456789ab"
        );
    }

    #[test]
    fn container_labels() {
        let pods = PodIndex::default();
        let id = "c".repeat(64);
        let in_pod = |uid: &str| Reader::Container {
            container_id: id.clone(),
            runtime: "containerd".into(),
            pod_uid: Some(uid.into()),
        };
        assert_eq!(
            container_label("p1", Some(&Reader::Node { unit: None }), &pods),
            "_node"
        );
        assert_eq!(container_label("p1", None, &pods), "_unknown");
        assert_eq!(
            container_label("p1", Some(&in_pod("p1")), &pods),
            "cccccccccccc"
        );
        assert_eq!(
            container_label("p1", Some(&in_pod("p2")), &pods),
            "_other_pod"
        );
        assert_eq!(
            container_label("", Some(&in_pod("p2")), &pods),
            "cccccccccccc",
            "host credential"
        );
        let docker = Reader::Container {
            container_id: id.clone(),
            runtime: "docker".into(),
            pod_uid: None,
        };
        assert_eq!(container_label("p1", Some(&docker), &pods), "_other_pod");
        let sandbox = |uid: &str| Reader::PodSandbox {
            pod_uid: uid.into(),
        };
        assert_eq!(
            container_label("p1", Some(&sandbox("p1")), &pods),
            "_sandbox"
        );
        assert_eq!(
            container_label("p1", Some(&sandbox("p2")), &pods),
            "_other_pod"
        );
        assert!(
            is_aggregate_label("_node")
                && is_aggregate_label("_other_pod")
                && !is_aggregate_label("app")
        );
    }
}
