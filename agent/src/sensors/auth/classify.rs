//! What an exchange with an auth endpoint did, from the endpoint's kind, the request's method and
//! path (the query string only for STS) and, for STS, the first KiB of the request body.
//!
//! Classification runs in two steps so that nothing raw is kept: [`classify_path`] turns a path
//! into a [`PathClass`] (a few bytes) the moment the path is decoded, and [`operation`] combines it
//! with the method, the presence of an auth header and the body scan when the exchange completes.
//!
//! Decisions the catalogue leaves open:
//! - Vault `sys/wrapping/unwrap` is `token_issue`: it turns a wrapping token into the credential it
//!   wraps (a token or a secret id), and its failure means the workload gets no credential;
//!   `sys/wrapping/lookup` is `lookup`, `wrap` and `rewrap` are `api_call`.
//! - GCP `.../service-accounts/<sa>/identity` (an ID token) is `metadata_token`, like `.../token`:
//!   both are tokens the metadata server mints from the instance's identity.
//! - Azure's `Metadata: true` header counts as an auth header, like GCP's `Metadata-Flavor`.
//! - A Kubernetes request is `api_call` when it carries `Authorization` (presence only: bearer
//!   tokens in practice); without it (client certificates) it is `other`, except the TokenRequest,
//!   TokenReview and SelfSubjectReview calls, which are classified whatever the authentication.

/// What kind of endpoint the socket goes to; drives classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Kubernetes,
    Vault,
    AwsImds,
    GcpMetadata,
    AzureImds,
    EksPodIdentity,
    EcsCredentials,
    AwsSts,
    Oidc,
    Other,
}

/// What an exchange did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    TokenIssue,
    Login,
    Renew,
    Lookup,
    Revoke,
    MetadataToken,
    MetadataCredentials,
    StsAssumeRole,
    OidcToken,
    ApiCall,
    Other,
}

impl Operation {
    /// The `operation` label value.
    pub fn label(&self) -> &'static str {
        match self {
            Operation::TokenIssue => "token_issue",
            Operation::Login => "login",
            Operation::Renew => "renew",
            Operation::Lookup => "lookup",
            Operation::Revoke => "revoke",
            Operation::MetadataToken => "metadata_token",
            Operation::MetadataCredentials => "metadata_credentials",
            Operation::StsAssumeRole => "sts_assume_role",
            Operation::OidcToken => "oidc_token",
            Operation::ApiCall => "api_call",
            Operation::Other => "other",
        }
    }
}

/// A request method, as far as classification cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Other,
}

impl Method {
    pub(crate) fn parse(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            _ => Method::Other,
        }
    }
}

/// What a path says, before the method is known: a few bytes standing for the path, which is
/// dropped once classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathClass {
    /// The path could not be decoded (lost capture, undecodable HPACK reference, too long).
    Unknown,
    /// The operation whatever the method.
    Any(Operation),
    /// The operation for a `PUT`, `other` for the rest.
    PutOnly(Operation),
    /// The operation for a `POST`, otherwise as for any other path of the endpoint.
    PostOnly(Operation),
    /// An STS call whose query names no AssumeRole action: the form body may.
    StsBody,
    /// A Kubernetes API path that is not an auth call.
    KubernetesApi,
}

