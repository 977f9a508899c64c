//! The event rings: drained into bounded queues as raw records; decoding happens downstream.
use aya::maps::{perf::PerfEvent, perf::PerfEventArrayBuffer, MapData, RingBuf};
use credwatch_common::auth::{event_time, record_len, segment_as_data};
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// Capacity of the queue between the ring-buffer reader and the decoder.
pub const QUEUE_CAPACITY: usize = 4096;

/// The ring is also drained on this timer: producers that skip the wakeup (`AUTH_EVENTS`, whose
/// programs wake the reader only once the ring is half full; `SEGMENTS`) are read within it.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Auth records are passed on once they are this old: by then every record written earlier is
/// readable (a program writes one within microseconds of taking its time), so none can come
/// later and precede it.
const SETTLE_NS: u64 = 1_000_000;

/// Drains the ring buffer into `tx` until the process ends; a full queue drops the record and
/// calls `on_drop`, so the loss is counted.
pub async fn drain(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<u8>>,
    on_drop: impl Fn() + Send,
) -> std::io::Result<()> {
    passes(ring, |ring| {
        while let Some(item) = ring.next() {
            if tx.try_send(item.to_vec()).is_err() {
                on_drop();
            }
        }
    })
    .await
}

/// Runs `pass` on the ring whenever its producers wake the reader, and every `DRAIN_EVERY`.
async fn passes(
    ring: RingBuf<MapData>,
    mut pass: impl FnMut(&mut RingBuf<MapData>),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(ring) }?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                pass(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => pass(fd.get_mut()),
        }
    }
}

/// Where the auth-call sensor's records come from.
pub struct AuthSources {
    /// `AUTH_EVENTS`.
    pub ring: RingBuf<MapData>,
    /// Each CPU's buffer of `SEGMENTS` (none with the auth-call sensor off).
    pub segments: Vec<PerfEventArrayBuffer<MapData>>,
}

/// The auth-call sensor's two sources, `AUTH_EVENTS` (sends, TLS calls, closes, mapped
/// libraries) and each CPU's `SEGMENTS` buffer (received segments), merged into `tx` in the
/// order the kernel wrote them: a response must reach the decoder after its request, a close
/// after the last response. Only the first `record_len` bytes of a ring record are copied: a
/// record's reservation is mostly unwritten when little was captured (a 300-byte request in a
/// 512-byte record, a 600-byte one in a 4 KB one), and the queue would hold it all. `on_drop` counts a record the
/// full queue refused, `on_undecodable` one that did not decode.
pub async fn drain_auth(
    sources: AuthSources,
    tx: mpsc::Sender<Vec<u8>>,
    on_drop: impl Fn() + Send,
    on_undecodable: impl Fn() + Send,
) -> std::io::Result<()> {
    let AuthSources { ring, mut segments } = sources;
    let mut merge = Merge::default();
    passes(ring, |ring| {
        let settled = crate::sys::monotonic_ns().saturating_sub(SETTLE_NS);
        // The ring first: a record read there was written before every later one of SEGMENTS.
        while let Some(item) = ring.next() {
            merge.push(item[..record_len(&item).min(item.len())].to_vec());
        }
        for buffer in &mut segments {
            buffer.for_each(|event| match event {
                PerfEvent::Sample { head, tail } => match segment_as_data(&[head, tail].concat()) {
                    Ok(record) => merge.push(record),
                    Err(_) => on_undecodable(),
                },
                // Counted by the program, whose bpf_skb_output failed (LostStage::AuthRingBuf).
                PerfEvent::Lost { .. } => {}
            });
        }
        for record in merge.settled(settled) {
            if tx.try_send(record).is_err() {
                on_drop();
            }
        }
    })
    .await
}

/// Records of two sources, passed on in time order once settled.
#[derive(Default)]
struct Merge {
    pending: Vec<Vec<u8>>,
}

impl Merge {
    fn push(&mut self, record: Vec<u8>) {
        self.pending.push(record);
    }

    /// The records written at or before `settled` (and those without a time), oldest first; the
    /// rest wait for a later pass.
    fn settled(&mut self, settled: u64) -> Vec<Vec<u8>> {
        let time = |r: &Vec<u8>| event_time(r).unwrap_or(0);
        // Stable: records of the same time keep the order they were read in.
        self.pending.sort_by_key(time);
        let ready = self.pending.partition_point(|r| time(r) <= settled);
        let later = self.pending.split_off(ready);
        std::mem::replace(&mut self.pending, later)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credwatch_common::{auth::DATA_HEADER, EventKind};

    fn record(ts: u64) -> Vec<u8> {
        let mut b = vec![0u8; DATA_HEADER];
        b[0..4].copy_from_slice(&(EventKind::AuthData as u32).to_ne_bytes());
        b[24..32].copy_from_slice(&ts.to_ne_bytes());
        b
    }

    #[test]
    fn records_go_out_in_time_order_once_settled() {
        let mut m = Merge::default();
        let mapped = vec![3, 0, 0, 0, 9, 0, 0, 0];
        for r in [
            record(30),
            record(10),
            mapped.clone(),
            record(50),
            record(20),
        ] {
            m.push(r);
        }
        let out = m.settled(30);
        assert_eq!(out, vec![mapped, record(10), record(20), record(30)]);
        // A record of an earlier time read in a later pass still goes before those after it.
        m.push(record(40));
        assert_eq!(m.settled(45), vec![record(40)]);
        assert_eq!(m.settled(100), vec![record(50)]);
        assert!(m.settled(100).is_empty());
    }
}
