//! What kind of credential a file holds, judged from its first bytes. Nothing read here is kept:
//! the bytes are looked at and dropped.
use std::{io::Read, path::Path};

use serde::Serialize;

/// Files larger than this are not parsed (they are tracked as opaque).
pub const MAX_PARSE_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ServiceaccountToken,
    Jwt,
    Certificate,
    PrivateKey,
    Opaque,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceaccountToken => "serviceaccount_token",
            Kind::Jwt => "jwt",
            Kind::Certificate => "certificate",
            Kind::PrivateKey => "private_key",
            Kind::Opaque => "opaque",
        }
    }
}

/// Classifies a file's content. A PEM bundle with a private key is a private key (it is the more
/// sensitive part); a compact JWS (three base64url segments, JSON header) is a JWT.
pub fn classify(content: &[u8]) -> Kind {
    let has = |needle: &[u8]| content.windows(needle.len()).any(|w| w == needle);
    if has(b"-----BEGIN ") {
        if has(b"PRIVATE KEY-----") {
            return Kind::PrivateKey;
        }
        if has(b"-----BEGIN CERTIFICATE-----") {
            return Kind::Certificate;
        }
    }
    if looks_like_jwt(content) {
        return Kind::Jwt;
    }
    Kind::Opaque
}

fn looks_like_jwt(content: &[u8]) -> bool {
    let text = content.trim_ascii();
    // base64url of '{"' is "eyJ"; every JOSE header starts with it.
    if !text.starts_with(b"eyJ") {
        return false;
    }
    let parts: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Classifies a file on disk without keeping its content; too large or unreadable is opaque.
pub fn classify_file(path: &Path) -> Kind {
    let Ok(file) = std::fs::File::open(path) else {
        return Kind::Opaque;
    };
    let mut buf = Vec::new();
    match file.take(MAX_PARSE_BYTES + 1).read_to_end(&mut buf) {
        Ok(n) if n as u64 <= MAX_PARSE_BYTES => classify(&buf),
        Ok(_) => {
            tracing::info!(path = %path.display(), "credential file larger than 1 MiB: tracked as opaque, not parsed");
            Kind::Opaque
        }
        Err(_) => Kind::Opaque,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases: &[(&[u8], Kind)] = &[
            (b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n", Kind::PrivateKey),
            (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n", Kind::PrivateKey),
            (b"-----BEGIN EC PRIVATE KEY-----\n", Kind::PrivateKey),
            (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", Kind::Certificate),
            (
                b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN RSA PRIVATE KEY-----\n",
                Kind::PrivateKey,
            ),
            (b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n", Kind::Jwt),
            (b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", Kind::Jwt),
            (b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0", Kind::Opaque),
            (b"eyJ a.b.c", Kind::Opaque),
            (b"[default]\naws_access_key_id = AKIA\n", Kind::Opaque),
            (b"", Kind::Opaque),
            (b"\xff\xfe\x00garbage", Kind::Opaque),
        ];
        for (content, kind) in cases {
            assert_eq!(
                classify(content),
                *kind,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn large_files_are_opaque() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let mut content = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        content.resize(MAX_PARSE_BYTES as usize + 10, b'A');
        std::fs::write(&p, content).unwrap();
        assert_eq!(classify_file(&p), Kind::Opaque);
        assert_eq!(classify_file(&dir.path().join("missing")), Kind::Opaque);
    }
}
