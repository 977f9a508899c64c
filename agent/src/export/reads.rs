//! The families of reads by reader: counts, last read, generation lag, held expiry.
use std::{collections::BTreeMap, fmt};

use super::{
    credentials::credential_labels,
    series::{Families, Labels},
};
use crate::{sensors::file::tally::Tally, state::credentials::Named, sys::MonotonicClock};

pub fn encode(w: &mut Families, creds: &[Named], tally: &Tally) -> fmt::Result {
    let clock = MonotonicClock::now();
    let by_id: BTreeMap<u32, &Named> = creds.iter().map(|c| (c.id, c)).collect();
    let mut read_rows = Vec::new();
    let mut last_rows = Vec::new();
    let mut lag_rows = Vec::new();
    let mut held_rows = Vec::new();
    for ((id, container), r) in tally {
        let Some(c) = by_id.get(id) else { continue };
        let mut l: Labels = credential_labels(c);
        l.push(("container", container.as_ref().into()));
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
    w.counters(
        "credential_reads",
        "Opens of the credential for reading, by reader.",
        read_rows,
    )?;
    w.gauges(
        "credential_last_read_timestamp_seconds",
        "Unix time of the reader's last read.",
        last_rows,
    )?;
    w.gauges(
        "credential_reader_generation_lag",
        "Rotations since this reader last read the credential (0 = it has read the current generation).",
        lag_rows,
    )?;
    w.gauges(
        "credential_reader_held_expiry_timestamp_seconds",
        "Expiry of the newest generation this reader has read: below time() it can only hold an expired credential.",
        held_rows,
    )
}
