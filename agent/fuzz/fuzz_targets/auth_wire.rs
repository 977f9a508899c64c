//! `sensors::auth::Connection` must not panic on any sequence of captured chunks, must stay
//! bounded, and what it returns must not echo the input.
//!
//! Input: one byte choosing the endpoint kind, then chunks, each a 5-byte header (direction bit,
//! captured length u16 LE, uncaptured length u16 LE) followed by the captured bytes.
#![no_main]

use credwatch::sensors::auth::{Code, Connection, Direction, EndpointKind};
use libfuzzer_sys::fuzz_target;

const KINDS: [EndpointKind; 10] = [
    EndpointKind::Kubernetes,
    EndpointKind::Vault,
    EndpointKind::AwsImds,
    EndpointKind::GcpMetadata,
    EndpointKind::AzureImds,
    EndpointKind::EksPodIdentity,
    EndpointKind::EcsCredentials,
    EndpointKind::AwsSts,
    EndpointKind::Oidc,
    EndpointKind::Other,
];

fuzz_target!(|data: &[u8]| {
    let Some((&kind, mut rest)) = data.split_first() else {
        return;
    };
    let mut conn = Connection::new(KINDS[usize::from(kind) % KINDS.len()]);
    let mut out = Vec::new();
    let mut ns = 0u64;
    while let Some((head, tail)) = rest.split_first_chunk::<5>() {
        let dir = if head[0] & 1 == 0 {
            Direction::Request
        } else {
            Direction::Response
        };
        let captured = usize::from(u16::from_le_bytes([head[1], head[2]])).min(tail.len());
        let lost = usize::from(u16::from_le_bytes([head[3], head[4]]));
        let (chunk, after) = tail.split_at(captured);
        ns += 1;
        out.extend(conn.feed(dir, ns, chunk, captured + lost));
        rest = after;
        // Bounded: the state's description never grows with the input.
        assert!(format!("{conn:?}").len() < 4096);
    }
    out.extend(conn.close());
    for e in &out {
        assert!(e.request_ns >= 1 && e.request_ns <= ns);
        if let Some(r) = e.response_ns {
            assert!(r >= 1 && r <= ns);
        }
        match e.code {
            Code::Status(s) => assert!((100..=599).contains(&s)),
            Code::Unknown => assert!(e.code.label() == "unknown"),
        }
        let _ = e.operation.label();
    }
});
