//! The bytes of endpoint sockets, off the `AUTH_EVENTS` ring: one decoder (`wire::Connection`)
//! per socket, its exchanges counted per workload, endpoint, operation and code, timed, and
//! each 401/403 that opens a burst joined to the caller's reads (`failures`).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use credwatch_common::auth::{decode_data, mapped_tgid, Data, Direction as KernelDirection};
use tokio::sync::mpsc;

use super::{
    catalog::Catalog,
    failures::{self, Bursts},
    Code, Connection, Direction, EndpointKind as Kind, Exchange,
};
use crate::{
    config::EndpointKind,
    identity::{attribution, CgroupResolver, PodIndex},
    sensors::file::tally::reader_of,
    state::{
        auth::{AuthFailure, RequestLabels, Workload},
        State, UserLoss,
    },
};

/// Endpoint sockets decoded at once; past it the oldest is closed (its pending requests come
/// out as `unknown`), so a lost close event cannot grow the table.
pub const MAX_CONNECTIONS: usize = 4096;

/// The decoder's kind for a catalogue entry: the configured kind, and for metadata services the
/// entry's name (each cloud's paths differ).
pub fn decoder_kind(catalog: &Catalog, endpoint: u32) -> Kind {
    let Some(e) = catalog.entry(endpoint) else {
        return Kind::Other;
    };
    match e.kind {
        EndpointKind::Kubernetes => Kind::Kubernetes,
        EndpointKind::Vault => Kind::Vault,
        EndpointKind::Sts => Kind::AwsSts,
        EndpointKind::Oidc => Kind::Oidc,
        EndpointKind::Generic => Kind::Other,
        EndpointKind::Metadata => match e.name.as_str() {
            "gcp-metadata" => Kind::GcpMetadata,
            "azure-imds" => Kind::AzureImds,
            "eks-pod-identity" => Kind::EksPodIdentity,
            "ecs-credentials" => Kind::EcsCredentials,
            _ => Kind::AwsImds,
        },
    }
}

/// A 401/403 as the decoder saw it.
struct Failed {
    operation: &'static str,
    code: u16,
    sent_credential: bool,
}

struct Socket {
    conn: Connection,
    cgroup_id: u64,
    endpoint: u32,
    opened: Instant,
}

pub struct Requests {
    pub state: Arc<State>,
    pub cgroups: Arc<CgroupResolver>,
    pub pods: Arc<PodIndex>,
    pub catalog: Arc<Catalog>,
    sockets: HashMap<u64, Socket>,
    bursts: Bursts,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Requests {
    pub fn new(
        state: Arc<State>,
        cgroups: Arc<CgroupResolver>,
        pods: Arc<PodIndex>,
        catalog: Arc<Catalog>,
    ) -> Self {
        Self {
            state,
            cgroups,
            pods,
            catalog,
            sockets: HashMap::new(),
            bursts: Bursts::default(),
        }
    }

    /// Decodes records from the ring until the queue closes. The ring's other kind of record,
    /// a process that mapped a library, goes on to `mapped` (the TLS task; when its queue is
    /// full, the periodic scan finds the process).
    pub async fn handle(mut self, mut rx: mpsc::Receiver<Vec<u8>>, mapped: mpsc::Sender<u32>) {
        while let Some(record) = rx.recv().await {
            if let Some(tgid) = mapped_tgid(&record) {
                let _ = mapped.try_send(tgid);
                continue;
            }
            match decode_data(&record) {
                Ok(data) => self.on_data(&data),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable auth event");
                    self.state.count_lost(UserLoss::Decode, 1);
                }
            }
        }
    }

    pub fn on_data(&mut self, d: &Data) {
        tracing::trace!(
            sock = d.sock,
            direction = d.direction,
            len = d.len,
            captured = d.bytes.len(),
            tgid = d.tgid,
            "auth bytes"
        );
        let direction = match d.direction {
            x if x == KernelDirection::Request as u32 => Direction::Request,
            x if x == KernelDirection::Response as u32 => Direction::Response,
            _ => {
                if let Some(s) = self.sockets.remove(&d.sock) {
                    let exchanges = s.conn.close();
                    self.record(s.cgroup_id, s.endpoint, exchanges);
                }
                return;
            }
        };
        if !self.sockets.contains_key(&d.sock) {
            self.make_room();
            let kind = decoder_kind(&self.catalog, d.endpoint);
            self.sockets.insert(
                d.sock,
                Socket {
                    conn: Connection::new(kind),
                    cgroup_id: d.cgroup_id,
                    endpoint: d.endpoint,
                    opened: Instant::now(),
                },
            );
        }
        let s = self.sockets.get_mut(&d.sock).expect("just inserted");
        let exchanges = s.conn.feed(direction, d.ts_ns, d.bytes, d.len as usize);
        let (cgroup_id, endpoint) = (s.cgroup_id, s.endpoint);
        self.record(cgroup_id, endpoint, exchanges);
    }

    fn make_room(&mut self) {
        if self.sockets.len() < MAX_CONNECTIONS {
            return;
        }
        let oldest = self
            .sockets
            .iter()
            .min_by_key(|(_, s)| s.opened)
            .map(|(k, _)| *k);
        if let Some(s) = oldest.and_then(|k| self.sockets.remove(&k)) {
            let exchanges = s.conn.close();
            self.record(s.cgroup_id, s.endpoint, exchanges);
        }
    }

    fn record(&mut self, cgroup_id: u64, endpoint: u32, exchanges: Vec<Exchange>) {
        if exchanges.is_empty() {
            return;
        }
        let reader = reader_of(&self.state, &self.cgroups, cgroup_id);
        let workload = attribution::workload(reader.as_ref(), &self.pods);
        let name = self.catalog.name(endpoint).to_owned();
        for ex in exchanges {
            let labels = RequestLabels {
                endpoint: name.clone(),
                operation: ex.operation.label(),
                code: ex.code.label().to_owned(),
            };
            let seconds = ex
                .response_ns
                .map(|r| r.saturating_sub(ex.request_ns) as f64 / 1e9);
            self.state
                .with_auth(|a| a.add_request(workload.clone(), labels, seconds));
            if let Code::Status(code @ (401 | 403)) = ex.code {
                let failed = Failed {
                    operation: ex.operation.label(),
                    code,
                    sent_credential: ex.auth_header,
                };
                self.on_failure(cgroup_id, &workload, &name, failed);
            }
        }
    }

    fn on_failure(&mut self, cgroup_id: u64, w: &Workload, endpoint: &str, failed: Failed) {
        let Failed {
            operation,
            code,
            sent_credential,
        } = failed;
        let key = (w.clone(), endpoint.to_owned(), operation);
        if !self.bursts.opens_burst(key, Instant::now()) {
            return;
        }
        let held = failures::held_credentials(
            self.state.reader_record(cgroup_id).as_ref(),
            &self.state.credentials(),
            &self.pods,
        );
        let now = unix_now();
        let mut f = AuthFailure {
            at: now,
            workload: w.clone(),
            endpoint: endpoint.to_owned(),
            operation,
            code,
            sent_credential,
            summary: String::new(),
            credentials: held,
        };
        f.summary = failures::summary(&f, now);
        tracing::warn!(
            namespace = ?f.workload.namespace,
            pod = ?f.workload.pod,
            container = ?f.workload.container,
            endpoint = ?f.endpoint,
            operation = f.operation,
            code = f.code,
            summary = ?f.summary,
            "auth failure"
        );
        self.state.with_auth(|a| a.add_failure(f));
    }
}
