//! The families that describe credentials: info, expiry, issue, staleness, refresh, rotations.
use std::fmt;

use super::series::{Families, Labels};
use crate::state::credentials::Named;

/// A credential's identity labels.
pub fn credential_labels<'a>(c: &Named<'a>) -> Labels<'a> {
    // Room for the most any family adds (`credential_info`'s four): no reallocation per row.
    let mut l = Vec::with_capacity(8);
    l.extend([
        ("namespace", c.namespace.into()),
        ("pod", c.pod.into()),
        ("volume", c.record.volume.as_str().into()),
        ("file", c.record.file.as_str().into()),
    ]);
    l
}

fn dated<'c, 'a>(
    creds: &'c [Named<'a>],
    f: impl Fn(&Named) -> Option<f64> + 'c,
) -> impl Iterator<Item = (Labels<'a>, f64)> + 'c {
    creds
        .iter()
        .filter_map(move |c| Some((credential_labels(c), f(c)?)))
}

pub fn encode(w: &mut Families, creds: &[Named]) -> fmt::Result {
    let info = creds.iter().map(|c| {
        let mut l = credential_labels(c);
        l.extend([
            ("kind", c.kind.as_str().into()),
            ("source", c.source.into()),
            ("pod_uid", c.record.pod_uid.as_str().into()),
            ("service_account", c.service_account.into()),
        ]);
        (l, 1.0)
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
        creds.iter().map(|c| (credential_labels(c), c.rotations)),
    )
}
