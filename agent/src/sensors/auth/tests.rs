//! Connections fed real byte sequences: HTTP/1.1 as clients write it, HTTP/2 frames with header
//! blocks from a real HPACK encoder (httlib-hpack) and RFC 7541's own examples.

use httlib_hpack::Encoder;

use super::*;
use Direction::{Request as Req, Response as Resp};

/// Planted in auth headers, bodies and paths' queries: must never come out.
const CANARY: &str = "s3cr3t-CANARY-7f1d";

struct Run {
    conn: Connection,
    out: Vec<Exchange>,
    ns: u64,
}

impl Run {
    fn new(kind: EndpointKind) -> Self {
        Run {
            conn: Connection::new(kind),
            out: Vec::new(),
            ns: 0,
        }
    }

    /// Feeds a chunk captured whole.
    fn feed(&mut self, dir: Direction, bytes: &[u8]) -> &mut Self {
        self.feed_cut(dir, bytes, bytes.len())
    }

    /// Feeds the first `captured` bytes of a chunk of `bytes.len()`.
    fn feed_cut(&mut self, dir: Direction, bytes: &[u8], captured: usize) -> &mut Self {
        self.ns += 1000;
        let got = self
            .conn
            .feed(dir, self.ns, &bytes[..captured], bytes.len());
        no_canary(&format!("{:?} {got:?}", self.conn));
        self.out.extend(got);
        self
    }

    fn close(self) -> Vec<Exchange> {
        let mut out = self.out;
        out.extend(self.conn.close());
        no_canary(&format!("{out:?}"));
        out
    }
}

fn no_canary(text: &str) {
    assert!(!text.contains(CANARY), "canary leaked: {text}");
    assert!(!text.contains("CANARY"), "canary leaked: {text}");
}

fn ops(out: &[Exchange]) -> Vec<(&'static str, &'static str)> {
    out.iter()
        .map(|e| (e.operation.label(), e.code.label()))
        .collect()
}

fn vault_lookup() -> String {
    format!(
        "GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: vault:8200\r\nX-Vault-Token: {CANARY}\r\n\
         User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
    )
}

fn response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nCache-Control: no-store\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn http1_lookup_200_and_403() {
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, vault_lookup().as_bytes());
    r.feed(
        Resp,
        response("200 OK", r#"{"data":{"ttl":3600}}"#).as_bytes(),
    );
    r.feed(Req, vault_lookup().as_bytes());
    let denied = r#"{"errors":["permission denied"]}"#;
    r.feed(Resp, response("403 Forbidden", denied).as_bytes());
    let out = r.close();
    assert_eq!(ops(&out), [("lookup", "200"), ("lookup", "403")]);
    assert!(out[0].auth_header);
    assert_eq!((out[0].request_ns, out[0].response_ns), (1000, Some(2000)));
    assert_eq!((out[1].request_ns, out[1].response_ns), (3000, Some(4000)));
}

#[test]
fn http1_login_success_and_failure_with_bodies() {
    let body = format!(r#"{{"jwt":"{CANARY}","role":"app"}}"#);
    let login = format!(
        "PUT /v1/auth/kubernetes/login HTTP/1.1\r\nHost: vault\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let parts = [r#"{"auth":{"client_token":"#, r#""hvs.abc"}}"#];
    let ok = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:X};ext=1\r\n{}\r\n\
         0\r\nX-Trailer: t\r\n\r\n",
        parts[0].len(),
        parts[0],
        parts[1].len(),
        parts[1]
    );
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, login.as_bytes()).feed(Resp, ok.as_bytes());
    r.feed(Req, login.as_bytes());
    r.feed(
        Resp,
        response("400 Bad Request", r#"{"errors":["invalid role"]}"#).as_bytes(),
    );
    let out = r.close();
    assert_eq!(ops(&out), [("login", "200"), ("login", "400")]);
    assert!(!out[0].auth_header, "a login carries no auth header");
}

#[test]
fn http1_request_split_across_three_writes() {
    let req = vault_lookup();
    let bytes = req.as_bytes();
    // Inside the request line, inside the token value, inside the last header name.
    let cuts = [
        7,
        req.find(CANARY).unwrap() + 5,
        req.find("Accept-").unwrap() + 3,
    ];
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, &bytes[..cuts[0]]);
    r.feed(Req, &bytes[cuts[0]..cuts[1]]);
    r.feed(Req, &bytes[cuts[1]..cuts[2]]);
    r.feed(Req, &bytes[cuts[2]..]);
    r.feed(Resp, b"HTTP/1.1 204 No Content\r\n\r\n");
    let out = r.close();
    assert_eq!(ops(&out), [("lookup", "204")]);
    assert!(out[0].auth_header);
    assert_eq!(
        out[0].request_ns, 1000,
        "the request began in the first write"
    );
}

