//! Userspace side of the shared types: decoding ring-buffer records.
use core::{fmt, mem::size_of};

use crate::{file::FirstReadEvent, Control, EventKind};

// SAFETY: repr(C), integers only, no padding (size asserted beside the type).
unsafe impl aya::Pod for Control {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FirstRead(FirstReadEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// (the record's length, the length its kind needs)
    Short(usize, usize),
    UnknownKind(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short(len, need) => {
                write!(
                    f,
                    "event of {len} bytes is shorter than its {need}-byte header"
                )
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Decodes one ring-buffer record; checks length and kind, never panics on kernel bytes.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let kind = match bytes.first_chunk::<4>() {
        Some(b) => u32::from_ne_bytes(*b),
        None => return Err(DecodeError::Short(bytes.len(), 4)),
    };
    match kind {
        k if k == EventKind::FirstRead as u32 => read_plain(bytes).map(Event::FirstRead),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Marks `repr(C)` types without padding for which any bytes are a valid value.
///
/// # Safety
/// Implement only for such types.
unsafe trait PlainData: Copy {}
// SAFETY: repr(C), integers only, no padding (size asserted in `file`).
unsafe impl PlainData for FirstReadEvent {}

fn read_plain<T: PlainData>(bytes: &[u8]) -> Result<T, DecodeError> {
    let size = size_of::<T>();
    if bytes.len() < size {
        return Err(DecodeError::Short(bytes.len(), size));
    }
    // SAFETY: length checked; T is plain data (see PlainData), read unaligned.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
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
            core::slice::from_raw_parts(
                (ev as *const FirstReadEvent).cast::<u8>(),
                size_of::<FirstReadEvent>(),
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
    }
}
