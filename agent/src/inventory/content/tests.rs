//! Table-driven cases for both parsers, with real keys and certificates made by openssl.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;
use serde_json::Value;

use super::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn std_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const CANARY: &str = "CANARY-d41d8cd98f00b204e9800998ecf8427e";

/// A signature segment that carries the canary (so a leak of the segment or its decoding shows).
fn signature() -> String {
    b64(format!("sig-{CANARY}-0123456789abcdef0123456789abcdef").as_bytes())
}

fn jwt(header: &str, payload: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(payload.as_bytes()),
        signature()
    )
}

const HEADER: &str = r#"{"alg":"RS256","kid":"abc123"}"#;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian), after Howard Hinnant.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// "May  2 12:34:56 2026 GMT" (openssl's default date format) to unix seconds.
fn openssl_date(s: &str) -> f64 {
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 5, "{s}");
    assert_eq!(f[4], "GMT", "{s}");
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == f[0])
    .unwrap() as i64
        + 1;
    let day: i64 = f[1].parse().unwrap();
    let year: i64 = f[3].parse().unwrap();
    let hms: Vec<i64> = f[2].split(':').map(|x| x.parse().unwrap()).collect();
    (days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) as f64
}

/// (NotBefore, NotAfter) of the first certificate in `file`, as openssl prints them.
fn openssl_dates(dir: &Path, file: &str) -> (f64, f64) {
    let out = openssl(
        dir,
        &["x509", "-in", file, "-noout", "-startdate", "-enddate"],
    );
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {out}"))
    };
    (
        openssl_date(field("notBefore=")),
        openssl_date(field("notAfter=")),
    )
}

/// The base64 body lines of every PEM block (key material and certificate DER).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

struct Case {
    name: &'static str,
    content: Vec<u8>,
    expect: Parsed,
    /// Strings that must not appear in the Debug or JSON form of the result.
    secrets: Vec<String>,
}

struct Fixtures {
    _dir: tempfile::TempDir,
    leaf_pem: String,
    leaf_dates: (f64, f64),
    chain_pem: String,
    chain_leaf_dates: (f64, f64),
    pkcs8_key: String,
    ec_key: String,
    rsa_key: String,
}

