//! Ring buffer records -> decoder -> reader records, and one log line per first read. The kernel
//! sends only the first read of each (cgroup, credential, generation), so this path's work grows
//! with distinct readers, not reads.
use std::sync::Arc;

use credwatch_common::{decode, file::FirstReadEvent, Event};
use tokio::sync::mpsc;

use crate::{
    identity::{attribution, parse_cgroup_path, CgroupResolver, Reader},
    state::{FirstRead, ReaderRecord, State, UserLoss},
    sys::MonotonicClock,
};

/// Decodes queued records until the queue closes; what does not decode is counted and logged.
pub async fn handle(
    mut rx: mpsc::Receiver<Vec<u8>>,
    state: Arc<State>,
    cgroups: Arc<CgroupResolver>,
) {
    while let Some(bytes) = rx.recv().await {
        match decode(&bytes) {
            Ok(Event::FirstRead(ev)) => on_first_read(&state, &cgroups, &ev),
            Err(e) => {
                state.count_lost(UserLoss::Decode, 1);
                tracing::warn!(error = %e, "undecodable event from the kernel");
            }
        }
    }
}

fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn on_first_read(state: &State, cgroups: &CgroupResolver, ev: &FirstReadEvent) {
    let credential = state.credential(ev.cred_id);
    let (volume, file, owner) = match &credential {
        Some(c) => (c.volume.clone(), c.file.clone(), c.pod_uid.as_str()),
        None => (String::new(), format!("credential #{}", ev.cred_id), ""),
    };
    let first = FirstRead {
        credential_id: ev.cred_id,
        volume,
        file,
        generation: ev.generation,
        pid: ev.pid,
        tgid: ev.tgid,
        comm: comm(&ev.comm),
        at: MonotonicClock::now().to_unix_seconds(ev.ts_ns),
    };
    let Some(path) = cgroups.path_of(ev.cgroup_id, Some(ev.tgid)) else {
        // The cgroup is gone already (a short-lived pod): its reads stay `_unknown` rather than
        // being taken for the node's.
        tracing::info!(credential = ?format!("{}/{}", first.volume, first.file), generation = first.generation, pid = first.tgid, comm = ?first.comm, "first read by a cgroup that is gone");
        return;
    };
    let Some(rec) = state.record_first_read(ev.cgroup_id, &first, || describe(ev.cgroup_id, path))
    else {
        return;
    };
    let unit = match &rec.reader {
        Reader::Node { unit } => unit.clone().unwrap_or_default(),
        Reader::Container { .. } | Reader::PodSandbox { .. } => String::new(),
    };
    // Names, paths and `comm` are chosen by whoever made them: Debug-quoted, so that a newline
    // cannot forge a log line.
    let credential = format!("{}/{}", first.volume, first.file);
    tracing::info!(
        credential = ?credential,
        generation = first.generation,
        reader = ?rec.container,
        unit = ?unit,
        pid = first.tgid,
        comm = ?first.comm,
        cgroup = ?rec.cgroup_path.as_deref().unwrap_or("?"),
        "first read"
    );
    if attribution::is_other_pod(owner, &rec.reader) {
        let (reader_pod, reader_container) = match &rec.reader {
            Reader::Container {
                container_id,
                pod_uid,
                ..
            } => (pod_uid.as_deref().unwrap_or("-"), container_id.as_str()),
            Reader::PodSandbox { pod_uid } => (pod_uid.as_str(), "-"),
            Reader::Node { .. } => ("-", "-"),
        };
        tracing::warn!(
            credential = ?credential,
            owner_pod_uid = ?owner,
            reader_pod_uid = ?reader_pod,
            reader_container_id = %reader_container,
            pid = first.tgid,
            comm = ?first.comm,
            "credential read from outside its pod (_other_pod)"
        );
    }
}

/// A new reader's record, from its cgroup path.
fn describe(cgroup_id: u64, path: String) -> ReaderRecord {
    let reader = parse_cgroup_path(&path);
    ReaderRecord {
        cgroup_id,
        cgroup_path: Some(path),
        container: attribution::fallback_label(&reader),
        reader,
        first_reads: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::readers::MAX_FIRST_READS_PER_READER;

    fn sample() -> FirstReadEvent {
        FirstReadEvent {
            kind: credwatch_common::EventKind::FirstRead as u32,
            cred_id: 7,
            generation: 2,
            pid: 11,
            tgid: 10,
            _pad: 0,
            cgroup_id: 99,
            ts_ns: 123,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(comm(&sample().comm), "cat");
        assert_eq!(comm(b"sixteen-chars-xx"), "sixteen-chars-xx");
    }

    #[test]
    fn first_read_records_reader_with_bounded_history() {
        use std::os::unix::fs::MetadataExt as _;
        let Some(mount) = crate::sys::cgroup2_mount() else {
            eprintln!("no cgroup2 mount here; nothing to check");
            return;
        };
        let state = State::default();
        // A cgroup that cannot be found is not described: its reads stay `_unknown`.
        let gone = CgroupResolver::new("/nonexistent-cgroup-root");
        on_first_read(&state, &gone, &sample());
        assert!(state.readers().is_empty());
        // This process's own cgroup (a host one here).
        let rel = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = rel
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_owned();
        let ino = std::fs::metadata(std::path::Path::new(&mount).join(rel.trim_start_matches('/')))
            .unwrap()
            .ino();
        let cgroups = CgroupResolver::new(&mount);
        for i in 0..(MAX_FIRST_READS_PER_READER + 5) {
            let mut ev = sample();
            ev.generation = i as u32;
            ev.cgroup_id = ino;
            ev.tgid = std::process::id();
            on_first_read(&state, &cgroups, &ev);
        }
        let readers = state.readers();
        let r = &readers[0];
        let own = attribution::fallback_label(&parse_cgroup_path(&rel));
        assert_eq!(r.container, own);
        assert_eq!(r.first_reads.len(), MAX_FIRST_READS_PER_READER);
        assert_eq!(
            r.first_reads.last().unwrap().generation as usize,
            MAX_FIRST_READS_PER_READER + 4
        );
        assert_eq!(r.first_reads[0].file, "credential #7");
    }
}
