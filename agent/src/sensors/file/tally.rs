//! The kernel's read counters joined to readers: reads by (credential, `container` label),
//! summed over cgroups and generations. Attribution is identity's; this only adds up.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
};

use crate::{
    identity::{attribution, CgroupResolver, PodIndex, Reader},
    kernel::maps::ReadTotal,
    state::{credentials::Named, ReaderReads, State},
};

/// (credential id, `container` label) -> reads; labels borrow from pod metadata where they can.
pub type Tally<'a> = BTreeMap<(u32, Cow<'a, str>), ReaderReads>;

/// Who a reader cgroup is: from its first-read event, else from its cgroup path; `None` when the
/// cgroup is gone and was never described.
pub fn reader_of(state: &State, cgroups: &CgroupResolver, cgroup_id: u64) -> Option<Reader> {
    state
        .reader(cgroup_id)
        .or_else(|| cgroups.reader(cgroup_id))
}

/// Reads as one scrape saw them: the kernel's live counters and what the state keeps of counters
/// that left the kernel (taken together, see `KernelMaps::with_read_totals`).
pub struct Counted<'a> {
    pub totals: &'a [ReadTotal],
    /// (reader cgroup, credential id) -> reads of generations no longer watched.
    pub folded: Vec<((u64, u32), ReaderReads)>,
    /// (credential id, aggregate label) -> reads of reader cgroups that are gone.
    pub retired: Vec<((u32, String), ReaderReads)>,
}

/// Every row `/metrics` shows for reads of `creds`: a row at 0 for every container of the owning
/// pod, or for host processes (`_node`) where no container is known (host credentials, pods
/// without metadata), so "mounted, never read" is one expression and a first read is an
/// increase; reads kept for readers that are gone; and the live counters in `totals`. (A zero
/// `_node` row beside the containers' was a fifth of a node's series, for a reader that is
/// rare and shows anyway once it reads.)
pub fn reads_by_label<'a>(
    creds: &[Named<'a>],
    counted: &'a Counted,
    state: &State,
    cgroups: &CgroupResolver,
    pods: &PodIndex,
) -> Tally<'a> {
    let by_id: BTreeMap<u32, &Named> = creds.iter().map(|c| (c.id, c)).collect();
    let mut reads = Tally::new();
    for c in creds {
        let mut named = false;
        for name in c.meta.iter().flat_map(|m| m.containers.values()) {
            reads.entry((c.id, Cow::Borrowed(name))).or_default();
            named = true;
        }
        if !named {
            reads
                .entry((c.id, Cow::Borrowed(attribution::NODE)))
                .or_default();
        }
    }
    for ((cred_id, label), r) in &counted.retired {
        if by_id.contains_key(cred_id) {
            reads
                .entry((*cred_id, Cow::Borrowed(label)))
                .or_default()
                .add(r);
        }
    }
    // Live kernel counters and the folded counts of retired generations, by reader cgroup.
    let by_cgroup = counted
        .totals
        .iter()
        .map(|t| {
            let r = ReaderReads::of_counter(t.count, t.last_read_ns, t.key.generation);
            ((t.key.cgroup_id, t.key.cred_id), r)
        })
        .chain(counted.folded.iter().cloned());
    let mut readers: HashMap<u64, Option<Reader>> = HashMap::new();
    for ((cgroup_id, cred_id), r) in by_cgroup {
        let Some(c) = by_id.get(&cred_id) else {
            continue; // purged
        };
        let reader = readers
            .entry(cgroup_id)
            .or_insert_with(|| reader_of(state, cgroups, cgroup_id));
        let label = attribution::container_label(&c.pod_uid, reader.as_ref(), pods);
        reads
            .entry((cred_id, Cow::Owned(label)))
            .or_default()
            .add(&r);
    }
    reads
}