/// Certificates and keys made with the openssl CLI in a temporary directory.
fn fixtures() -> Fixtures {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    // A self-signed leaf.
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", "/CN=leaf", "-days", "2"],
            &["-keyout", "self.key", "-out", "self.pem"],
        ]
        .concat(),
    );
    // A CA and a leaf it signs, with different lifetimes so the leaf's dates are told apart.
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", "/CN=test-ca", "-days", "30"],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=chain-leaf"],
            &["-keyout", "leaf.key", "-out", "leaf.csr"],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "3",
            "-out",
            "leaf.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "pkcs8.key",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let leaf_dates = openssl_dates(d, "self.pem");
    let chain_leaf_dates = openssl_dates(d, "leaf.pem");
    assert_ne!(chain_leaf_dates, openssl_dates(d, "ca.pem"));
    let f = Fixtures {
        leaf_pem: read("self.pem"),
        leaf_dates,
        chain_pem: read("leaf.pem") + &read("ca.pem"),
        chain_leaf_dates,
        pkcs8_key: read("pkcs8.key"),
        ec_key: read("ec.key"),
        rsa_key: read("rsa.key"),
        _dir: dir,
    };
    assert!(f.pkcs8_key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(f.ec_key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(f.rsa_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    f
}

fn cases(f: &Fixtures) -> Vec<Case> {
    let sig = signature();
    let canary_claim = format!(r#""password":"{CANARY}""#);

    let projected = jwt(
        HEADER,
        &format!(
            r#"{{"aud":["https://kubernetes.default.svc","vault"],"exp":1781000000,"iat":1780996400.5,"nbf":1780996400,"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:payments:api","kubernetes.io":{{"namespace":"payments","node":{{"name":"node-1","uid":"n-uid"}},"pod":{{"name":"api-7d9f","uid":"0b5c2a3e-1111-2222-3333-444455556666"}},"serviceaccount":{{"name":"api","uid":"sa-uid"}},"warnafter":1780999927}},{canary_claim}}}"#
        ),
    );
    let plain = jwt(
        r#"{"alg":"ES256","typ":"JWT"}"#,
        &format!(r#"{{"aud":"sts.amazonaws.com","exp":1781000000,"sub":"user-1",{canary_claim}}}"#),
    );
    let legacy = jwt(
        HEADER,
        &format!(
            r#"{{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":"kube-system","kubernetes.io/serviceaccount/secret.name":"builder-token-x","kubernetes.io/serviceaccount/service-account.name":"builder","kubernetes.io/serviceaccount/service-account.uid":"u-1","sub":"system:serviceaccount:kube-system:builder",{canary_claim}}}"#
        ),
    );
    // Padded base64 is accepted too; surrounding whitespace is trimmed.
    let padded = format!(
        "\n  {}.{}.{}\n",
        base64::engine::general_purpose::URL_SAFE.encode(b"{\"alg\":\"none\"}"),
        base64::engine::general_purpose::URL_SAFE
            .encode(b"{\"exp\":12.25,\"aud\":[\"a\",1,\"b\"]}"),
        sig
    );
    let truncated = &projected[..projected.find('.').unwrap() + 30];
    let not_json = format!(
        "{}.{}.{}",
        b64(HEADER.as_bytes()),
        b64(format!("not json {CANARY}").as_bytes()),
        sig
    );
    let not_object = jwt(HEADER, "[1,2,3]");
    let bad_header = format!("eyJ{}.{}.{}", b64(CANARY.as_bytes()), b64(b"{}"), sig);
    // '*' and '!' are not base64url; base64 errors would name them.
    let bad_b64 = format!(
        "{}.eyJzdWIiOiJ4In0*!{CANARY}.{}",
        b64(HEADER.as_bytes()),
        sig
    );

    let openssh_body = std_b64(format!("openssh-key-v1\0none\0none\0{CANARY}").as_bytes());
    let openssh = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{openssh_body}\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    let bundle = format!("{}{}", f.pkcs8_key, f.leaf_pem);
    let garbage_cert_body = std_b64(format!("not DER at all {CANARY}").as_bytes());
    let garbage_cert =
        format!("-----BEGIN CERTIFICATE-----\n{garbage_cert_body}\n-----END CERTIFICATE-----\n");
    let bad_b64_pem =
        format!("-----BEGIN CERTIFICATE-----\n{CANARY}!!*\n-----END CERTIFICATE-----\n");
    let bad_key_pem =
        format!("-----BEGIN EC PRIVATE KEY-----\n{CANARY}!!*\n-----END EC PRIVATE KEY-----\n");
    let cert_then_garbage = format!("{}{garbage_cert}", f.leaf_pem);
    let public_key = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        std_b64(CANARY.as_bytes())
    );
    let comment_then_cert = format!("# {CANARY}\n{}", f.leaf_pem);

    let jwt_secrets = || vec![sig.clone(), CANARY.to_owned()];
    let pem_secrets = |pem: &str| {
        let mut s = pem_body_lines(pem);
        s.push(CANARY.to_owned());
        s
    };
    let leaf = Parsed {
        kind: Kind::Certificate,
        issued: Some(f.leaf_dates.0),
        expiry: Some(f.leaf_dates.1),
        subject_cn: Some("leaf".into()),
        certificates: 1,
        ..Parsed::default()
    };
    let key = Parsed {
        kind: Kind::PrivateKey,
        ..Parsed::default()
    };
    let opaque = |problem: &str| Parsed::opaque(problem);

    vec![
        Case {
            name: "projected serviceaccount token",
            content: projected.clone().into_bytes(),
            expect: Parsed {
                kind: Kind::ServiceaccountToken,
                expiry: Some(1781000000.0),
                issued: Some(1780996400.5),
                not_before: Some(1780996400.0),
                stale_after: Some(1780999927.0),
                audience: vec!["https://kubernetes.default.svc".into(), "vault".into()],
                subject: Some("system:serviceaccount:payments:api".into()),
                namespace: Some("payments".into()),
                pod_name: Some("api-7d9f".into()),
                pod_uid: Some("0b5c2a3e-1111-2222-3333-444455556666".into()),
                service_account: Some("api".into()),
                ..Parsed::default()
            },
            secrets: jwt_secrets(),
        },
        Case {
            name: "projected token with trailing newline",
            content: format!("{projected}\n").into_bytes(),
            expect: parse(projected.as_bytes()),
            secrets: jwt_secrets(),
        },
        Case {
            name: "plain JWT, aud string",
            content: plain.into_bytes(),
            expect: Parsed {
                kind: Kind::Jwt,
                expiry: Some(1781000000.0),
                audience: vec!["sts.amazonaws.com".into()],
                subject: Some("user-1".into()),
                ..Parsed::default()
            },
            secrets: jwt_secrets(),
        },
        Case {
            name: "legacy secret-based serviceaccount token",
            content: legacy.into_bytes(),
            expect: Parsed {
                kind: Kind::ServiceaccountToken,
                subject: Some("system:serviceaccount:kube-system:builder".into()),
                namespace: Some("kube-system".into()),
                service_account: Some("builder".into()),
                ..Parsed::default()
            },
            secrets: jwt_secrets(),
        },
        Case {
            name: "padded base64, float exp, mixed aud array",
            content: padded.into_bytes(),
            expect: Parsed {
                kind: Kind::Jwt,
                expiry: Some(12.25),
                audience: vec!["a".into(), "b".into()],
                ..Parsed::default()
            },
            secrets: jwt_secrets(),
        },
        Case {
            name: "unsecured JWT with empty signature",
            content: format!(
                "{}.{}.",
                b64(b"{\"alg\":\"none\"}"),
                b64(b"{\"sub\":\"x\"}")
            )
            .into_bytes(),
            expect: Parsed {
                kind: Kind::Jwt,
                subject: Some("x".into()),
                ..Parsed::default()
            },
            secrets: vec![],
        },
        Case {
            name: "truncated JWT",
            content: truncated.as_bytes().to_vec(),
            expect: opaque("looks like a JWT but does not have three dot-separated parts"),
            secrets: vec![truncated.to_owned()],
        },
        Case {
            name: "JWT cut inside the payload",
            content: format!(
                "{}.{}",
                &projected[..projected.rfind('.').unwrap() - 8],
                sig
            )
            .into_bytes(),
            expect: opaque("looks like a JWT but its payload is not JSON"),
            secrets: jwt_secrets(),
        },
        Case {
            name: "JWT with non-JSON payload",
            content: not_json.into_bytes(),
            expect: opaque("looks like a JWT but its payload is not JSON"),
            secrets: jwt_secrets(),
        },
        Case {
            name: "JWT with non-object payload",
            content: not_object.into_bytes(),
            expect: opaque("looks like a JWT but its payload is not a JSON object"),
            secrets: jwt_secrets(),
        },
        Case {
            name: "JWT with non-JSON header",
            content: bad_header.into_bytes(),
            expect: opaque("looks like a JWT but its header is not JSON"),
            secrets: jwt_secrets(),
        },
        Case {
            name: "JWT with bad base64",
            content: bad_b64.into_bytes(),
            expect: opaque("looks like a JWT but its payload is not base64url"),
            secrets: vec![sig.clone(), CANARY.to_owned(), "*!".to_owned()],
        },
        Case {
            name: "four-part token",
            content: format!("{projected}.{sig}").into_bytes(),
            expect: opaque("looks like a JWT but does not have three dot-separated parts"),
            secrets: jwt_secrets(),
        },
        Case {
            name: "base64 JSON without dots is opaque",
            content: b64(b"{\"auths\":{}}").into_bytes(),
            expect: Parsed::default(),
            secrets: vec![],
        },
        Case {
            name: "PEM certificate",
            content: f.leaf_pem.clone().into_bytes(),
            expect: leaf.clone(),
            secrets: pem_secrets(&f.leaf_pem),
        },
        Case {
            name: "PEM certificate after a comment line",
            content: comment_then_cert.into_bytes(),
            expect: leaf.clone(),
            secrets: pem_secrets(&f.leaf_pem),
        },
        Case {
            name: "PEM chain, leaf first",
            content: f.chain_pem.clone().into_bytes(),
            expect: Parsed {
                kind: Kind::Certificate,
                issued: Some(f.chain_leaf_dates.0),
                expiry: Some(f.chain_leaf_dates.1),
                subject_cn: Some("chain-leaf".into()),
                certificates: 2,
                ..Parsed::default()
            },
            secrets: pem_secrets(&f.chain_pem),
        },
        Case {
            name: "PKCS#8 private key",
            content: f.pkcs8_key.clone().into_bytes(),
            expect: key.clone(),
            secrets: pem_secrets(&f.pkcs8_key),
        },
        Case {
            name: "EC private key",
            content: f.ec_key.clone().into_bytes(),
            expect: key.clone(),
            secrets: pem_secrets(&f.ec_key),
        },
        Case {
            name: "RSA private key",
            content: f.rsa_key.clone().into_bytes(),
            expect: key.clone(),
            secrets: pem_secrets(&f.rsa_key),
        },
        Case {
            name: "OPENSSH private key",
            content: openssh.clone().into_bytes(),
            expect: key.clone(),
            secrets: vec![openssh_body.clone(), CANARY.to_owned()],
        },
        Case {
            name: "key and certificate bundle",
            content: bundle.clone().into_bytes(),
            expect: Parsed {
                kind: Kind::PrivateKey,
                ..leaf.clone()
            },
            secrets: pem_secrets(&bundle),
        },
        Case {
            name: "PEM certificate with garbage DER",
            content: garbage_cert.into_bytes(),
            expect: opaque("PEM block 1 is not a valid certificate"),
            secrets: vec![garbage_cert_body.clone(), CANARY.to_owned()],
        },
        Case {
            name: "PEM certificate with garbage base64",
            content: bad_b64_pem.into_bytes(),
            expect: opaque("PEM block 1 could not be decoded"),
            secrets: vec![CANARY.to_owned()],
        },
        Case {
            name: "certificate followed by garbage certificate",
            content: cert_then_garbage.into_bytes(),
            expect: opaque("PEM block 2 is not a valid certificate"),
            secrets: vec![garbage_cert_body, CANARY.to_owned()],
        },
        Case {
            name: "private key with garbage body stays a private key",
            content: bad_key_pem.into_bytes(),
            expect: Parsed {
                problem: Some("PEM block 1 could not be decoded".into()),
                ..key.clone()
            },
            secrets: vec![CANARY.to_owned()],
        },
        Case {
            name: "PEM header without end",
            content: b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec(),
            expect: opaque("PEM block 1 could not be decoded"),
            secrets: vec!["MIIB".to_owned()],
        },
        Case {
            name: "public key is opaque",
            content: public_key.into_bytes(),
            expect: Parsed::default(),
            secrets: vec![CANARY.to_owned()],
        },
        Case {
            name: "plain opaque secret",
            content: format!("[default]\naws_secret_access_key = {CANARY}\n").into_bytes(),
            expect: Parsed::default(),
            secrets: vec![CANARY.to_owned()],
        },
        Case {
            name: "empty",
            content: vec![],
            expect: Parsed::default(),
            secrets: vec![],
        },
        Case {
            name: "binary garbage",
            content: b"\xff\xfe\x00garbage\x80eyJ.\x00-----BEGIN \xff".to_vec(),
            expect: Parsed::default(),
            secrets: vec![],
        },
        Case {
            name: "binary garbage in a PEM header",
            content: b"-----BEGIN \xff\xfe PRIVATE KEY-----\n\x00\x01\n".to_vec(),
            expect: Parsed {
                problem: Some("PEM header could not be read".into()),
                ..key.clone()
            },
            secrets: vec![],
        },
    ]
}

#[test]
fn parses() {
    let f = fixtures();
    for case in cases(&f) {
        let got = parse(&case.content);
        assert_eq!(got, case.expect, "case {:?}", case.name);
        assert_eq!(parse(&case.content).kind, case.expect.kind, "{}", case.name);
    }
}

#[test]
fn never_holds_content() {
    let f = fixtures();
    for case in cases(&f) {
        let parsed = parse(&case.content);
        let debug = format!("{parsed:?}");
        let json = serde_json::to_string(&parsed).unwrap();
        for secret in &case.secrets {
            assert!(!debug.contains(secret.as_str()), "{}: {debug}", case.name);
            assert!(!json.contains(secret.as_str()), "{}: {json}", case.name);
        }
        if let Some(problem) = &parsed.problem {
            let content = String::from_utf8_lossy(&case.content);
            assert!(
                !content.contains(problem.as_str()),
                "{}: {problem}",
                case.name
            );
        }
    }
}

#[test]
fn json_shape() {
    let parsed = Parsed {
        kind: Kind::ServiceaccountToken,
        expiry: Some(1.5),
        ..Parsed::default()
    };
    let v: Value = serde_json::to_value(&parsed).unwrap();
    assert_eq!(v["kind"], "serviceaccount_token");
    assert_eq!(v["expiry"], 1.5);
    assert_eq!(v["problem"], Value::Null);
    assert_eq!(Kind::default(), Kind::Opaque);
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn files() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    write(d, "tls.crt", f.leaf_pem.as_bytes());
    let at = |name: &str| Beneath::new(d, name);
    let cert = at("tls.crt");
    assert_eq!(parse_file(&cert), parse(f.leaf_pem.as_bytes()));
    assert_eq!(parse_file(&cert).kind, Kind::Certificate);

    // 5 MiB that would be a certificate if it were read: not parsed.
    let mut big = f.leaf_pem.clone().into_bytes();
    big.resize(5 * 1024 * 1024, b'A');
    write(d, "big", &big);
    let big = at("big");
    let parsed = parse_file(&big);
    assert_eq!(parsed, Parsed::opaque("larger than 1 MiB: not parsed"));
    assert_eq!(parse_file(&big).kind, Kind::Opaque);

    // Exactly 1 MiB is still parsed.
    let mut edge = f.leaf_pem.clone().into_bytes();
    edge.resize(MAX_PARSE_BYTES as usize, b'\n');
    write(d, "edge", &edge);
    let edge = at("edge");
    assert_eq!(parse_file(&edge).kind, Kind::Certificate);

    let missing = parse_file(&at("missing"));
    assert_eq!(missing.kind, Kind::Opaque);
    assert_eq!(
        missing.problem.as_deref(),
        Some("could not be opened: entity not found")
    );
    // A directory is not a regular file.
    let unreadable = parse_file(&Beneath::new(d, ""));
    assert_eq!(unreadable.kind, Kind::Opaque);
    assert!(unreadable.problem.is_some());

    // A symlink below the root, to a real certificate, is not followed; a FIFO is not opened
    // (it would block); and the parser thread answers the same.
    std::os::unix::fs::symlink(d.join("tls.crt"), d.join("link")).unwrap();
    let link = parse_file(&at("link"));
    assert_eq!(link.kind, Kind::Opaque);
    assert!(link.problem.is_some());
    let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut parser = Parser::default();
    let start = std::time::Instant::now();
    assert_eq!(
        parser.parse(&at("fifo")).problem.as_deref(),
        Some("not parsed: not a regular file")
    );
    assert!(start.elapsed() < PARSE_TIMEOUT, "a FIFO never blocks");
    assert_eq!(parser.parse(&cert).kind, Kind::Certificate);
}