/// The header names whose presence marks an authenticated request (ASCII, lowercase).
pub(crate) fn is_auth_header(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 5] = [
        b"authorization",
        b"x-vault-token",
        b"x-aws-ec2-metadata-token",
        b"metadata-flavor",
        b"metadata",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Classifies a request target (origin form, with its query) for an endpoint of `kind`.
pub(crate) fn classify_path(kind: EndpointKind, target: &[u8]) -> PathClass {
    let (path, query) = match target.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    match kind {
        EndpointKind::Vault => PathClass::Any(vault(path)),
        EndpointKind::AwsImds => imds(path),
        EndpointKind::GcpMetadata => PathClass::Any(gcp(path)),
        EndpointKind::AzureImds => PathClass::Any(if path == b"/metadata/identity/oauth2/token" {
            Operation::MetadataToken
        } else {
            Operation::Other
        }),
        EndpointKind::EksPodIdentity | EndpointKind::EcsCredentials => {
            PathClass::Any(container_credentials(path))
        }
        EndpointKind::AwsSts => {
            if query.split(|&b| b == b'&').any(is_assume_role_param) {
                PathClass::Any(Operation::StsAssumeRole)
            } else {
                PathClass::StsBody
            }
        }
        EndpointKind::Oidc => PathClass::Any(if last_segment(path) == b"token" {
            Operation::OidcToken
        } else {
            Operation::Other
        }),
        EndpointKind::Kubernetes => kubernetes(path),
        EndpointKind::Other => PathClass::Any(Operation::Other),
    }
}

/// The operation of a complete request. `body_assume_role`: the first KiB of the request body
/// held an `Action=AssumeRole*` form parameter (see [`BodyScan`]).
pub(crate) fn operation(
    method: Method,
    class: PathClass,
    auth_header: bool,
    body_assume_role: bool,
) -> Operation {
    match class {
        PathClass::Unknown => Operation::Other,
        PathClass::Any(op) => op,
        PathClass::PutOnly(op) if method == Method::Put => op,
        PathClass::PutOnly(_) => Operation::Other,
        PathClass::PostOnly(op) if method == Method::Post => op,
        PathClass::PostOnly(_) | PathClass::KubernetesApi => {
            if auth_header {
                Operation::ApiCall
            } else {
                Operation::Other
            }
        }
        PathClass::StsBody if body_assume_role && method == Method::Post => {
            Operation::StsAssumeRole
        }
        PathClass::StsBody => Operation::Other,
    }
}

fn is_assume_role_param(param: &[u8]) -> bool {
    param.starts_with(b"Action=AssumeRole")
}

fn segments(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|s| !s.is_empty())
}

fn last_segment(path: &[u8]) -> &[u8] {
    segments(path).last().unwrap_or(b"")
}

/// Vault and OpenBao: paths below `/v1/`.
fn vault(path: &[u8]) -> Operation {
    let Some(rest) = path.strip_prefix(b"/v1/") else {
        return Operation::Other;
    };
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if let Some(token) = rest.strip_prefix(b"auth/token/") {
        return vault_token(token);
    }
    if let Some(leases) = rest.strip_prefix(b"sys/leases/") {
        return match leases {
            b"renew" => Operation::Renew,
            b"lookup" => Operation::Lookup,
            _ if leases.starts_with(b"revoke") => Operation::Revoke,
            _ => Operation::ApiCall,
        };
    }
    match rest {
        b"sys/renew" => return Operation::Renew,
        b"sys/wrapping/unwrap" => return Operation::TokenIssue,
        b"sys/wrapping/lookup" => return Operation::Lookup,
        _ => {}
    }
    if rest.starts_with(b"sys/revoke") {
        return Operation::Revoke;
    }
    if let Some(mount) = rest.strip_prefix(b"auth/") {
        // auth/<mount>/login or auth/<mount>/login/<name>; mounts may nest.
        let (mut n, mut last, mut before) = (0, &b""[..], &b""[..]);
        for seg in segments(mount) {
            (n, before, last) = (n + 1, last, seg);
        }
        if (n >= 2 && last == b"login") || (n >= 3 && before == b"login") {
            return Operation::Login;
        }
    }
    if let Some(oidc) = rest.strip_prefix(b"identity/oidc/") {
        if oidc.starts_with(b"token/") {
            return Operation::TokenIssue;
        }
        if oidc.starts_with(b"provider/") && last_segment(oidc) == b"token" {
            return Operation::OidcToken;
        }
    }
    Operation::ApiCall
}

