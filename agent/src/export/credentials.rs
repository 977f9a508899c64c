//! The families that describe credentials: info, expiry, issue, staleness, refresh, rotations.
use std::fmt;

use super::series::{Families, Row};
use crate::state::credentials::Named;

/// A credential named for this scrape, with its identity labels rendered ([`super::series::identity`]).
pub type Described<'a> = (Named<'a>, String);

fn dated<'c, 'a>(
    creds: &'c [Described<'a>],
    f: impl Fn(&Named) -> Option<f64> + 'c,
) -> impl Iterator<Item = (Row<'c, 0>, f64)> + 'c {
    creds
        .iter()
        .filter_map(move |(c, id)| Some((Row { id, more: [] }, f(c)?)))
}

pub fn encode(w: &mut Families, creds: &[Described]) -> fmt::Result {
    let info = creds.iter().map(|(c, id)| {
        let more = [
            ("kind", c.kind.as_str()),
            ("source", c.source),
            ("pod_uid", c.record.pod_uid.as_str()),
            ("service_account", c.service_account),
        ];
        (Row { id, more }, 1.0)
    });
    w.gauges("credential_info", "One per known credential file.", info)?;
    w.gauges(
        "credential_expiry_timestamp_seconds",
        "JWT exp or certificate NotAfter of the current generation.",
        dated(creds, |c| c.parsed.expiry),
    )?;
    w.gauges(
        "credential_issued_timestamp_seconds",
        "When the current generation was issued: JWT iat, certificate NotBefore, else when the agent first saw it.",
        dated(creds, |c| Some(c.issued())),
    )?;
    w.gauges(
        "credential_stale_after_timestamp_seconds",
        "JWT kubernetes.io warnafter: when an extended service-account token should be considered stale.",
        dated(creds, |c| c.parsed.stale_after),
    )?;
    w.gauges(
        "credential_refresh_due_timestamp_seconds",
        "Projected service-account tokens: when the kubelet should have rotated it (iat + 80% of its lifetime, at most 24 h).",
        dated(creds, |c| c.refresh_due()),
    )?;
    w.counters(
        "credential_rotations",
        "Generations observed after the first.",
        creds
            .iter()
            .map(|(c, id)| (Row { id, more: [] }, c.rotations)),
    )
}
