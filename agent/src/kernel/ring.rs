//! The event ring: drained into a bounded queue as raw records; decoding happens downstream.
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// Capacity of the queue between the ring-buffer reader and the decoder.
pub const QUEUE_CAPACITY: usize = 4096;

/// Drains the ring buffer into `tx` until the process ends; a full queue drops the record and
/// calls `on_drop`, so the loss is counted.
pub async fn drain(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<u8>>,
    on_drop: impl Fn() + Send,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(ring) }?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if tx.try_send(item.to_vec()).is_err() {
                on_drop();
            }
        }
        guard.clear_ready();
    }
}
