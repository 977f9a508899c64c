//! The join no other tool makes: a 401/403 from an auth endpoint, told together with the
//! credentials the failing container read most recently (which generation, whether it had
//! expired, whether a newer one was there to read). One event for the first failure of a
//! (pod, container, endpoint, operation) and for each burst after `QUIET` without failures.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    identity::PodIndex,
    state::{
        auth::{AuthFailure, HeldCredential, Workload},
        credentials::Named,
        Credential, ReaderRecord,
    },
};

/// A failure after this long without one starts a new burst (and a new event).
pub const QUIET: Duration = Duration::from_secs(300);
/// Failure keys remembered for burst detection; beyond it the oldest are forgotten.
const MAX_KEYS: usize = 16_384;

#[derive(Debug, Default)]
pub struct Bursts {
    last: HashMap<(Workload, String, &'static str), Instant>,
}

impl Bursts {
    /// True when this failure opens a burst: the first of its key, or the first after `QUIET`.
    pub fn opens_burst(&mut self, key: (Workload, String, &'static str), now: Instant) -> bool {
        if self.last.len() >= MAX_KEYS && !self.last.contains_key(&key) {
            if let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.last.remove(&oldest);
            }
        }
        match self.last.insert(key, now) {
            Some(prev) => now.duration_since(prev) >= QUIET,
            None => true,
        }
    }
}

/// What the container read most recently: per credential, the newest generation it read, named
/// as `/metrics` names it.
pub fn held_credentials(
    reader: Option<&ReaderRecord>,
    creds: &[std::sync::Arc<Credential>],
    pods: &PodIndex,
) -> Vec<HeldCredential> {
    let Some(reader) = reader else {
        return Vec::new();
    };
    let mut newest: HashMap<u32, (u32, f64)> = HashMap::new();
    for r in &reader.first_reads {
        let e = newest
            .entry(r.credential_id)
            .or_insert((r.generation, r.at));
        if r.generation >= e.0 {
            *e = (r.generation, r.at.max(e.1));
        }
    }
    let mut held: Vec<HeldCredential> = newest
        .into_iter()
        .filter_map(|(id, (generation, at))| {
            let record = creds.iter().find(|c| c.id == id)?;
            let meta = pods.get(&record.pod_uid);
            let c = Named::new(record, meta.as_deref());
            Some(HeldCredential {
                namespace: c.namespace.to_owned(),
                pod: c.pod.to_owned(),
                volume: c.volume.clone(),
                file: c.file.clone(),
                kind: c.kind.as_str().to_owned(),
                generation_read: generation,
                last_read: Some(at),
                read_generation_expiry: c.generation_expiry.get(&generation).copied().flatten(),
                current_generation: c.generation,
                current_since: Some(c.generation_seen_at),
                lag: c.generation.saturating_sub(generation),
            })
        })
        .collect();
    // Most recently read first.
    held.sort_by(|a, b| {
        b.last_read
            .partial_cmp(&a.last_read)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    held
}

fn ago(now: f64, t: f64) -> String {
    let s = (now - t).round() as i64;
    let (n, unit) = match s.abs() {
        x if x < 120 => (x, "s"),
        x if x < 7200 => (x / 60, "m"),
        x => (x / 3600, "h"),
    };
    if s >= 0 {
        format!("{n}{unit} ago")
    } else {
        format!("in {n}{unit}")
    }
}

/// "app in pod ns/x got 403 from vault (lookup); it last read token generation 2, expired 4m
/// ago; generation 3 exists since 9m ago".
pub fn summary(f: &AuthFailure, now: f64) -> String {
    let w = &f.workload;
    let pod = if w.namespace.is_empty() {
        w.pod.clone()
    } else {
        format!("{}/{}", w.namespace, w.pod)
    };
    let who = if pod.is_empty() {
        format!("{} on the node", w.container)
    } else {
        format!("{} in pod {pod}", w.container)
    };
    let mut s = format!("{who} got {} from {} ({})", f.code, f.endpoint, f.operation);
    if !f.sent_credential {
        s.push_str(" without sending any credential header");
    }
    match f.credentials.first() {
        None => s.push_str("; it read no watched credential"),
        Some(c) => {
            s.push_str(&format!(
                "; it last read {} {}/{} generation {}",
                c.kind, c.volume, c.file, c.generation_read
            ));
            if let Some(exp) = c.read_generation_expiry {
                let word = if exp <= now { "expired" } else { "expires" };
                s.push_str(&format!(", {word} {}", ago(now, exp)));
            }
            if c.lag > 0 {
                let since = c.current_since.map(|t| format!(" since {}", ago(now, t)));
                s.push_str(&format!(
                    "; generation {} exists{}",
                    c.current_generation,
                    since.unwrap_or_default()
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(held: Vec<HeldCredential>) -> AuthFailure {
        AuthFailure {
            at: 1000.0,
            workload: Workload {
                namespace: "shop".into(),
                pod: "x".into(),
                container: "app".into(),
            },
            endpoint: "vault".into(),
            operation: "lookup",
            code: 403,
            sent_credential: true,
            summary: String::new(),
            credentials: held,
        }
    }

    #[test]
    fn the_summary_says_what_a_person_on_call_needs() {
        let held = HeldCredential {
            namespace: "shop".into(),
            pod: "x".into(),
            volume: "token".into(),
            file: "token".into(),
            kind: "jwt".into(),
            generation_read: 2,
            last_read: Some(100.0),
            read_generation_expiry: Some(1000.0 - 240.0),
            current_generation: 3,
            current_since: Some(1000.0 - 540.0),
            lag: 1,
        };
        assert_eq!(
            summary(&failure(vec![held]), 1000.0),
            "app in pod shop/x got 403 from vault (lookup); it last read jwt token/token \
             generation 2, expired 4m ago; generation 3 exists since 9m ago"
        );
        assert_eq!(
            summary(&failure(vec![]), 1000.0),
            "app in pod shop/x got 403 from vault (lookup); it read no watched credential"
        );
        let mut bare = failure(vec![]);
        bare.sent_credential = false;
        assert!(summary(&bare, 1000.0)
            .contains("403 from vault (lookup) without sending any credential header"));
    }

    #[test]
    fn bursts_open_after_a_quiet_period() {
        let mut b = Bursts::default();
        let k = (Workload::default(), "vault".to_owned(), "lookup");
        let t0 = Instant::now();
        assert!(b.opens_burst(k.clone(), t0));
        assert!(!b.opens_burst(k.clone(), t0 + Duration::from_secs(10)));
        assert!(!b.opens_burst(k.clone(), t0 + Duration::from_secs(300)));
        assert!(b.opens_burst(k, t0 + Duration::from_secs(700)));
    }
}
