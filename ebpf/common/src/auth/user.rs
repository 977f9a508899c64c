//! Userspace side of the auth-call sensor's types: Pod impls and the `DataEvent` decoder.
use super::{ConnectKey, DataEvent, Endpoint, EndpointKey, DATA_CAPTURE, DATA_HEADER};
use crate::{DecodeError, EventKind};
use alloc::vec::Vec;

// SAFETY: repr(C), integers and byte arrays only, no padding (sizes asserted beside each type).
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for ConnectKey {}

/// A `DataEvent` as read off the ring, borrowing its captured bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    /// A `Direction` as its number.
    pub direction: u32,
    pub sock: u64,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub endpoint: u32,
    pub tgid: u32,
    /// Bytes the syscall moved; `bytes.len()` of them were captured.
    pub len: u32,
    pub bytes: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes one `AUTH_EVENTS` record: checks kind and lengths, never panics on kernel bytes.
pub fn decode_data(b: &[u8]) -> Result<Data<'_>, DecodeError> {
    use core::mem::offset_of;
    if b.len() < DATA_HEADER {
        return Err(DecodeError::Short(b.len(), DATA_HEADER));
    }
    let kind = u32_at(b, offset_of!(DataEvent, kind));
    if kind != EventKind::AuthData as u32 {
        return Err(DecodeError::UnknownKind(kind));
    }
    let captured = u32_at(b, offset_of!(DataEvent, captured)) as usize;
    let end = DATA_HEADER + captured.min(DATA_CAPTURE);
    let bytes = b
        .get(DATA_HEADER..end)
        .ok_or(DecodeError::Short(b.len(), end))?;
    Ok(Data {
        direction: u32_at(b, offset_of!(DataEvent, direction)),
        sock: u64_at(b, offset_of!(DataEvent, sock)),
        cgroup_id: u64_at(b, offset_of!(DataEvent, cgroup_id)),
        ts_ns: u64_at(b, offset_of!(DataEvent, ts_ns)),
        endpoint: u32_at(b, offset_of!(DataEvent, endpoint)),
        tgid: u32_at(b, offset_of!(DataEvent, tgid)),
        len: u32_at(b, offset_of!(DataEvent, len)),
        bytes,
    })
}

/// The bytes of an `AUTH_EVENTS` record that carry something: a `DataEvent`'s header and its
/// captured bytes (the rest of its fixed-size reservation is never written), or a whole record of
/// any other kind.
pub fn record_len(b: &[u8]) -> usize {
    use core::mem::offset_of;
    if b.len() >= DATA_HEADER && u32_at(b, 0) == EventKind::AuthData as u32 {
        let captured = u32_at(b, offset_of!(DataEvent, captured)) as usize;
        DATA_HEADER + captured.min(DATA_CAPTURE)
    } else {
        b.len()
    }
}

/// A `SEGMENTS` record (a `SegmentEvent`, the segment's TCP header, its captured payload, the
/// perf buffer's padding) as the `DataEvent` record the decoder takes: the header, then the
/// captured payload alone.
pub fn segment_as_data(b: &[u8]) -> Result<Vec<u8>, DecodeError> {
    use core::mem::offset_of;
    if b.len() < DATA_HEADER + 20 {
        return Err(DecodeError::Short(b.len(), DATA_HEADER + 20));
    }
    let kind = u32_at(b, offset_of!(DataEvent, kind));
    if kind != EventKind::AuthSegment as u32 {
        return Err(DecodeError::UnknownKind(kind));
    }
    // The TCP header's data offset: its length in 32-bit words, in the high nibble of byte 12.
    let tcp_header = usize::from(b[DATA_HEADER + 12] >> 4) * 4;
    let captured = (u32_at(b, offset_of!(DataEvent, captured)) as usize).min(DATA_CAPTURE);
    let start = DATA_HEADER + tcp_header;
    let payload = b
        .get(start..start + captured)
        .ok_or(DecodeError::Short(b.len(), start + captured))?;
    let mut out = Vec::with_capacity(DATA_HEADER + captured);
    out.extend_from_slice(&(EventKind::AuthData as u32).to_ne_bytes());
    out.extend_from_slice(&b[4..DATA_HEADER]);
    out.extend_from_slice(payload);
    Ok(out)
}

/// When the kernel wrote a `DataEvent` or `SegmentEvent` record (`bpf_ktime_get_ns`: the
/// monotonic clock); `None` for a record of another kind.
pub fn event_time(b: &[u8]) -> Option<u64> {
    use core::mem::offset_of;
    let kind = (b.len() >= DATA_HEADER).then(|| u32_at(b, 0))?;
    (kind == EventKind::AuthData as u32 || kind == EventKind::AuthSegment as u32)
        .then(|| u64_at(b, offset_of!(DataEvent, ts_ns)))
}

