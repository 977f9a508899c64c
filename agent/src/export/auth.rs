//! The auth-call families: connect outcomes, classified requests and their durations.
use std::fmt;

use super::series::{ConstHistogram, Families, Labels};
use crate::state::{auth::Workload, auth::DURATION_BUCKETS, State};

fn workload_labels(w: Workload) -> Labels<'static> {
    vec![
        ("namespace", w.namespace.into()),
        ("pod", w.pod.into()),
        ("container", w.container.into()),
    ]
}

pub fn encode(w: &mut Families, state: &State) -> fmt::Result {
    let (connections, requests, durations) =
        state.with_auth(|a| (a.connections(), a.requests(), a.durations()));
    w.counters(
        "auth_connections",
        "TCP connects to catalogued auth endpoints by outcome: established, refused (reset: nothing listens), failed (timeout, unreachable, given up).",
        connections
            .into_iter()
            .map(|((wl, endpoint, result), n)| {
                let mut l = workload_labels(wl);
                l.push(("endpoint", endpoint.into()));
                l.push(("result", result.into()));
                (l, n)
            }),
    )?;
    w.counters(
        "auth_requests",
        "Requests to auth endpoints by operation and HTTP status code (`unknown` when it could not be read).",
        requests
            .into_iter()
            .map(|((wl, r), n)| {
                let mut l = workload_labels(wl);
                l.push(("endpoint", r.endpoint.into()));
                l.push(("operation", r.operation.into()));
                l.push(("code", r.code.into()));
                (l, n)
            }),
    )?;
    w.histograms(
        "auth_request_duration_seconds",
        "Time from a request's first byte written to its response's first byte read.",
        durations.into_iter().map(|((endpoint, operation), h)| {
            let mut buckets: Vec<(f64, u64)> =
                DURATION_BUCKETS.iter().copied().zip(h.buckets).collect();
            let inf = h.count - h.buckets.iter().sum::<u64>();
            buckets.push((f64::MAX, inf));
            let labels: Labels = vec![
                ("endpoint", endpoint.into()),
                ("operation", operation.into()),
            ];
            (
                labels,
                ConstHistogram {
                    sum: h.sum,
                    count: h.count,
                    buckets,
                },
            )
        }),
    )
}
