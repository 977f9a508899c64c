//! `credential::parse` must not panic on any input, and what it returns must not echo the input.
#![no_main]

use credwatch::inventory::content::{parse, Kind};
use libfuzzer_sys::fuzz_target;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);

    match parsed.kind {
        Kind::Jwt | Kind::ServiceaccountToken => {
            let text = data.trim_ascii();
            assert!(text.starts_with(b"eyJ"));
            assert_eq!(text.iter().filter(|&&b| b == b'.').count(), 2);
            assert!(parsed.problem.is_none());
            assert_eq!(parsed.certificates, 0);
            assert!(parsed.subject_cn.is_none());
        }
        Kind::Certificate => {
            assert!(parsed.certificates >= 1);
            assert!(parsed.expiry.is_some() && parsed.issued.is_some());
            assert!(parsed.problem.is_none());
            assert!(contains(data, b"-----BEGIN CERTIFICATE"));
        }
        Kind::PrivateKey => assert!(contains(data, b"PRIVATE KEY")),
        Kind::Opaque => {
            assert_eq!(parsed.certificates, 0);
            assert!(parsed.expiry.is_none() && parsed.subject.is_none());
        }
    }
    if parsed.kind == Kind::ServiceaccountToken {
        assert!(parsed.service_account.is_some());
    }
    for t in [
        parsed.expiry,
        parsed.issued,
        parsed.not_before,
        parsed.stale_after,
    ]
    .into_iter()
    .flatten()
    {
        assert!(t.is_finite());
    }

    if let Some(problem) = &parsed.problem {
        // Problem texts are fixed sentences: the input never shows up in them.
        if data.len() > 8 {
            assert!(!contains(problem.as_bytes(), data));
        }
        assert!(problem.is_ascii() && problem.len() < 100);
    }

    // Both renderings work on whatever was parsed.
    let _ = format!("{parsed:?}");
    serde_json::to_string(&parsed).expect("Parsed serializes");
});
