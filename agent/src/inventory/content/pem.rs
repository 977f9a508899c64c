//! PEM files: certificate chains (the leaf's dates and CN) and private keys (by kind only).
use x509_parser::{certificate::X509Certificate, pem::Pem};

use super::{Kind, Parsed};

/// Whether a PEM label names a private key (PKCS#8, encrypted PKCS#8, RSA, EC, DSA, OPENSSH, ...).
fn is_private_key_label(label: &[u8]) -> bool {
    label.ends_with(b"PRIVATE KEY")
}

/// Whether any line is a PEM header for a private key. Looked at separately from the decoder so a
/// key whose body does not decode is still reported as a key (the more sensitive reading).
fn has_private_key_header(content: &[u8]) -> bool {
    content.split(|&b| b == b'\n').any(|line| {
        line.strip_prefix(b"-----BEGIN ")
            .and_then(|rest| {
                rest.windows(5)
                    .position(|w| w == b"-----")
                    .map(|end| &rest[..end])
            })
            .is_some_and(is_private_key_label)
    })
}

fn fill_leaf(parsed: &mut Parsed, cert: &X509Certificate<'_>) {
    let validity = cert.validity();
    // Unix seconds fit an f64 exactly for any date an X.509 time can hold.
    parsed.expiry = Some(validity.not_after.timestamp() as f64);
    parsed.issued = Some(validity.not_before.timestamp() as f64);
    parsed.subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
}

pub(super) fn parse_pem(content: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut key = has_private_key_header(content);
    let mut problem = None;
    let mut blocks = 0u32;
    for (i, block) in Pem::iter_from_buffer(content).enumerate() {
        let n = i + 1;
        blocks += 1;
        let pem = match block {
            Ok(pem) => pem,
            Err(_) => {
                problem = Some(format!("PEM block {n} could not be decoded"));
                break;
            }
        };
        if is_private_key_label(pem.label.as_bytes()) {
            key = true;
        } else if pem.label == "CERTIFICATE" {
            match x509_parser::parse_x509_certificate(&pem.contents) {
                Ok((_, cert)) => {
                    if parsed.certificates == 0 {
                        fill_leaf(&mut parsed, &cert);
                    }
                    parsed.certificates = parsed.certificates.saturating_add(1);
                }
                Err(_) => {
                    problem = Some(format!("PEM block {n} is not a valid certificate"));
                    break;
                }
            }
        }
        // `pem.contents` (possibly key material) is dropped here.
    }
    if blocks == 0 && problem.is_none() {
        // A "-----BEGIN " line the decoder skipped (e.g. not UTF-8).
        problem = Some("PEM header could not be read".to_owned());
    }
    if key {
        parsed.kind = Kind::PrivateKey;
        parsed.problem = problem;
        parsed
    } else if let Some(problem) = problem {
        Parsed::opaque(problem)
    } else if parsed.certificates > 0 {
        parsed.kind = Kind::Certificate;
        parsed
    } else {
        // Valid PEM with neither certificates nor keys (public key, CSR, CRL, ...).
        Parsed::default()
    }
}
