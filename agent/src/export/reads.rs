//! The families of reads by reader: counts, last read, generation lag, held expiry.
use std::{borrow::Cow, collections::BTreeMap, fmt};

use super::{
    credentials::credential_labels,
    series::{Families, Labels},
};
use crate::{
    sensors::file::tally::Tally,
    state::{credentials::Named, ReaderReads},
    sys::MonotonicClock,
};

pub fn encode<'a>(w: &mut Families, creds: &'a [Named<'a>], tally: &'a Tally<'a>) -> fmt::Result {
    let clock = MonotonicClock::now();
    let by_id: BTreeMap<u32, &Named<'a>> = creds.iter().map(|c| (c.id, c)).collect();
    // Joined once; each family below is one pass over it, its rows written as they are made
    // (see `Families::family`).
    let joined: Vec<(&Named<'a>, &Cow<'a, str>, &ReaderReads)> = tally
        .iter()
        .filter_map(|((id, container), r)| Some((*by_id.get(id)?, container, r)))
        .collect();
    let rows = || joined.iter().copied();
    let labels = |c: &Named<'a>, container: &'a Cow<'a, str>| -> Labels<'a> {
        let mut l = credential_labels(c);
        l.push(("container", container.as_ref().into()));
        l
    };
    w.counters(
        "credential_reads",
        "Opens of the credential for reading, by reader.",
        rows().map(|(c, k, r)| (labels(c, k), r.count)),
    )?;
    w.gauges(
        "credential_last_read_timestamp_seconds",
        "Unix time of the reader's last read.",
        rows()
            .filter(|(_, _, r)| r.count > 0)
            .map(|(c, k, r)| (labels(c, k), clock.to_unix_seconds(r.last_read_ns))),
    )?;
    w.gauges(
        "credential_reader_generation_lag",
        "Rotations since this reader last read the credential (0 = it has read the current generation).",
        rows().filter_map(|(c, k, r)| {
            let g = r.newest_generation?;
            Some((labels(c, k), f64::from(c.generation.saturating_sub(g))))
        }),
    )?;
    w.gauges(
        "credential_reader_held_expiry_timestamp_seconds",
        "Expiry of the newest generation this reader has read: below time() it can only hold an expired credential.",
        rows().filter_map(|(c, k, r)| {
            let exp = (*c.generation_expiry.get(&r.newest_generation?)?)?;
            Some((labels(c, k), exp))
        }),
    )
}
