//! What the auth-call sensor has counted, by workload: connect outcomes (folded in from the
//! kernel's counters as deltas, so they never go down when a cgroup's kernel entries are
//! removed), classified requests, their durations, and the recent auth failures joined to reads.
use std::collections::{BTreeMap, HashMap, VecDeque};

use credwatch_common::auth::ConnectKey;
use serde::Serialize;

pub use crate::identity::attribution::Workload;

/// Upper bounds of `auth_request_duration_seconds`, in seconds: token and metadata calls take
/// milliseconds when healthy and seconds when not.
pub const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of `DURATION_BUCKETS` (not cumulative).
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Labels of `auth_requests_total` beyond the workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestLabels {
    pub endpoint: String,
    pub operation: &'static str,
    pub code: String,
}

/// The most recent failures kept for `/api/v1/auth-failures`.
pub const MAX_FAILURES: usize = 256;

/// A 401/403 joined to what the calling container last read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuthFailure {
    /// Unix seconds.
    pub at: f64,
    pub workload: Workload,
    pub endpoint: String,
    pub operation: &'static str,
    pub code: u16,
    /// Whether the request carried a credential header (`Authorization`, `X-Vault-Token`,
    /// `X-aws-ec2-metadata-token`, `Metadata-Flavor`...): presence only, never its value. A 401
    /// without one is a client that sent nothing, not a rejected token.
    pub sent_credential: bool,
    /// The message a person on call reads.
    pub summary: String,
    pub credentials: Vec<HeldCredential>,
}

/// One credential the failing container read, as it stood at the failure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeldCredential {
    pub namespace: String,
    pub pod: String,
    pub volume: String,
    pub file: String,
    pub kind: String,
    /// The generation the container last read, and when.
    pub generation_read: u32,
    pub last_read: Option<f64>,
    /// That generation's expiry (Unix seconds), when it has one.
    pub read_generation_expiry: Option<f64>,
    pub current_generation: u32,
    pub current_since: Option<f64>,
    pub lag: u32,
}

/// Rows kept per family (connections, requests). Pods come and go (a CronJob makes a new pod a
/// minute); past this, the row updated longest ago goes, and its series ends.
pub const MAX_ROWS: usize = 50_000;

/// Counters by key, each with the sequence number of its last update, bounded at `MAX_ROWS`.
#[derive(Debug)]
struct Rows<K: Ord> {
    rows: BTreeMap<K, (u64, u64)>,
    seq: u64,
}

impl<K: Ord> Default for Rows<K> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord + Clone> Rows<K> {
    /// Adds `n`; returns whether an old row was evicted to make room.
    fn add(&mut self, key: K, n: u64) -> bool {
        self.seq += 1;
        let mut evicted = false;
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            let oldest = self
                .rows
                .iter()
                .min_by_key(|(_, v)| v.1)
                .map(|(k, _)| k.clone());
            evicted = oldest.and_then(|k| self.rows.remove(&k)).is_some();
        }
        let row = self.rows.entry(key).or_default();
        row.0 += n;
        row.1 = self.seq;
        evicted
    }

    fn list(&self) -> Vec<(K, u64)> {
        self.rows.iter().map(|(k, v)| (k.clone(), v.0)).collect()
    }
}

#[derive(Debug, Default)]
pub struct AuthStats {
    connections: Rows<(Workload, String, &'static str)>,
    /// The kernel's total per counter at the last fold.
    seen: HashMap<ConnectKey, u64>,
    requests: Rows<(Workload, RequestLabels)>,
    /// Rows evicted by `MAX_ROWS`.
    pub evicted: u64,
    durations: BTreeMap<(String, &'static str), Histogram>,
    failures: VecDeque<AuthFailure>,
}

impl AuthStats {
    /// Folds in the kernel's total of one counter; returns the increase since the last fold.
    pub fn fold_connects(&mut self, key: ConnectKey, total: u64) -> u64 {
        let before = self.seen.insert(key, total).unwrap_or(0);
        total.saturating_sub(before)
    }

    pub fn forget_connect(&mut self, key: &ConnectKey) {
        self.seen.remove(key);
    }

    pub fn add_connects(&mut self, w: Workload, endpoint: &str, result: &'static str, n: u64) {
        if self.connections.add((w, endpoint.to_owned(), result), n) {
            self.evicted += 1;
        }
    }

    pub fn connections(&self) -> Vec<((Workload, String, &'static str), u64)> {
        self.connections.list()
    }

    pub fn add_request(&mut self, w: Workload, labels: RequestLabels, seconds: Option<f64>) {
        if let Some(s) = seconds {
            self.durations
                .entry((labels.endpoint.clone(), labels.operation))
                .or_default()
                .observe(s);
        }
        if self.requests.add((w, labels), 1) {
            self.evicted += 1;
        }
    }

    pub fn requests(&self) -> Vec<((Workload, RequestLabels), u64)> {
        self.requests.list()
    }

    pub fn durations(&self) -> Vec<((String, &'static str), Histogram)> {
        self.durations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn add_failure(&mut self, f: AuthFailure) {
        if self.failures.len() == MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(f);
    }

    /// Newest first.
    pub fn failures(&self) -> Vec<AuthFailure> {
        self.failures.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_folds_count_increases_only() {
        let mut s = AuthStats::default();
        let k = ConnectKey {
            cgroup_id: 1,
            endpoint: 0,
            result: 0,
        };
        assert_eq!(s.fold_connects(k, 3), 3);
        assert_eq!(s.fold_connects(k, 3), 0);
        assert_eq!(s.fold_connects(k, 5), 2);
        s.forget_connect(&k);
        assert_eq!(s.fold_connects(k, 1), 1, "a new kernel entry starts again");
    }

    #[test]
    fn rows_are_bounded_and_the_stalest_goes() {
        let mut r: Rows<u32> = Rows::default();
        for k in 0..MAX_ROWS as u32 {
            assert!(!r.add(k, 1));
        }
        r.add(0, 1); // 0 is fresh again; 1 is now the stalest
        assert!(r.add(u32::MAX, 1));
        let keys: Vec<u32> = r.list().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), MAX_ROWS);
        assert!(keys.contains(&0) && !keys.contains(&1) && keys.contains(&u32::MAX));
    }

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.3);
        h.observe(99.0);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[6], 1);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets.iter().sum::<u64>(), 2, "+Inf only in count");
    }

    #[test]
    fn failures_are_bounded_newest_first() {
        let mut s = AuthStats::default();
        for i in 0..MAX_FAILURES + 5 {
            s.add_failure(AuthFailure {
                at: i as f64,
                workload: Workload::default(),
                endpoint: "e".into(),
                operation: "lookup",
                code: 403,
                sent_credential: true,
                summary: String::new(),
                credentials: vec![],
            });
        }
        let f = s.failures();
        assert_eq!(f.len(), MAX_FAILURES);
        assert_eq!(f[0].at, (MAX_FAILURES + 4) as f64);
    }
}
