//! What a credential file holds, judged from its content: the kind (service-account token, JWT,
//! certificate, private key, opaque) and the claims needed for expiry and identity. Nothing secret
//! read here is kept: the bytes are looked at and dropped, and [`Parsed`] only holds claims, dates
//! and names. Problem texts are fixed sentences that never quote the content.
use std::{io::Read, sync::mpsc, time::Duration};

use serde::Serialize;

use super::Beneath;

mod jwt;
mod pem;
#[cfg(test)]
mod tests;

use jwt::parse_jwt;
use pem::parse_pem;

/// Files larger than this are not parsed (they are tracked as opaque).
pub const MAX_PARSE_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ServiceaccountToken,
    Jwt,
    Certificate,
    PrivateKey,
    #[default]
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

/// What a credential file says about itself. Never holds the secret: only claims needed for expiry
/// and identity (exp, iat, nbf, warnafter, aud, sub, kubernetes.io names) and certificate dates/CN.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Parsed {
    pub kind: Kind,
    /// JWT `exp`, or the leaf certificate's NotAfter; unix seconds.
    pub expiry: Option<f64>,
    /// JWT `iat`, or the leaf certificate's NotBefore; unix seconds.
    pub issued: Option<f64>,
    /// JWT `nbf`; unix seconds.
    pub not_before: Option<f64>,
    /// JWT `"kubernetes.io": {"warnafter": N}`: when the kubelet should have refreshed the token.
    pub stale_after: Option<f64>,
    /// JWT `aud` (a string or an array of strings).
    pub audience: Vec<String>,
    /// JWT `sub`.
    pub subject: Option<String>,
    /// `kubernetes.io.namespace` (or the legacy `kubernetes.io/serviceaccount/namespace`).
    pub namespace: Option<String>,
    /// `kubernetes.io.pod.name`.
    pub pod_name: Option<String>,
    /// `kubernetes.io.pod.uid`.
    pub pod_uid: Option<String>,
    /// `kubernetes.io.serviceaccount.name` (or the legacy
    /// `kubernetes.io/serviceaccount/service-account.name`).
    pub service_account: Option<String>,
    /// The leaf (first) certificate's subject CN.
    pub subject_cn: Option<String>,
    /// Number of certificates in a PEM chain.
    pub certificates: u32,
    /// Why the content was not understood, for a log line. Never contains any byte of the content.
    pub problem: Option<String>,
}

impl Parsed {
    pub(super) fn opaque(problem: impl Into<String>) -> Self {
        Parsed {
            problem: Some(problem.into()),
            ..Parsed::default()
        }
    }
}

/// Parses a credential file's content. Never panics; see [`Parsed`] for what is kept.
///
/// - PEM (a line starting with `-----BEGIN `): a block labelled `... PRIVATE KEY` makes it a
///   private key (certificate dates are still filled from the leaf if present); otherwise
///   `CERTIFICATE` blocks make it a certificate, the first one being the leaf. Blocks that do not
///   decode, or certificates that do not parse, make it opaque with a problem, unless a private
///   key header is present (then it stays a private key, with the problem noted).
/// - A compact JWS (`eyJ...`, header.payload.signature, base64url): a JWT, or a service-account
///   token if it has `kubernetes.io.serviceaccount.name` or the legacy secret-based claims.
///   Something that looks like a JWT but does not decode is opaque with a problem.
/// - Anything else is opaque with no problem: a plain opaque secret.
pub fn parse(content: &[u8]) -> Parsed {
    if content
        .split(|&b| b == b'\n')
        .any(|l| l.starts_with(b"-----BEGIN "))
    {
        return parse_pem(content);
    }
    let text = content.trim_ascii();
    // base64url of '{"' is "eyJ"; every JOSE header starts with it. The '.' keeps plain
    // base64-encoded JSON documents out.
    if text.starts_with(b"eyJ") && text.contains(&b'.') {
        return parse_jwt(text);
    }
    Parsed::default()
}

/// Parses a file on disk, reading at most [`MAX_PARSE_BYTES`] + 1 bytes. It is opened through
/// [`Beneath`]: a symlink below its root, a FIFO or a device is not opened (opaque, with the
/// reason). Too large or unreadable is opaque with a problem (which names the size or the I/O
/// error kind, never the content).
pub fn parse_file(at: &Beneath) -> Parsed {
    let file = match at.open_regular() {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Parsed::opaque(format!("not parsed: {e}"))
        }
        Err(e) => return Parsed::opaque(format!("could not be opened: {}", e.kind())),
    };
    let mut buf = Vec::new();
    match file.take(MAX_PARSE_BYTES + 1).read_to_end(&mut buf) {
        Ok(n) if n as u64 <= MAX_PARSE_BYTES => parse(&buf),
        Ok(_) => Parsed::opaque("larger than 1 MiB: not parsed"),
        Err(e) => Parsed::opaque(format!("could not be read: {}", e.kind())),
    }
}

/// [`parse_file`], logging why a file is not understood (a truncated token, a broken certificate):
/// the path and the problem, never the content.
pub fn parse_file_logged(at: &Beneath) -> Parsed {
    let parsed = parse_file(at);
    if let Some(problem) = &parsed.problem {
        tracing::warn!(path = ?at.path(), %problem, "credential tracked as opaque");
    }
    parsed
}

/// How long one file may take to read before it is given up (a stale network mount, a FUSE
/// file system that never answers).
pub const PARSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reader threads left stuck in a read before parsing stops altogether (each is a thread the
/// kernel holds; they are not killable).
const MAX_STUCK_READERS: usize = 8;

type Request = (Beneath, mpsc::Sender<Parsed>);

/// Parses files on a thread of its own, each within [`PARSE_TIMEOUT`]: a file that never
/// answers is tracked as opaque, and its thread is left behind, so the caller (and the agent)
/// never wait longer than that for one file.
#[derive(Default)]
pub struct Parser {
    worker: Option<mpsc::Sender<Request>>,
    stuck: usize,
}

impl Parser {
    pub fn parse(&mut self, at: &Beneath) -> Parsed {
        if self.stuck >= MAX_STUCK_READERS {
            return Parsed::opaque("not parsed: too many reads never finished");
        }
        let worker = self.worker.get_or_insert_with(spawn_worker);
        let (tx, rx) = mpsc::channel();
        if worker.send((at.clone(), tx)).is_err() {
            self.worker = None;
            return Parsed::opaque("not parsed: the parser stopped");
        }
        match rx.recv_timeout(PARSE_TIMEOUT) {
            Ok(parsed) => parsed,
            Err(_) => {
                // The worker is stuck in this read: leave it, start a fresh one next time.
                self.worker = None;
                self.stuck += 1;
                tracing::warn!(path = ?at.path(), "reading a credential file did not finish in {PARSE_TIMEOUT:?}; tracked as opaque");
                Parsed::opaque("reading it did not finish in time: not parsed")
            }
        }
    }
}

fn spawn_worker() -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("credwatch-parse".into())
        .spawn(move || {
            for (at, reply) in rx {
                let _ = reply.send(parse_file_logged(&at));
            }
        })
        .expect("spawning the parser thread");
    tx
}