/// `auth/token/<what>`.
fn vault_token(what: &[u8]) -> Operation {
    let first = segments(what).next().unwrap_or(b"");
    if first.starts_with(b"create") {
        Operation::TokenIssue
    } else if matches!(first, b"renew" | b"renew-self" | b"renew-accessor") {
        Operation::Renew
    } else if matches!(first, b"lookup" | b"lookup-self" | b"lookup-accessor") {
        Operation::Lookup
    } else if first.starts_with(b"revoke") {
        Operation::Revoke
    } else {
        Operation::ApiCall
    }
}

/// AWS IMDS: the IMDSv2 session token and the instance profile's credentials.
fn imds(path: &[u8]) -> PathClass {
    if path == b"/latest/api/token" {
        return PathClass::PutOnly(Operation::MetadataToken);
    }
    let creds = b"/latest/meta-data/iam/security-credentials/";
    match path.strip_prefix(&creds[..]) {
        Some(role) if !role.is_empty() => PathClass::Any(Operation::MetadataCredentials),
        _ => PathClass::Any(Operation::Other),
    }
}

/// GCP: `/computeMetadata/v1/instance/service-accounts/<sa>/token` (and `/identity`).
fn gcp(path: &[u8]) -> Operation {
    let mut segs = segments(path);
    let prefix = [
        &b"computeMetadata"[..],
        b"v1",
        b"instance",
        b"service-accounts",
    ];
    if !prefix.iter().all(|p| segs.next() == Some(p)) {
        return Operation::Other;
    }
    match (segs.next(), segs.next(), segs.next()) {
        (Some(_), Some(b"token" | b"identity"), None) => Operation::MetadataToken,
        _ => Operation::Other,
    }
}

/// EKS Pod Identity (`/v1/credentials`) and ECS (`/v2/credentials/<id>`) credential endpoints.
fn container_credentials(path: &[u8]) -> Operation {
    let mut segs = segments(path);
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some(b"v1"), Some(b"credentials"), None, None)
        | (Some(b"v2"), Some(b"credentials"), Some(_), None) => Operation::MetadataCredentials,
        _ => Operation::Other,
    }
}

/// The Kubernetes API: TokenRequest, TokenReview, SelfSubjectReview, the rest.
fn kubernetes(path: &[u8]) -> PathClass {
    let mut s = [&b""[..]; 8];
    let mut n = 0;
    for seg in segments(path) {
        if n == s.len() {
            return PathClass::KubernetesApi;
        }
        s[n] = seg;
        n += 1;
    }
    match &s[..n] {
        [b"api", b"v1", b"namespaces", _, b"serviceaccounts", _, b"token"] => {
            PathClass::PostOnly(Operation::TokenIssue)
        }
        [b"apis", b"authentication.k8s.io", _, b"tokenreviews" | b"selfsubjectreviews"] => {
            PathClass::PostOnly(Operation::Lookup)
        }
        _ => PathClass::KubernetesApi,
    }
}

/// Looks for an `Action=AssumeRole*` form parameter in the first [`BodyScan::LIMIT`] bytes of a
/// request body fed in pieces, keeping no body byte: only how much of the pattern matched so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyScan {
    /// Bytes of `NEEDLE` matched; `NEEDLE.len()` once found.
    matched: u8,
    seen: u16,
}

/// `&` stands for the start of the body or a parameter separator.
const NEEDLE: &[u8] = b"&Action=AssumeRole";

/// KMP failure function of `NEEDLE`.
const FAIL: [u8; NEEDLE.len()] = {
    let mut f = [0u8; NEEDLE.len()];
    let mut i = 1;
    let mut k = 0;
    while i < NEEDLE.len() {
        while k > 0 && NEEDLE[i] != NEEDLE[k] {
            k = f[k - 1] as usize;
        }
        if NEEDLE[i] == NEEDLE[k] {
            k += 1;
        }
        f[i] = k as u8;
        i += 1;
    }
    f
};

impl Default for BodyScan {
    fn default() -> Self {
        // The body's start counts as a separator.
        BodyScan {
            matched: 1,
            seen: 0,
        }
    }
}

