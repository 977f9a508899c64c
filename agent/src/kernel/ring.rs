//! The event ring: drained into a bounded queue as raw records; decoding happens downstream.
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// Capacity of the queue between the ring-buffer reader and the decoder.
pub const QUEUE_CAPACITY: usize = 4096;

/// The ring is also drained on this timer: producers that skip the wakeup (`AUTH_EVENTS`, whose
/// programs wake the reader only once the ring is half full) are read within it.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Drains the ring buffer into `tx` until the process ends; a full queue drops the record and
/// calls `on_drop`, so the loss is counted. Only the first `meaningful(record)` bytes of each
/// record are copied: a fixed-size reservation is mostly unwritten when little was captured (an
/// auth event reserves 4 KB for a 300-byte request), and the queue would hold it all.
pub async fn drain(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<u8>>,
    meaningful: fn(&[u8]) -> usize,
    on_drop: impl Fn() + Send,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(ring) }?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain_now(guard.get_inner_mut(), &tx, meaningful, &on_drop);
                guard.clear_ready();
            }
            _ = tick.tick() => drain_now(fd.get_mut(), &tx, meaningful, &on_drop),
        }
    }
}

fn drain_now(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Vec<u8>>,
    meaningful: fn(&[u8]) -> usize,
    on_drop: &impl Fn(),
) {
    while let Some(item) = ring.next() {
        let n = meaningful(&item).min(item.len());
        if tx.try_send(item[..n].to_vec()).is_err() {
            on_drop();
        }
    }
}
