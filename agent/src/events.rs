//! Ring buffer -> decoder -> reader state. The kernel sends only the first read of each
//! (cgroup, credential, generation), so this path's work grows with distinct readers, not reads.
use std::sync::{atomic::Ordering, Arc};

use aya::maps::{MapData, RingBuf};
use credwatch_common::{EventKind, FirstReadEvent};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    identity::{self, CgroupResolver},
    state::{FirstRead, ReaderRecord, State, MAX_FIRST_READS_PER_READER, MAX_READERS},
    sys::MonotonicClock,
};

/// Capacity of the queue between the ring-buffer reader and the decoder.
pub const QUEUE_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than its {1}-byte header")]
    Short(usize, usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FirstRead(FirstReadEvent),
}

/// Decodes one ring-buffer record; checks length and kind, never panics on kernel bytes.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let kind = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or(DecodeError::Short(bytes.len(), 4))?;
    match kind {
        k if k == EventKind::FirstRead as u32 => {
            let size = std::mem::size_of::<FirstReadEvent>();
            if bytes.len() < size {
                return Err(DecodeError::Short(bytes.len(), size));
            }
            // SAFETY: length checked; FirstReadEvent is repr(C) plain data, any bytes are valid.
            let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FirstReadEvent) };
            Ok(Event::FirstRead(ev))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Drains the ring buffer into the queue; a full queue drops the event and counts it.
pub async fn read_ring(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<u8>>,
    state: Arc<State>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(ring) }?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if tx.try_send(item.to_vec()).is_err() {
                state.lost.channel.fetch_add(1, Ordering::Relaxed);
            }
        }
        guard.clear_ready();
    }
}

fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Turns decoded events into reader records and one log line per first read.
pub async fn handle_events(
    mut rx: mpsc::Receiver<Vec<u8>>,
    state: Arc<State>,
    cgroups: Arc<CgroupResolver>,
) {
    while let Some(bytes) = rx.recv().await {
        let ev = match decode(&bytes) {
            Ok(Event::FirstRead(ev)) => ev,
            Err(e) => {
                state.lost.decode.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable event from the kernel");
                continue;
            }
        };
        on_first_read(&state, &cgroups, &ev);
    }
}

pub fn on_first_read(state: &State, cgroups: &CgroupResolver, ev: &FirstReadEvent) {
    let at = MonotonicClock::now().to_unix_seconds(ev.ts_ns);
    let (volume, file, owner) = {
        let creds = state.credentials.lock().expect("credentials lock");
        match creds.get(ev.cred_id) {
            Some(c) => (c.volume.clone(), c.file.clone(), c.pod_uid.clone()),
            None => (
                String::new(),
                format!("credential #{}", ev.cred_id),
                String::new(),
            ),
        }
    };
    let first = FirstRead {
        credential_id: ev.cred_id,
        volume,
        file,
        generation: ev.generation,
        pid: ev.pid,
        tgid: ev.tgid,
        comm: comm(&ev.comm),
        at,
    };
    if !state.readers.contains_key(&ev.cgroup_id) && state.readers.len() >= MAX_READERS {
        state.lost.cardinality.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut rec = state.readers.entry(ev.cgroup_id).or_insert_with(|| {
        let path = cgroups.path_of(ev.cgroup_id, Some(ev.tgid));
        let reader = path
            .as_deref()
            .map(identity::parse_cgroup_path)
            .unwrap_or(identity::Reader::Node { unit: None });
        ReaderRecord {
            cgroup_id: ev.cgroup_id,
            cgroup_path: path,
            container: reader.container_label(),
            reader,
            first_reads: Vec::new(),
        }
    });
    let unit = match &rec.reader {
        identity::Reader::Node { unit } => unit.clone().unwrap_or_default(),
        identity::Reader::Container { .. } => String::new(),
    };
    tracing::info!(
        credential = %format_args!("{}/{}", first.volume, first.file),
        generation = first.generation,
        reader = %rec.container,
        unit = %unit,
        pid = first.tgid,
        comm = %first.comm,
        cgroup = %rec.cgroup_path.as_deref().unwrap_or("?"),
        "first read"
    );
    if let identity::Reader::Container {
        container_id,
        pod_uid,
        ..
    } = &rec.reader
    {
        if !owner.is_empty() && pod_uid.as_deref() != Some(owner.as_str()) {
            tracing::warn!(
                credential = %format_args!("{}/{}", first.volume, first.file),
                owner_pod_uid = %owner,
                reader_pod_uid = %pod_uid.as_deref().unwrap_or("-"),
                reader_container_id = %container_id,
                pid = first.tgid,
                comm = %first.comm,
                "credential read from outside its pod (_other_pod)"
            );
        }
    }
    if rec.first_reads.len() >= MAX_FIRST_READS_PER_READER {
        rec.first_reads.remove(0);
    }
    rec.first_reads.push(first);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FirstReadEvent {
        FirstReadEvent {
            kind: EventKind::FirstRead as u32,
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

    fn bytes(ev: &FirstReadEvent) -> Vec<u8> {
        // SAFETY: plain repr(C) data without padding.
        unsafe {
            std::slice::from_raw_parts(
                ev as *const _ as *const u8,
                std::mem::size_of::<FirstReadEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_and_rejects() {
        let ev = sample();
        let b = bytes(&ev);
        assert_eq!(decode(&b), Ok(Event::FirstRead(ev)));
        assert_eq!(decode(&b[..10]), Err(DecodeError::Short(10, 56)));
        assert_eq!(decode(&b[..2]), Err(DecodeError::Short(2, 4)));
        let mut bad = b.clone();
        bad[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(77)));
        assert_eq!(comm(&ev.comm), "cat");
        assert_eq!(comm(b"sixteen-chars-xx"), "sixteen-chars-xx");
    }

    #[test]
    fn first_read_records_reader_with_bounded_history() {
        let state = State::default();
        let cgroups = CgroupResolver::new("/nonexistent-cgroup-root");
        for i in 0..(MAX_FIRST_READS_PER_READER + 5) {
            let mut ev = sample();
            ev.generation = i as u32;
            on_first_read(&state, &cgroups, &ev);
        }
        let r = state.readers.get(&99).unwrap();
        assert_eq!(r.container, "_node");
        assert_eq!(r.first_reads.len(), MAX_FIRST_READS_PER_READER);
        assert_eq!(
            r.first_reads.last().unwrap().generation as usize,
            MAX_FIRST_READS_PER_READER + 4
        );
        assert_eq!(r.first_reads[0].file, "credential #7");
    }
}