/// The process of a `MappedEvent` record; `None` for any other record.
pub fn mapped_tgid(b: &[u8]) -> Option<u32> {
    (b.len() >= 8 && u32_at(b, 0) == EventKind::LibraryMapped as u32).then(|| u32_at(b, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(captured: u32, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; DATA_HEADER];
        b[0..4].copy_from_slice(&(EventKind::AuthData as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&1u32.to_ne_bytes());
        b[8..16].copy_from_slice(&0xabcdu64.to_ne_bytes());
        b[32..36].copy_from_slice(&3u32.to_ne_bytes());
        b[40..44].copy_from_slice(&9000u32.to_ne_bytes());
        b[44..48].copy_from_slice(&captured.to_ne_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn decodes_the_captured_bytes_only() {
        let b = record(5, b"HTTP/1.1 200 OK");
        let d = decode_data(&b).unwrap();
        assert_eq!(
            (d.direction, d.sock, d.endpoint, d.len),
            (1, 0xabcd, 3, 9000)
        );
        assert_eq!(d.bytes, b"HTTP/");
    }

    #[test]
    fn short_or_lying_records_are_errors() {
        assert_eq!(decode_data(&[0; 10]), Err(DecodeError::Short(10, 48)));
        let b = record(100, b"abc");
        assert_eq!(decode_data(&b), Err(DecodeError::Short(51, 148)));
        let mut b = record(0, b"");
        b[0] = 1;
        assert_eq!(decode_data(&b), Err(DecodeError::UnknownKind(1)));
    }

    #[test]
    fn a_data_record_is_its_header_and_captured_bytes() {
        let mut b = record(3, b"GET");
        b.resize(DATA_HEADER + DATA_CAPTURE, 0);
        assert_eq!(record_len(&b), DATA_HEADER + 3);
        assert_eq!(decode_data(&b[..record_len(&b)]).unwrap().bytes, b"GET");
        // A lying count is bounded by the capture size; the caller bounds it by the record.
        b[44..48].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(record_len(&b), DATA_HEADER + DATA_CAPTURE);
        assert_eq!(record_len(&[1, 2, 3]), 3);
    }

    /// A `SEGMENTS` record: header, a TCP header of `tcp_words` words, the payload, padding.
    fn segment(tcp_words: u8, payload: &[u8], captured: u32) -> Vec<u8> {
        let mut b = record(captured, b"");
        b[0..4].copy_from_slice(&(EventKind::AuthSegment as u32).to_ne_bytes());
        b[24..32].copy_from_slice(&77u64.to_ne_bytes());
        let mut tcp = vec![0u8; usize::from(tcp_words) * 4];
        tcp[12] = tcp_words << 4;
        b.extend_from_slice(&tcp);
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0; 5]);
        b
    }

    #[test]
    fn a_segment_becomes_a_data_record_of_its_payload() {
        for words in [5, 8, 15] {
            let b = segment(words, b"HTTP/1.1 401 Unauthorized", 12);
            let data = segment_as_data(&b).unwrap();
            let d = decode_data(&data).unwrap();
            assert_eq!((d.direction, d.sock, d.ts_ns), (1, 0xabcd, 77));
            assert_eq!(d.bytes, b"HTTP/1.1 401");
            assert_eq!(event_time(&b), Some(77));
            assert_eq!(event_time(&data), Some(77));
        }
    }

    #[test]
    fn a_segment_that_lies_is_an_error() {
        // More captured bytes than the record holds, a header longer than the record.
        let b = segment(5, b"HTTP", 100);
        assert!(matches!(segment_as_data(&b), Err(DecodeError::Short(..))));
        let mut b = segment(5, b"", 0);
        b[DATA_HEADER + 12] = 0xf0;
        b.truncate(DATA_HEADER + 20);
        assert!(matches!(segment_as_data(&b), Err(DecodeError::Short(..))));
        assert!(matches!(
            segment_as_data(&b[..30]),
            Err(DecodeError::Short(30, _))
        ));
        assert_eq!(
            segment_as_data(&record(0, &[0; 20])),
            Err(DecodeError::UnknownKind(2))
        );
        assert_eq!(event_time(&[3, 0, 0, 0, 1, 0, 0, 0]), None);
    }

    #[test]
    fn mapped_events_name_their_process_and_nothing_else_is_one() {
        let mut b = vec![0u8; 8];
        b[0..4].copy_from_slice(&(EventKind::LibraryMapped as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&4321u32.to_ne_bytes());
        assert_eq!(mapped_tgid(&b), Some(4321));
        assert_eq!(mapped_tgid(&b[..6]), None);
        assert_eq!(mapped_tgid(&record(3, b"GET")), None);
    }
}
