//! The families of reads by reader: counts, last read, generation lag, held expiry.
use std::{collections::BTreeMap, fmt};

use super::{
    credentials::Described,
    series::{Families, Row},
};
use crate::{
    sensors::file::tally::Tally,
    state::{credentials::Named, ReaderReads},
    sys::MonotonicClock,
};

pub fn encode<'a>(
    w: &mut Families,
    creds: &'a [Described<'a>],
    tally: &'a Tally<'a>,
) -> fmt::Result {
    let clock = MonotonicClock::now();
    let by_id: BTreeMap<u32, &Described<'a>> = creds.iter().map(|d| (d.0.id, d)).collect();
    // Joined once; each family below is one pass over it, its rows written as they are made
    // (see `Families::family`).
    let joined: Vec<(&Named<'a>, &'a str, &'a str, &ReaderReads)> = tally
        .iter()
        .filter_map(|((id, container), r)| {
            let (c, labels) = *by_id.get(id)?;
            Some((c, labels.as_str(), container.as_ref(), r))
        })
        .collect();
    let rows = || joined.iter().copied();
    let labels = |id: &'a str, container: &'a str| Row {
        id,
        more: [("container", container)],
    };
    w.counters(
        "credential_reads",
        "Opens of the credential for reading, by reader.",
        rows().map(|(_, id, k, r)| (labels(id, k), r.count)),
    )?;
    w.gauges(
        "credential_last_read_timestamp_seconds",
        "Unix time of the reader's last read.",
        rows()
            .filter(|(_, _, _, r)| r.count > 0)
            .map(|(_, id, k, r)| (labels(id, k), clock.to_unix_seconds(r.last_read_ns))),
    )?;
    w.gauges(
        "credential_reader_generation_lag",
        "Rotations since this reader last read the credential (0 = it has read the current generation).",
        rows().filter_map(|(c, id, k, r)| {
            let g = r.newest_generation?;
            Some((labels(id, k), f64::from(c.generation.saturating_sub(g))))
        }),
    )?;
    w.gauges(
        "credential_reader_held_expiry_timestamp_seconds",
        "Expiry of the newest generation this reader has read: below time() it can only hold an expired credential.",
        rows().filter_map(|(c, id, k, r)| {
            let exp = (*c.generation_expiry.get(&r.newest_generation?)?)?;
            Some((labels(id, k), exp))
        }),
    )
}