#[test]
fn http1_every_split_of_a_conversation_decodes_alike() {
    let chunks: Vec<(Direction, String)> = vec![
        (Req, vault_lookup()),
        (Resp, response("200 OK", "{}")),
        (Req, "POST /v1/auth/token/renew-self HTTP/1.1\r\nX-Vault-Token: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n".into()),
        (Resp, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Internal\r\nContent-Length: 2\r\n\r\n{}".into()),
    ];
    let whole = {
        let mut r = Run::new(EndpointKind::Vault);
        for (d, c) in &chunks {
            r.feed(*d, c.as_bytes());
        }
        ops(&r.close())
    };
    assert_eq!(whole, [("lookup", "200"), ("renew", "500")]);
    for (k, (_, chunk)) in chunks.iter().enumerate() {
        for split in 1..chunk.len() {
            let mut r = Run::new(EndpointKind::Vault);
            for (j, (d, c)) in chunks.iter().enumerate() {
                if j == k {
                    r.feed(*d, &c.as_bytes()[..split]);
                    r.feed(*d, &c.as_bytes()[split..]);
                } else {
                    r.feed(*d, c.as_bytes());
                }
            }
            assert_eq!(ops(&r.close()), whole, "chunk {k} split at {split}");
        }
    }
}

#[test]
fn http1_response_larger_than_the_capture_then_keep_alive() {
    let big = "x".repeat(10_000);
    let first = response("200 OK", &big);
    let mut r = Run::new(EndpointKind::Kubernetes);
    let get = "GET /api/v1/namespaces/a/pods HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n";
    r.feed(Req, get.as_bytes());
    // One read of the whole response, of which only 4000 bytes were captured.
    r.feed_cut(Resp, first.as_bytes(), 4000);
    // The same again, read in two pieces, the first cut.
    r.feed(Req, get.as_bytes());
    let (a, b) = first.as_bytes().split_at(6000);
    r.feed_cut(Resp, a, 4000).feed(Resp, b);
    let review =
        "POST /apis/authentication.k8s.io/v1/tokenreviews HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    r.feed(Req, review.as_bytes());
    r.feed(Resp, response("201 Created", "{}").as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [("api_call", "200"), ("api_call", "200"), ("lookup", "201")]
    );
}

#[test]
fn http1_messages_lost_whole_keep_requests_and_responses_in_step() {
    let req =
        |path: &str| format!("GET /v1/auth/token/{path} HTTP/1.1\r\nX-Vault-Token: t\r\n\r\n");
    let mut r = Run::new(EndpointKind::Vault);
    let reqs = [req("lookup-self"), req("renew-self"), req("revoke-self")].concat();
    r.feed(Req, reqs.as_bytes());
    // One read: a response whose body runs past the capture, and a whole second response.
    let read = [
        response("200 OK", &"x".repeat(3950)),
        response("204 No Content", ""),
    ]
    .concat();
    r.feed_cut(Resp, read.as_bytes(), 4000);
    r.feed(Resp, response("403 Forbidden", "{}").as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [("lookup", "200"), ("renew", "unknown"), ("revoke", "403")]
    );

    // The same on the request side: a write whose second request was not captured.
    let body = "y".repeat(3950);
    let login = format!(
        "POST /v1/auth/approle/login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = [login, req("create")].concat();
    let mut r = Run::new(EndpointKind::Vault);
    r.feed_cut(Req, write.as_bytes(), 4000);
    r.feed(Req, req("lookup-self").as_bytes());
    let resps = [
        response("200 OK", "{}"),
        response("204 No Content", ""),
        response("403 Forbidden", "{}"),
    ]
    .concat();
    r.feed(Resp, resps.as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [("login", "200"), ("other", "204"), ("lookup", "403")]
    );
}

#[test]
fn http1_absolute_form_target() {
    let get =
        "GET http://169.254.169.254/latest/meta-data/iam/security-credentials/r HTTP/1.1\r\n\r\n";
    let mut r = Run::new(EndpointKind::AwsImds);
    r.feed(Req, get.as_bytes())
        .feed(Resp, response("200 OK", "{}").as_bytes());
    assert_eq!(ops(&r.close()), [("metadata_credentials", "200")]);
}

#[test]
fn http1_pipelined_requests_head_and_no_body_statuses() {
    let reqs = "HEAD /v1/sys/health HTTP/1.1\r\n\r\n\
                GET /v1/auth/token/lookup-self HTTP/1.1\r\nX-Vault-Token: a\r\n\r\n\
                POST /v1/auth/token/revoke-self HTTP/1.1\r\nX-Vault-Token: a\r\nContent-Length: 0\r\n\r\n\
                POST /v1/auth/token/create HTTP/1.1\r\nX-Vault-Token: a\r\nContent-Length: 2\r\n\r\n{}";
    let resps = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n\
                 HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n\
                 HTTP/1.1 204 No Content\r\n\r\n\
                 HTTP/1.1 429 Too Many\r\nContent-Length: 3\r\n\r\nabc";
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, reqs.as_bytes()).feed(Resp, resps.as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [
            ("api_call", "200"),
            ("lookup", "304"),
            ("revoke", "204"),
            ("token_issue", "429")
        ]
    );
    assert!(!out[0].auth_header && out[1].auth_header);
}

#[test]
fn http1_too_many_pipelined_requests_and_close() {
    let mut r = Run::new(EndpointKind::Vault);
    for _ in 0..40 {
        r.feed(Req, vault_lookup().as_bytes());
    }
    assert_eq!(r.out.len(), 8, "the oldest beyond 32 come out at once");
    let out = r.close();
    assert_eq!(out.len(), 40);
    assert!(out
        .iter()
        .all(|e| e.code == Code::Unknown && e.response_ns.is_none()));
}

#[test]
fn http1_body_until_close_and_unknown_lengths() {
    let mut r = Run::new(EndpointKind::Oidc);
    let body = format!("grant_type=client_credentials&client_secret={CANARY}");
    let req = format!(
        "POST /oauth2/token HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r.feed(Req, req.as_bytes());
    r.feed(
        Resp,
        b"HTTP/1.0 401 Unauthorized\r\n\r\n{\"error\":\"invalid_client\"}",
    );
    r.feed(Resp, b"more body HTTP/1.1 200 OK\r\n\r\n");
    let out = r.close();
    assert_eq!(ops(&out), [("oidc_token", "401")]);
}

#[test]
fn garbage_on_the_socket() {
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"hello world",
        b"get / HTTP/1.1\r\n",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1",
        b"\0\0\0\x04\0\0\0\0\0",
    ] {
        let mut r = Run::new(EndpointKind::Vault);
        r.feed(Req, junk).feed(Resp, b"HTTP/1.1 200 OK\r\n\r\n");
        r.feed(Req, vault_lookup().as_bytes());
        r.feed(Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(r.close().is_empty());
    }
    // Valid, then garbage: the waiting request comes out unknown and parsing stops.
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, vault_lookup().as_bytes());
    for _ in 0..8 {
        r.feed(Resp, b"\x00\x01garbage\r\n\r\n");
    }
    let out = r.close();
    assert_eq!(ops(&out), [("lookup", "unknown")]);
    // The method token is told in pieces too.
    let mut r = Run::new(EndpointKind::Vault);
    r.feed(Req, b"GE")
        .feed(Req, b"T /v1/auth/token/lookup-self HTTP/1.1\r\n\r\n");
    r.feed(Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(ops(&r.close()), [("lookup", "200")]);
}

#[test]
fn imds_token_put_then_credentials_get() {
    let put = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
    let token = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{CANARY}",
        CANARY.len()
    );
    let get = format!(
        "GET /latest/meta-data/iam/security-credentials/node-role HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-aws-ec2-metadata-token: {CANARY}\r\n\r\n"
    );
    let creds = format!(r#"{{"Code":"Success","SecretAccessKey":"{CANARY}"}}"#);
    let mut r = Run::new(EndpointKind::AwsImds);
    r.feed(Req, put.as_bytes()).feed(Resp, token.as_bytes());
    r.feed(Req, get.as_bytes());
    r.feed(Resp, response("200 OK", &creds).as_bytes());
    r.feed(Req, get.as_bytes());
    r.feed(Resp, response("401 Unauthorized", "").as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [
            ("metadata_token", "200"),
            ("metadata_credentials", "200"),
            ("metadata_credentials", "401")
        ]
    );
    assert_eq!(
        out.iter().map(|e| e.auth_header).collect::<Vec<_>>(),
        [false, true, true],
        "the TTL header is not an auth header"
    );
}

#[test]
fn sts_form_body_and_query() {
    let body = format!(
        "Action=AssumeRoleWithWebIdentity&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=s&\
         Version=2011-06-15&WebIdentityToken={CANARY}"
    );
    let post = format!(
        "POST / HTTP/1.1\r\nHost: sts.amazonaws.com\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let bytes = post.as_bytes();
    let body_at = post.find("Action=").unwrap();
    let mut r = Run::new(EndpointKind::AwsSts);
    // The head in one write, the body in two (split inside the action).
    r.feed(Req, &bytes[..body_at]);
    r.feed(Req, &bytes[body_at..body_at + 12]);
    r.feed(Req, &bytes[body_at + 12..]);
    let expired =
        "<ErrorResponse><Error><Code>ExpiredTokenException</Code></Error></ErrorResponse>";
    r.feed(Resp, response("400 Bad Request", expired).as_bytes());
    let query =
        format!("GET /?Action=AssumeRole&RoleArn=r&X-Amz-Security-Token={CANARY} HTTP/1.1\r\n\r\n");
    r.feed(Req, query.as_bytes());
    r.feed(Resp, response("200 OK", "<ok/>").as_bytes());
    let other = "POST / HTTP/1.1\r\nContent-Length: 28\r\n\r\nAction=GetCallerIdentity&V=1";
    r.feed(Req, other.as_bytes());
    r.feed(Resp, response("200 OK", "").as_bytes());
    let out = r.close();
    assert_eq!(
        ops(&out),
        [
            ("sts_assume_role", "400"),
            ("sts_assume_role", "200"),
            ("other", "200")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([ty, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in entries {
        p.extend(id.to_be_bytes());
        p.extend(v.to_be_bytes());
    }
    frame(4, 0, 0, &p)
}

const HUFFMAN: u8 = Encoder::HUFFMAN_NAME | Encoder::HUFFMAN_VALUE;
const INDEX: u8 = Encoder::WITH_INDEXING | Encoder::BEST_FORMAT;

fn block(enc: &mut Encoder, fields: &[(&str, &str, u8)]) -> Vec<u8> {
    let mut dst = Vec::new();
    for (name, value, flags) in fields {
        let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), *flags);
        enc.encode(field, &mut dst).unwrap();
    }
    dst
}

fn request_block(enc: &mut Encoder, method: &str, path: &str, token: bool) -> Vec<u8> {
    let mut fields = vec![
        (":method", method, HUFFMAN | INDEX),
        (":scheme", "https", HUFFMAN | INDEX),
        (":authority", "vault.example:8200", HUFFMAN | INDEX),
        (":path", path, HUFFMAN | INDEX),
        ("user-agent", "Go-http-client/2.0", HUFFMAN | INDEX),
    ];
    if token {
        fields.push(("x-vault-token", CANARY, HUFFMAN | Encoder::NEVER_INDEXED));
    }
    fields.push(("accept-encoding", "gzip", HUFFMAN | INDEX));
    block(enc, &fields)
}

fn status_block(enc: &mut Encoder, status: &str) -> Vec<u8> {
    block(
        enc,
        &[
            (":status", status, HUFFMAN | INDEX),
            ("content-type", "application/json", HUFFMAN | INDEX),
            ("date", "Tue, 01 Dec 2026 17:50:40 GMT", HUFFMAN | INDEX),
        ],
    )
}

/// HEADERS with END_HEADERS (and END_STREAM).
fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(1, 0x5, stream, block)
}

struct H2 {
    run: Run,
    client: Encoder<'static>,
    server: Encoder<'static>,
}

impl H2 {
    fn new(kind: EndpointKind) -> Self {
        let mut run = Run::new(kind);
        let mut first = PREFACE.to_vec();
        first.extend(settings(&[(0x2, 0), (0x4, 4_194_304), (0x6, 10_485_760)]));
        run.feed(Req, &first);
        run.feed(
            Resp,
            &[settings(&[(0x5, 1_048_576)]), frame(4, 1, 0, &[])].concat(),
        );
        H2 {
            run,
            client: Encoder::default(),
            server: Encoder::default(),
        }
    }

    fn request(&mut self, stream: u32, method: &str, path: &str) -> Vec<u8> {
        headers(stream, &request_block(&mut self.client, method, path, true))
    }

    fn response(&mut self, stream: u32, status: &str) -> Vec<u8> {
        headers(stream, &status_block(&mut self.server, status))
    }
}

#[test]
fn http2_requests_with_huffman_and_dynamic_references() {
    let mut h = H2::new(EndpointKind::Vault);
    // Stream 1 fills the tables; 3 and 5 refer to their entries.
    let r1 = h.request(1, "GET", "/v1/auth/token/lookup-self");
    let r3 = h.request(3, "POST", "/v1/auth/token/renew-self");
    let r5 = h.request(5, "GET", "/v1/auth/token/lookup-self");
    assert!(
        r5.len() < r1.len() / 2,
        "stream 5 is mostly table references"
    );
    let (s1, s3, s5) = (
        h.response(1, "200"),
        h.response(3, "403"),
        h.response(5, "200"),
    );
    let run = &mut h.run;
    run.feed(Req, &r1)
        .feed(Req, &r3)
        .feed(Resp, &s3)
        .feed(Resp, &s1);
    run.feed(Req, &r5);
    run.feed(Resp, &[s5, frame(0, 1, 5, b"{}")].concat());
    let out = h.run.close();
    assert_eq!(
        ops(&out),
        [("renew", "403"), ("lookup", "200"), ("lookup", "200")]
    );
    assert!(out.iter().all(|e| e.auth_header));
}

#[test]
fn http2_headers_continuation_padding_priority_split_everywhere() {
    let mut h = H2::new(EndpointKind::Kubernetes);
    let mut enc = Encoder::default();
    let path = "/api/v1/namespaces/default/serviceaccounts/builder/token";
    let auth = format!("Bearer {CANARY}");
    let blk = block(
        &mut enc,
        &[
            (":method", "POST", HUFFMAN | INDEX),
            (":path", path, HUFFMAN | INDEX),
            (":authority", "10.0.0.1:6443", INDEX),
            ("authorization", &auth, Encoder::NEVER_INDEXED),
            ("content-type", "application/json", INDEX),
        ],
    );
    let (a, rest) = blk.split_at(7);
    let (b, c) = rest.split_at(rest.len() / 2);
    // HEADERS (PADDED | PRIORITY), then two CONTINUATIONs, then the body.
    let mut first = vec![3u8];
    first.extend([0x80, 0, 0, 0, 15]);
    first.extend(a);
    first.extend([0, 0, 0]);
    let body = format!(r#"{{"spec":{{"audiences":["{CANARY}"]}}}}"#);
    let bytes = [
        frame(1, 0x8 | 0x20, 1, &first),
        frame(9, 0, 1, b),
        frame(9, 0x4, 1, c),
        frame(0, 0x1, 1, body.as_bytes()),
    ]
    .concat();
    let resp = h.response(1, "201");
    // Byte by byte, then in every two-piece split.
    for split in 0..=bytes.len() {
        let mut g = H2::new(EndpointKind::Kubernetes);
        if split == 0 {
            for byte in &bytes {
                g.run.feed(Req, std::slice::from_ref(byte));
            }
        } else {
            g.run.feed(Req, &bytes[..split]).feed(Req, &bytes[split..]);
        }
        g.run.feed(Resp, &resp);
        let out = g.run.close();
        assert_eq!(ops(&out), [("token_issue", "201")], "split {split}");
        assert!(out[0].auth_header);
    }
}

#[test]
fn http2_rst_stream_goaway_and_close() {
    let mut h = H2::new(EndpointKind::Vault);
    let r1 = h.request(1, "GET", "/v1/auth/token/lookup-self");
    let r3 = h.request(3, "POST", "/v1/auth/kubernetes/login");
    let r5 = h.request(5, "POST", "/v1/auth/token/create");
    let r7 = h.request(7, "GET", "/v1/secret/data/x");
    let run = &mut h.run;
    run.feed(Req, &[r1, r3, r5, r7].concat());
    run.feed(Resp, &frame(3, 0, 1, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend(0u32.to_be_bytes());
    run.feed(Resp, &frame(7, 0, 0, &goaway));
    let out = h.run.close();
    assert_eq!(
        ops(&out),
        [
            ("lookup", "unknown"),
            ("token_issue", "unknown"),
            ("api_call", "unknown"),
            ("login", "unknown")
        ]
    );
}

#[test]
fn http2_truncated_header_block_then_recovery() {
    let mut h = H2::new(EndpointKind::Vault);
    let r1 = h.request(1, "GET", "/v1/auth/token/lookup-self");
    // Stream 3's block is only partly captured: its first fields are literals with indexing.
    let r3 = h.request(3, "PUT", "/v1/auth/approle/login");
    let r5 = h.request(5, "PUT", "/v1/auth/approle/login");
    let (s1, s3, s5) = (
        h.response(1, "200"),
        h.response(3, "200"),
        h.response(5, "400"),
    );
    let run = &mut h.run;
    run.feed(Req, &r1).feed(Resp, &s1);
    // 9 frame header bytes + `:method PUT` (literal) survive; the rest is lost.
    let keep = 9 + 5;
    run.feed_cut(Req, &r3, keep);
    run.feed(Resp, &s3);
    // Stream 5 refers to entries stream 3 inserted: unknown; but static and literal parts decode.
    run.feed(Req, &r5).feed(Resp, &s5);
    // A fresh encoder's literals (a client that reconnected its table) decode again.
    let mut fresh = Encoder::default();
    let lit = block(
        &mut fresh,
        &[
            (":method", "POST", Encoder::HUFFMAN_VALUE),
            (":path", "/v1/auth/token/create", Encoder::HUFFMAN_VALUE),
        ],
    );
    run.feed(Req, &headers(7, &lit))
        .feed(Resp, &headers(7, &[0x88]));
    let out = h.run.close();
    let got = ops(&out);
    assert_eq!(got[0], ("lookup", "200"));
    assert_eq!(got[1].1, "200", "the response side is unaffected");
    assert_eq!(got[1].0, "other", "stream 3's path was lost");
    assert_eq!(
        got[2],
        ("other", "400"),
        "stream 5 referred to lost entries"
    );
    assert_eq!(got[3], ("token_issue", "200"));
}

#[test]
fn http2_lost_frames_resync_at_a_frame_boundary() {
    let mut h = H2::new(EndpointKind::Vault);
    let r1 = h.request(1, "GET", "/v1/auth/token/lookup-self");
    let big = vec![b'x'; 20_000];
    let (s1, s3) = (h.response(1, "200"), h.response(3, "404"));
    let r3 = h.request(3, "GET", "/v1/auth/token/lookup-self");
    let run = &mut h.run;
    run.feed(Req, &r1).feed(Req, &r3);
    // One read: HEADERS + a large DATA + more frames; only the start is captured.
    let read = [s1, frame(0, 0, 1, &big), frame(0, 1, 1, b"end")].concat();
    run.feed_cut(Resp, &read, 4000);
    // The next read starts with a frame: reading resumes (stream 3's status is a static index
    // after the table was forgotten, so it decodes).
    run.feed(Resp, &headers(3, &[0x8d]));
    let out = h.run.close();
    assert_eq!(ops(&out), [("lookup", "200"), ("lookup", "404")]);
    let _ = s3;
}

#[test]
fn http2_header_table_size_setting_is_honoured() {
    let mut run = Run::new(EndpointKind::Vault);
    let mut first = PREFACE.to_vec();
    first.extend(settings(&[(0x1, 100)]));
    run.feed(Req, &first);
    let mut client = Encoder::default();
    for stream in [1, 3, 5] {
        let blk = request_block(&mut client, "GET", "/v1/auth/token/lookup-self", false);
        run.feed(Req, &headers(stream, &blk));
    }
    // The server asks for 4096 (more than allowed: 100 is kept), inserts `:status: 200` (42
    // bytes), then a 90-byte entry that evicts it, then refers to index 63.
    let mut s1 = vec![0x3f, 0xe1, 0x1f];
    s1.extend([0x48, 0x03]);
    s1.extend(b"200");
    run.feed(Resp, &headers(1, &s1));
    let mut s3 = vec![0x40, 0x08];
    s3.extend(b"x-filler");
    s3.push(50);
    s3.extend([b'f'; 50]);
    s3.push(0x88);
    run.feed(Resp, &headers(3, &s3));
    run.feed(Resp, &headers(5, &[0xbf]));
    let out = run.close();
    assert_eq!(
        ops(&out),
        [("lookup", "200"), ("lookup", "200"), ("lookup", "unknown")]
    );
}

#[test]
fn http2_rfc7541_c4_and_c6_verbatim() {
    use super::hpack::tests::hex;
    let c4 = [
        hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        hex("8286 84be 5886 a8eb 1064 9cbf"),
        hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
    ];
    let mut c6 = [
        hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ),
        hex("4883 640e ff c1 c0 bf"),
        hex(
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ),
    ];
    // C.6 assumes a 256-byte table: the client asks for it, the server's first block says so.
    c6[0].splice(0..0, [0x3f, 0xe1, 0x01]);
    let mut run = Run::new(EndpointKind::Oidc);
    let mut first = PREFACE.to_vec();
    first.extend(settings(&[(0x1, 256)]));
    run.feed(Req, &first);
    for (i, (req, resp)) in c4.iter().zip(&c6).enumerate() {
        let stream = 2 * i as u32 + 1;
        run.feed(Req, &headers(stream, req))
            .feed(Resp, &headers(stream, resp));
    }
    let out = run.close();
    assert_eq!(
        ops(&out),
        [("other", "302"), ("other", "307"), ("other", "200")]
    );
}

#[test]
fn http2_sts_body_in_data_frames() {
    let mut h = H2::new(EndpointKind::AwsSts);
    let mut enc = Encoder::default();
    let blk = block(
        &mut enc,
        &[
            (":method", "POST", HUFFMAN | INDEX),
            (":path", "/", INDEX),
            (
                "content-type",
                "application/x-www-form-urlencoded",
                HUFFMAN | INDEX,
            ),
        ],
    );
    let body = format!("Action=AssumeRoleWithWebIdentity&WebIdentityToken={CANARY}");
    let (a, b) = body.as_bytes().split_at(10);
    let bytes = [
        frame(1, 0x4, 1, &blk),
        frame(0, 0x8, 1, &[&[2u8][..], a, &[0, 0]].concat()),
        frame(0, 0x1, 1, b),
    ]
    .concat();
    let resp = h.response(1, "200");
    h.run.feed(Req, &bytes).feed(Resp, &resp);
    assert_eq!(ops(&h.run.close()), [("sts_assume_role", "200")]);
}

#[test]
fn http2_stream_limit() {
    let mut h = H2::new(EndpointKind::Vault);
    for i in 0..120 {
        let r = h.request(2 * i + 1, "GET", "/v1/auth/token/lookup-self");
        h.run.feed(Req, &r);
    }
    assert_eq!(h.run.out.len(), 20);
    assert_eq!(h.run.close().len(), 120);
}

/// A deterministic generator for the no-panic run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        self.0 >> 33
    }
}

#[test]
fn random_chunks_never_panic() {
    let mut h = H2::new(EndpointKind::Vault);
    let valid = [
        PREFACE.to_vec(),
        h.request(1, "GET", "/v1/auth/token/lookup-self"),
        h.response(1, "200"),
        vault_lookup().into_bytes(),
        response("200 OK", "{}").into_bytes(),
    ];
    let mut rng = Lcg(7);
    for round in 0..3000 {
        let kind = [
            EndpointKind::Vault,
            EndpointKind::AwsSts,
            EndpointKind::Kubernetes,
        ][round % 3];
        let mut conn = Connection::new(kind);
        for _ in 0..(rng.next() % 12) {
            let src = &valid[(rng.next() % 5) as usize];
            let mut bytes = src.clone();
            // Mutate a few bytes, cut at a random place.
            for _ in 0..(rng.next() % 4) {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (bytes.len() + 1);
            let total = cut + (rng.next() as usize % 3) * (rng.next() as usize % 30_000);
            let dir = if rng.next().is_multiple_of(2) {
                Req
            } else {
                Resp
            };
            let _ = conn.feed(dir, round as u64, &bytes[..cut], total);
        }
        let _ = format!("{conn:?}");
        let _ = conn.close();
    }
}

#[test]
fn code_labels() {
    assert_eq!(Code::Status(200).label(), "200");
    assert_eq!(Code::Status(599).label(), "599");
    assert_eq!(Code::Status(100).label(), "100");
    assert_eq!(Code::Status(99).label(), "unknown");
    assert_eq!(Code::Unknown.label(), "unknown");
}
