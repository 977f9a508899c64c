//! `/metrics`: a prometheus-client collector that reads the kernel's counters and the agent's
//! state at scrape time (nothing is mirrored) and renders them; attribution is decided upstream
//! (`identity::attribution`, `sensors::file::tally`). Names and labels follow the catalog in
//! docs/architecture.md.
mod auth;
mod credentials;
mod health;
mod reads;
mod series;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use prometheus_client::{encoding::DescriptorEncoder, registry::Registry};

use crate::{
    identity::{CgroupResolver, PodIndex, PodMeta},
    kernel::maps::KernelMaps,
    sensors::{auth::connects::ConnectFold, file::tally},
    state::{credentials::Named, State},
};
use series::{Families, SeriesCap};

pub const PREFIX: &str = "credwatch";

#[derive(Debug)]
pub struct Collector {
    state: Arc<State>,
    maps: Option<Arc<KernelMaps>>,
    cgroups: Arc<CgroupResolver>,
    pods: Arc<PodIndex>,
    /// The running kernel's release, for `build_info`.
    pub kernel: String,
    cap: SeriesCap,
    /// The auth-call sensor's connect counters, folded in at every scrape.
    pub connects: Option<ConnectFold>,
}

impl Collector {
    pub fn new(
        state: Arc<State>,
        maps: Option<Arc<KernelMaps>>,
        cgroups: Arc<CgroupResolver>,
        pods: Arc<PodIndex>,
        max_series: usize,
    ) -> Self {
        Self {
            state,
            maps,
            cgroups,
            pods,
            kernel: crate::sys::kernel_release(),
            cap: SeriesCap::new(max_series),
            connects: None,
        }
    }
}

pub fn registry(collector: Collector) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    r.register_collector(Box::new(collector));
    r
}

pub fn render(registry: &Registry) -> String {
    // Sized from the last page: growing a multi-megabyte String by doubling copied it ~20 times.
    static LAST_LEN: AtomicUsize = AtomicUsize::new(0);
    let last = LAST_LEN.load(Ordering::Relaxed);
    let mut out = String::with_capacity(last + last / 8 + 4096);
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    out
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // Live counters and the reads kept in the state, taken together (see `with_read_totals`).
        let kept = |totals| (totals, self.state.folded(), self.state.retired());
        let (totals, folded, retired) = match &self.maps {
            Some(m) => m.with_read_totals(kept),
            None => kept(Vec::new()),
        };
        let records = self.state.credentials();
        // Each pod looked up once (a pod has several credentials), its names borrowed.
        let mut pods: HashMap<&str, Option<Arc<PodMeta>>> = HashMap::new();
        for c in &records {
            if !c.pod_uid.is_empty() {
                pods.entry(&c.pod_uid)
                    .or_insert_with(|| self.pods.get(&c.pod_uid));
            }
        }
        let creds: Vec<Named> = records
            .iter()
            .map(|c| {
                let meta = pods.get(c.pod_uid.as_str()).and_then(Option::as_deref);
                Named::new(c, meta)
            })
            .collect();
        let kernel_and_kept = tally::Counted {
            totals: &totals,
            folded,
            retired,
        };
        let tally = tally::reads_by_label(
            &creds,
            &kernel_and_kept,
            &self.state,
            &self.cgroups,
            &self.pods,
        );
        let mut w = Families {
            enc: &mut enc,
            cap: &self.cap,
            state: &self.state,
        };
        let described: Vec<credentials::Described> = creds
            .into_iter()
            .map(|c| {
                let id = series::identity(&c);
                (c, id)
            })
            .collect();
        credentials::encode(&mut w, &described)?;
        reads::encode(&mut w, &described, &tally)?;
        if let Some(fold) = &self.connects {
            fold.fold();
        }
        auth::encode(&mut w, &self.state)?;
        health::encode(
            &mut w,
            &self.state,
            self.maps.as_deref(),
            self.pods.up(),
            &self.kernel,
            totals.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{DEFAULT_MAX_SERIES, DEFAULT_SERIES_GRACE},
        inventory::{Beneath, Found},
    };
    use credwatch_common::file::InodeKey;

    #[test]
    fn renders_catalog_names_with_zero_reads_and_no_values() {
        let state = Arc::new(State::default());
        state.apply_scan(
            &[Found {
                pod_uid: "".into(),
                volume: "/run/secrets".into(),
                file: "db/password".into(),
                source: "host".into(),
                path: "/run/secrets/db/password".into(),
                at: Beneath::new("/run/secrets", "db/password"),
                inode: InodeKey::new(1, 2),
                modified: 1000.0,
                generations: None,
            }],
            |_, _| Default::default(),
            std::time::Instant::now(),
            1000.0,
            DEFAULT_SERIES_GRACE,
        );
        let mut c = Collector::new(
            state,
            None,
            Arc::new(CgroupResolver::new("/nonexistent")),
            Arc::new(PodIndex::default()),
            DEFAULT_MAX_SERIES,
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
                pod_uid: "".into(),
                volume: "/v".into(),
                file: format!("f{i}"),
                source: "host".into(),
                path: format!("/v/f{i}").into(),
                at: Beneath::new("/v", format!("f{i}")),
                inode: InodeKey::new(1, i + 1),
                modified: 0.0,
                generations: None,
            })
            .collect();
        state.apply_scan(
            &found,
            |_, _| Default::default(),
            std::time::Instant::now(),
            0.0,
            DEFAULT_SERIES_GRACE,
        );
        let c = Collector::new(
            state.clone(),
            None,
            Arc::new(CgroupResolver::new("/nonexistent")),
            Arc::new(PodIndex::default()),
            4,
        );
        let reg = registry(c);
        let text = render(&reg);
        assert_eq!(
            text.matches("credwatch_credential_info{").count(),
            4,
            "{text}"
        );
        // 6 dropped in each of info, issued, rotations, reads: 24, counted once per series.
        let lost = || state.lost(crate::state::UserLoss::Cardinality);
        assert_eq!(lost(), 24);
        render(&reg);
        assert_eq!(lost(), 24, "a series dropped again is not counted again");
    }
}
