//! `/metrics`: a prometheus-client collector that reads the kernel's counters and the agent's
//! state at scrape time (nothing is mirrored). Names and labels follow the catalog in design.md.
use std::{collections::BTreeMap, fmt, sync::Arc};

use credwatch_common::LostStage;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    identity::{self, CgroupResolver, Reader, NODE},
    podmeta::PodIndex,
    probes::{KernelMaps, ReadTotal},
    state::{CredentialRecord, State},
    sys::MonotonicClock,
};

pub const PREFIX: &str = "credwatch";
/// The `container` label of a reader whose cgroup is gone and was never described (its event
/// was dropped): counted, but not attributable.
pub const UNKNOWN_READER: &str = "_unknown";
/// The `container` label of a process of another pod than the credential's.
pub const OTHER_POD: &str = "_other_pod";
/// Series per metric family; beyond it series are dropped and counted as
/// `events_lost_total{stage="cardinality"}` (once per distinct series). `--max-series`.
pub const DEFAULT_MAX_SERIES: usize = 50_000;

type Labels = Vec<(&'static str, String)>;

/// One reader's reads of one credential, over all its cgroups and the credential's generations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderReads {
    pub count: u64,
    pub last_read_ns: u64,
    pub newest_generation: Option<u32>,
}

impl ReaderReads {
    pub fn add(&mut self, o: &ReaderReads) {
        self.count += o.count;
        self.last_read_ns = self.last_read_ns.max(o.last_read_ns);
        self.newest_generation = match (self.newest_generation, o.newest_generation) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[derive(Debug)]
pub struct Collector {
    pub state: Arc<State>,
    pub maps: Option<Arc<KernelMaps>>,
    pub cgroups: Arc<CgroupResolver>,
    pub pods: Arc<PodIndex>,
    pub kernel: String,
    pub max_series: usize,
    /// Hashes of series dropped by the cap, so each is counted once.
    pub dropped: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Collector {
    pub fn new(
        state: Arc<State>,
        maps: Option<Arc<KernelMaps>>,
        cgroups: Arc<CgroupResolver>,
        pods: Arc<PodIndex>,
    ) -> Self {
        Self {
            state,
            maps,
            cgroups,
            pods,
            kernel: crate::sys::kernel_release(),
            max_series: DEFAULT_MAX_SERIES,
            dropped: Default::default(),
        }
    }

    /// Keeps at most `max_series` rows of a `credential_*` family (the others have a fixed
    /// size, and the loss counters must never be hidden); counts each dropped series once.
    fn cap<V>(&self, name: &str, mut rows: Vec<(Labels, V)>) -> Vec<(Labels, V)> {
        if rows.len() <= self.max_series || !name.starts_with("credential_") {
            return rows;
        }
        let mut dropped = self.dropped.lock().expect("dropped lock");
        let mut new = 0;
        for (labels, _) in rows.drain(self.max_series..) {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (name, &labels).hash(&mut h);
            // Bounded memory: past a million distinct drops, count without remembering.
            if dropped.len() > 1_000_000 || dropped.insert(h.finish()) {
                new += 1;
            }
        }
        self.state
            .lost
            .cardinality
            .fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        rows
    }
}

pub fn registry(collector: Collector) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    r.register_collector(Box::new(collector));
    r
}

pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

fn identity(c: &CredentialRecord) -> Labels {
    vec![
        ("namespace", c.namespace.clone()),
        ("pod", c.pod.clone()),
        ("volume", c.volume.clone()),
        ("file", c.file.clone()),
    ]
}

fn with(mut l: Labels, k: &'static str, v: impl Into<String>) -> Labels {
    l.push((k, v.into()));
    l
}

impl Collector {
    fn counters(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        rows: &[(Labels, u64)],
    ) -> fmt::Result {
        let rows = self.cap(name, rows.to_vec());
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in &rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauges(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        rows: &[(Labels, f64)],
    ) -> fmt::Result {
        let rows = self.cap(name, rows.to_vec());
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        if let [(labels, v)] = rows.as_slice() {
            if labels.is_empty() {
                return ConstGauge::new(*v).encode(m);
            }
        }
        for (labels, v) in &rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Who a reader cgroup is: from its first-read event, else from its cgroup path; `None` when the
/// cgroup is gone and was never described.
pub fn reader_of(state: &State, cgroups: &CgroupResolver, cgroup_id: u64) -> Option<Reader> {
    if let Some(r) = state.readers.get(&cgroup_id) {
        return Some(r.reader.clone());
    }
    cgroups
        .path_of(cgroup_id, None)
        .map(|p| identity::parse_cgroup_path(&p))
}

/// The `container` label of a read of a credential owned by the pod `cred_pod_uid` (empty for
/// host credentials): `_node` for host processes, `_other_pod` for a process of another pod,
/// the container's name when pod metadata knows it, else the first 12 characters of its id,
/// `_unknown` when the reader's cgroup is gone and was never described.
pub fn container_label(cred_pod_uid: &str, reader: Option<&Reader>, pods: &PodIndex) -> String {
    match reader {
        None => UNKNOWN_READER.to_owned(),
        Some(Reader::Node { .. }) => NODE.to_owned(),
        Some(Reader::Container {
            container_id,
            pod_uid,
            ..
        }) => {
            let own = !cred_pod_uid.is_empty() && pod_uid.as_deref() == Some(cred_pod_uid);
            if !cred_pod_uid.is_empty() && !own {
                return OTHER_POD.to_owned();
            }
            pod_uid
                .as_deref()
                .and_then(|uid| pods.get(uid))
                .and_then(|m| m.containers.get(container_id).cloned())
                .unwrap_or_else(|| {
                    Reader::Container {
                        container_id: container_id.clone(),
                        runtime: String::new(),
                        pod_uid: None,
                    }
                    .container_label()
                })
        }
    }
}

/// Fills a pod credential's labels from pod metadata, when there is some.
pub fn with_pod_metadata(mut c: CredentialRecord, pods: &PodIndex) -> CredentialRecord {
    if let Some(m) = (!c.pod_uid.is_empty())
        .then(|| pods.get(&c.pod_uid))
        .flatten()
    {
        c.namespace = m.namespace.clone();
        c.pod = m.name.clone();
        c.service_account = m.service_account.clone();
        if let Some(src) = m.volume_sources.get(&c.volume) {
            if !(src == "projected" && c.source.starts_with("serviceaccount/")) {
                c.source = src.clone();
            }
        }
    }
    c
}

/// Labels that aggregate many readers and outlive any one of them: their counts are kept when a
/// reader's cgroup is purged, so these counters never go down.
pub fn is_aggregate_label(label: &str) -> bool {
    [NODE, OTHER_POD, UNKNOWN_READER].contains(&label)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let clock = MonotonicClock::now();
        let totals: Vec<ReadTotal> = self
            .maps
            .as_ref()
            .map(|m| m.read_totals())
            .unwrap_or_default();
        let creds: Vec<CredentialRecord> = self
            .state
            .credentials
            .lock()
            .expect("credentials lock")
            .iter()
            .map(|c| with_pod_metadata(c.clone(), &self.pods))
            .collect();

        let by_id: BTreeMap<u32, &CredentialRecord> = creds.iter().map(|c| (c.id, c)).collect();
        // Reads by (credential, container label): summed over generations and cgroups.
        let mut reads: BTreeMap<(u32, String), ReaderReads> = BTreeMap::new();
        for c in &creds {
            // Present with 0 before anyone reads it: "mounted, never read" is one expression;
            // for host processes and, with pod metadata, every container of the owning pod.
            reads.entry((c.id, NODE.to_owned())).or_default();
            if let Some(m) = (!c.pod_uid.is_empty())
                .then(|| self.pods.get(&c.pod_uid))
                .flatten()
            {
                for name in m.containers.values() {
                    reads.entry((c.id, name.clone())).or_default();
                }
            }
        }
        for ((cred_id, label), r) in self.state.retired.lock().expect("retired lock").iter() {
            if by_id.contains_key(cred_id) {
                reads.entry((*cred_id, label.clone())).or_default().add(r);
            }
        }
        let mut readers: std::collections::HashMap<u64, Option<Reader>> = Default::default();
        for t in &totals {
            let Some(c) = by_id.get(&t.key.cred_id) else {
                continue; // purged
            };
            let reader = readers
                .entry(t.key.cgroup_id)
                .or_insert_with(|| reader_of(&self.state, &self.cgroups, t.key.cgroup_id));
            let label = container_label(&c.pod_uid, reader.as_ref(), &self.pods);
            let e = reads.entry((t.key.cred_id, label)).or_default();
            e.count += t.count;
            e.last_read_ns = e.last_read_ns.max(t.last_read_ns);
            if t.count > 0 {
                let g = t.key.generation;
                e.newest_generation = Some(e.newest_generation.map_or(g, |n| n.max(g)));
            }
        }

        let info: Vec<(Labels, f64)> = creds
            .iter()
            .map(|c| {
                let mut l = identity(c);
                l.extend([
                    ("kind", c.kind.as_str().to_owned()),
                    ("source", c.source.clone()),
                    ("pod_uid", c.pod_uid.clone()),
                    ("service_account", c.service_account.clone()),
                ]);
                (l, 1.0)
            })
            .collect();
        self.gauges(
            &mut enc,
            "credential_info",
            "One per known credential file.",
            &info,
        )?;

        let dated = |f: fn(&CredentialRecord) -> Option<f64>| -> Vec<(Labels, f64)> {
            creds
                .iter()
                .filter_map(|c| Some((identity(c), f(c)?)))
                .collect()
        };
        self.gauges(
            &mut enc,
            "credential_expiry_timestamp_seconds",
            "JWT exp or certificate NotAfter of the current generation.",
            &dated(|c| c.parsed.expiry),
        )?;
        let issued: Vec<(Labels, f64)> = creds.iter().map(|c| (identity(c), c.issued())).collect();
        self.gauges(&mut enc,
            "credential_issued_timestamp_seconds",
            "When the current generation was issued: JWT iat, certificate NotBefore, else when the agent first saw it.",
            &issued,
        )?;

        self.gauges(&mut enc,
            "credential_stale_after_timestamp_seconds",
            "JWT kubernetes.io warnafter: when an extended service-account token should be considered stale.",
            &dated(|c| c.parsed.stale_after),
        )?;
        self.gauges(&mut enc,
            "credential_refresh_due_timestamp_seconds",
            "Projected service-account tokens: when the kubelet should have rotated it (iat + 80% of its lifetime, at most 24 h).",
            &dated(CredentialRecord::refresh_due),
        )?;
        let rotations: Vec<(Labels, u64)> =
            creds.iter().map(|c| (identity(c), c.rotations)).collect();
        self.counters(
            &mut enc,
            "credential_rotations",
            "Generations observed after the first.",
            &rotations,
        )?;

        let mut read_rows = Vec::new();
        let mut last_rows = Vec::new();
        let mut lag_rows = Vec::new();
        let mut held_rows = Vec::new();
        for ((id, container), r) in &reads {
            let Some(c) = by_id.get(id) else { continue };
            let l = with(identity(c), "container", container.clone());
            if r.count > 0 {
                last_rows.push((l.clone(), clock.to_unix_seconds(r.last_read_ns)));
            }
            if let Some(g) = r.newest_generation {
                lag_rows.push((l.clone(), f64::from(c.generation.saturating_sub(g))));
                if let Some(Some(exp)) = c.generation_expiry.get(&g) {
                    held_rows.push((l.clone(), *exp));
                }
            }
            read_rows.push((l, r.count));
        }
        self.counters(
            &mut enc,
            "credential_reads",
            "Opens of the credential for reading, by reader.",
            &read_rows,
        )?;
        self.gauges(
            &mut enc,
            "credential_last_read_timestamp_seconds",
            "Unix time of the reader's last read.",
            &last_rows,
        )?;
        self.gauges(&mut enc,
            "credential_reader_generation_lag",
            "Rotations since this reader last read the credential (0 = it has read the current generation).",
            &lag_rows,
        )?;
        self.gauges(&mut enc,
            "credential_reader_held_expiry_timestamp_seconds",
            "Expiry of the newest generation this reader has read: below time() it can only hold an expired credential.",
            &held_rows,
        )?;

        let kernel_lost = |s| self.maps.as_ref().map(|m| m.lost(s)).unwrap_or(0);
        let ul = &self.state.lost;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let lost = [
            ("kernel_ringbuf", kernel_lost(LostStage::RingBuf)),
            ("kernel_reads_map", kernel_lost(LostStage::ReadsMap)),
            ("kernel_watched_map", load(&ul.watched_map)),
            ("channel", load(&ul.channel)),
            ("decode", load(&ul.decode)),
            ("cardinality", load(&ul.cardinality)),
        ];
        let lost: Vec<(Labels, u64)> = lost
            .iter()
            .map(|(s, v)| (vec![("stage", s.to_string())], *v))
            .collect();
        self.counters(
            &mut enc,
            "events_lost",
            "Everything dropped anywhere, by stage.",
            &lost,
        )?;

        let probes: Vec<(Labels, f64)> = self
            .state
            .probes
            .lock()
            .expect("probes lock")
            .iter()
            .map(|p| {
                (
                    vec![("probe", p.probe.clone())],
                    if p.attached { 1.0 } else { 0.0 },
                )
            })
            .collect();
        self.gauges(
            &mut enc,
            "probe_attached",
            "1 when the probe is attached.",
            &probes,
        )?;

        self.gauges(
            &mut enc,
            "pod_metadata_up",
            "1 while the Kubernetes pod watch works; 0 without an API or while it fails (pods are then labelled by uid).",
            &[(vec![], if self.pods.up() { 1.0 } else { 0.0 })],
        )?;
        self.gauges(
            &mut enc,
            "build_info",
            "The agent's version and the kernel it runs on.",
            &[(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("kernel", self.kernel.clone()),
                ],
                1.0,
            )],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Found;
    use credwatch_common::InodeKey;

    #[test]
    fn renders_catalog_names_with_zero_reads_and_no_values() {
        let state = Arc::new(State::default());
        state.credentials.lock().unwrap().apply(
            &[Found {
                pod_uid: String::new(),
                volume: "/run/secrets".into(),
                file: "db/password".into(),
                source: "host".into(),
                path: "/run/secrets/db/password".into(),
                inode: InodeKey::new(1, 2),
                modified: 1000.0,
                generations: None,
            }],
            |_| crate::credential::Parsed::default(),
            std::time::Instant::now(),
            1000.0,
            crate::state::REMOVED_GRACE,
        );
        let mut c = Collector::new(
            state,
            None,
            Arc::new(CgroupResolver::new("/nonexistent")),
            Arc::new(PodIndex::default()),
        );
        c.kernel = "6.18.0".into();
        let reg = registry(c);
        let text = render(&reg);
        let id = r#"namespace="",pod="",volume="/run/secrets",file="db/password""#;
        for want in [
            format!("credwatch_credential_info{{{id},kind=\"opaque\",source=\"host\",pod_uid=\"\",service_account=\"\"}} 1"),
            format!("credwatch_credential_reads_total{{{id},container=\"_node\"}} 0"),
            format!("credwatch_credential_rotations_total{{{id}}} 0"),
            format!("credwatch_credential_issued_timestamp_seconds{{{id}}} 1000.0"),
            "credwatch_events_lost_total{stage=\"kernel_ringbuf\"} 0".to_owned(),
            "credwatch_events_lost_total{stage=\"cardinality\"} 0".to_owned(),
            "credwatch_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1".to_owned(),
            "credwatch_pod_metadata_up 0".to_owned(),
            "# TYPE credwatch_credential_reads counter".to_owned(),
            "# EOF".to_owned(),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        assert!(
            !text.contains("credential_last_read_timestamp_seconds{"),
            "no last-read before a read"
        );
    }

    #[test]
    fn series_beyond_the_cap_are_dropped_and_counted_once() {
        let state = Arc::new(State::default());
        let found: Vec<Found> = (0..10)
            .map(|i| Found {
                pod_uid: String::new(),
                volume: "/v".into(),
                file: format!("f{i}"),
                source: "host".into(),
                path: format!("/v/f{i}").into(),
                inode: InodeKey::new(1, i + 1),
                modified: 0.0,
                generations: None,
            })
            .collect();
        state.credentials.lock().unwrap().apply(
            &found,
            |_| crate::credential::Parsed::default(),
            std::time::Instant::now(),
            0.0,
            crate::state::REMOVED_GRACE,
        );
        let mut c = Collector::new(
            state.clone(),
            None,
            Arc::new(CgroupResolver::new("/nonexistent")),
            Arc::new(PodIndex::default()),
        );
        c.max_series = 4;
        let reg = registry(c);
        let text = render(&reg);
        assert_eq!(
            text.matches("credwatch_credential_info{").count(),
            4,
            "{text}"
        );
        // 6 dropped in each of info, issued, rotations, reads: 24, counted once per series.
        let lost = || {
            state
                .lost
                .cardinality
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(lost(), 24);
        render(&reg);
        assert_eq!(lost(), 24, "a series dropped again is not counted again");
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
        assert!(
            is_aggregate_label("_node")
                && is_aggregate_label("_other_pod")
                && !is_aggregate_label("app")
        );
    }
}