impl BodyScan {
    /// How much of a body is looked at.
    pub(crate) const LIMIT: usize = 1024;

    pub(crate) fn found(&self) -> bool {
        usize::from(self.matched) == NEEDLE.len()
    }

    /// Feeds the next body bytes.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let room = Self::LIMIT.saturating_sub(usize::from(self.seen));
        if self.found() || room == 0 {
            return;
        }
        let bytes = &bytes[..bytes.len().min(room)];
        self.seen += bytes.len() as u16;
        let mut k = usize::from(self.matched);
        for &b in bytes {
            while k > 0 && NEEDLE[k] != b {
                k = usize::from(FAIL[k - 1]);
            }
            if NEEDLE[k] == b {
                k += 1;
            }
            if k == NEEDLE.len() {
                break;
            }
        }
        self.matched = k as u8;
    }

    /// Bytes of the body that were not captured: they count towards the limit.
    pub(crate) fn skip(&mut self, n: usize) {
        if n > 0 {
            self.seen = (usize::from(self.seen) + n).min(Self::LIMIT) as u16;
            self.matched = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: EndpointKind, method: &[u8], target: &str, auth: bool) -> Operation {
        operation(
            Method::parse(method),
            classify_path(kind, target.as_bytes()),
            auth,
            false,
        )
    }

    #[test]
    fn vault_paths() {
        use EndpointKind::Vault as V;
        use Operation::*;
        let cases = [
            ("/v1/auth/token/create", TokenIssue),
            ("/v1/auth/token/create-orphan", TokenIssue),
            ("/v1/auth/token/create/my-role", TokenIssue),
            ("/v1/auth/kubernetes/login", Login),
            ("/v1/auth/approle/login", Login),
            ("/v1/auth/userpass/login/alice", Login),
            ("/v1/auth/team/k8s/login", Login),
            ("/v1/auth/token/renew", Renew),
            ("/v1/auth/token/renew-self", Renew),
            ("/v1/sys/leases/renew", Renew),
            ("/v1/auth/token/lookup", Lookup),
            ("/v1/auth/token/lookup-self", Lookup),
            ("/v1/auth/token/lookup-accessor", Lookup),
            ("/v1/auth/token/revoke", Revoke),
            ("/v1/auth/token/revoke-self", Revoke),
            ("/v1/sys/leases/revoke-prefix/aws/creds", Revoke),
            ("/v1/sys/leases/revoke", Revoke),
            ("/v1/sys/wrapping/unwrap", TokenIssue),
            ("/v1/sys/wrapping/lookup", Lookup),
            ("/v1/sys/wrapping/wrap", ApiCall),
            ("/v1/secret/data/app", ApiCall),
            ("/v1/auth/token/lookup-self?x=1", Lookup),
            ("/v1/identity/oidc/token/role", TokenIssue),
            ("/v1/identity/oidc/provider/default/token", OidcToken),
            ("/v1/auth/login", ApiCall),
            ("/ui/", Other),
        ];
        for (path, want) in cases {
            assert_eq!(op(V, b"GET", path, true), want, "{path}");
        }
    }

    #[test]
    fn metadata_paths() {
        use EndpointKind::*;
        use Operation::{MetadataCredentials, MetadataToken};
        assert_eq!(
            op(AwsImds, b"PUT", "/latest/api/token", false),
            MetadataToken
        );
        assert_eq!(
            op(AwsImds, b"GET", "/latest/api/token", false),
            Operation::Other
        );
        let creds = "/latest/meta-data/iam/security-credentials/role";
        assert_eq!(op(AwsImds, b"GET", creds, true), MetadataCredentials);
        let list = "/latest/meta-data/iam/security-credentials/";
        assert_eq!(op(AwsImds, b"GET", list, true), Operation::Other);
        let gcp = "/computeMetadata/v1/instance/service-accounts/default/token?scopes=x";
        assert_eq!(op(GcpMetadata, b"GET", gcp, true), MetadataToken);
        let id = "/computeMetadata/v1/instance/service-accounts/default/identity?audience=a";
        assert_eq!(op(GcpMetadata, b"GET", id, true), MetadataToken);
        let email = "/computeMetadata/v1/instance/service-accounts/default/email";
        assert_eq!(op(GcpMetadata, b"GET", email, true), Operation::Other);
        let azure = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x";
        assert_eq!(op(AzureImds, b"GET", azure, true), MetadataToken);
        assert_eq!(
            op(EksPodIdentity, b"GET", "/v1/credentials", true),
            MetadataCredentials
        );
        assert_eq!(
            op(EcsCredentials, b"GET", "/v2/credentials/abc", false),
            MetadataCredentials
        );
        assert_eq!(
            op(EcsCredentials, b"GET", "/v2/credentials", false),
            Operation::Other
        );
    }

    #[test]
    fn sts_oidc_kubernetes() {
        use EndpointKind::*;
        use Operation::{ApiCall, Lookup, OidcToken, StsAssumeRole, TokenIssue};
        let q = "/?Action=AssumeRoleWithWebIdentity&RoleArn=x";
        assert_eq!(op(AwsSts, b"GET", q, false), StsAssumeRole);
        assert_eq!(
            op(AwsSts, b"GET", "/?Action=GetCallerIdentity", true),
            Operation::Other
        );
        let class = classify_path(AwsSts, b"/");
        assert_eq!(operation(Method::Post, class, false, true), StsAssumeRole);
        assert_eq!(
            operation(Method::Post, class, false, false),
            Operation::Other
        );
        for p in [
            "/oauth2/token",
            "/realms/a/protocol/openid-connect/token",
            "/oauth/token",
            "/v1/token",
            "/oauth2/v2.0/token?x=y",
        ] {
            assert_eq!(op(Oidc, b"POST", p, false), OidcToken, "{p}");
        }
        assert_eq!(
            op(Oidc, b"GET", "/.well-known/openid-configuration", false),
            Operation::Other
        );
        let tr = "/api/v1/namespaces/ns/serviceaccounts/sa/token";
        assert_eq!(op(Kubernetes, b"POST", tr, false), TokenIssue);
        assert_eq!(op(Kubernetes, b"GET", tr, true), ApiCall);
        let review = "/apis/authentication.k8s.io/v1/tokenreviews";
        assert_eq!(op(Kubernetes, b"POST", review, true), Lookup);
        let ssr = "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews";
        assert_eq!(op(Kubernetes, b"POST", ssr, true), Lookup);
        assert_eq!(op(Kubernetes, b"GET", "/api/v1/pods", true), ApiCall);
        assert_eq!(
            op(Kubernetes, b"GET", "/api/v1/pods", false),
            Operation::Other
        );
        assert_eq!(
            op(EndpointKind::Other, b"GET", "/oauth2/token", true),
            Operation::Other
        );
    }

    #[test]
    fn body_scan_across_pieces() {
        let body = b"Version=2011-06-15&Action=AssumeRoleWithWebIdentity&RoleArn=r";
        for split in 0..body.len() {
            let mut s = BodyScan::default();
            s.feed(&body[..split]);
            s.feed(&body[split..]);
            assert!(s.found(), "split at {split}");
        }
        let mut s = BodyScan::default();
        s.feed(b"Action=AssumeRole&x=1");
        assert!(s.found());
        let mut s = BodyScan::default();
        s.feed(b"XAction=AssumeRole");
        assert!(!s.found());
        let mut s = BodyScan::default();
        s.feed(&[b'a'; 1024]);
        s.feed(b"&Action=AssumeRole");
        assert!(!s.found(), "past the first KiB");
        let mut s = BodyScan::default();
        s.feed(b"&&Action=AssumeRol");
        s.feed(b"e");
        assert!(s.found());
    }
}
