//! A stub Kubernetes API server for pods: list, watch and get over plain HTTP/1.1 on loopback,
//! close enough to the real one that `kube`'s watcher and reflector work against it unchanged
//! (checked with kube 5.0.0's `runtime::watcher`).
//!
//! What it speaks, as the real server does (https://kubernetes.io/docs/reference/using-api/api-concepts/):
//! - `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`, as a list (`limit`/`continue`
//!   paging over a consistent snapshot, `resourceVersion` + `resourceVersionMatch`) or, with
//!   `watch=true|1`, as a chunked stream of `{"type":…,"object":…}` lines: `ADDED`/`MODIFIED`/
//!   `DELETED` after the requested resourceVersion, synthetic `ADDED`s first when it is unset or
//!   "0", `BOOKMARK`s every second with `allowWatchBookmarks=true`, the streaming-list
//!   `sendInitialEvents=true` end bookmark (annotation `k8s.io/initial-events-end`), an `ERROR`
//!   event with a 410 `Expired` Status for a resourceVersion older than `compact()`, and the end
//!   of the stream after `timeoutSeconds` (capped at [`MAX_WATCH_SECS`]).
//! - `fieldSelector` on `metadata.name`, `metadata.namespace`, `spec.nodeName`,
//!   `spec.serviceAccountName`, `status.phase`, … (`=`, `==`, `!=`); `labelSelector` with
//!   `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`. A watch with a selector sees a pod that stops
//!   matching as `DELETED` and one that starts matching as `ADDED`, as the real server sends.
//! - `GET /api/v1/namespaces/{ns}/pods/{name}`, `GET /version`; any other path is a 404 Status.
//! - `Accept: application/json;as=PartialObjectMetadata;…` (kube's `metadata_watcher`).
//!
//! Resource versions come from one process-wide counter, like etcd's: a server restarted on the
//! same port continues above the old one's versions but has no history before its start, so a
//! client resuming an old watch gets 410 Gone and relists, as after a real API server restart.
use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde_json::{json, Value};

/// The longest a watch stays open, whatever `timeoutSeconds` asks (the real server's default is
/// 30-60 minutes; kube asks for 290 s). The client then starts a new watch from its last version.
pub const MAX_WATCH_SECS: u64 = 30;
/// How often a watch with `allowWatchBookmarks=true` gets a `BOOKMARK`.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The resourceVersion counter shared by every stub in the process (etcd's revision).
static REVISION: AtomicU64 = AtomicU64::new(1000);

fn next_revision() -> u64 {
    REVISION.fetch_add(1, Ordering::SeqCst) + 1
}

type Key = (String, String);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    kind: Kind,
    /// The pod before the change (None for an add).
    old: Option<Value>,
    /// The pod after it; for a delete, its last state carrying the delete's resourceVersion.
    new: Value,
}

struct State {
    /// The resourceVersion of the last change (or the server's start).
    rv: u64,
    pods: BTreeMap<Key, Value>,
    /// Every change, in order. Compaction only moves `oldest`: watches that are open go on
    /// reading from here, as the real server's open watches outlive an etcd compaction.
    history: Vec<Change>,
    /// The compaction point: watches and lists may start from here on.
    oldest: u64,
    /// The pods as of `oldest`.
    base: BTreeMap<Key, Value>,
    requests: Vec<String>,
    status_override: Option<u16>,
    stopping: bool,
    /// Bumped by `expire_watches`: open watches from an older generation end with a 410.
    expire_gen: u64,
    conns: HashMap<u64, TcpStream>,
    next_conn: u64,
    threads: Vec<JoinHandle<()>>,
}

impl State {
    /// The pods as they were at `rv` (`oldest <= rv <= self.rv`).
    fn snapshot(&self, rv: u64) -> BTreeMap<Key, Value> {
        if rv >= self.rv {
            return self.pods.clone();
        }
        let mut pods = self.base.clone();
        let from = self.history.partition_point(|c| c.rv <= self.oldest);
        for c in self.history[from..].iter().take_while(|c| c.rv <= rv) {
            let key = key_of(&c.new);
            match c.kind {
                Kind::Deleted => {
                    pods.remove(&key);
                }
                _ => {
                    pods.insert(key, c.new.clone());
                }
            }
        }
        pods
    }
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The stub API server. Stops its threads and closes every connection on `stop()` or drop.
pub struct KubeApi {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> KubeApi {
        Self::start_on(0)
    }

    /// Listens on 127.0.0.1:`port` (0 = any), retrying for a few seconds while the port is
    /// still taken (a server just stopped on it). Starts with no pods and no history.
    pub fn start_on(port: u16) -> KubeApi {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("stub API server: bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().expect("local_addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let rv = next_revision();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv,
                pods: BTreeMap::new(),
                history: Vec::new(),
                oldest: rv,
                base: BTreeMap::new(),
                requests: Vec::new(),
                status_override: None,
                stopping: false,
                expire_gen: 0,
                conns: HashMap::new(),
                next_conn: 0,
                threads: Vec::new(),
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("kubeapi-{port}"))
            .spawn(move || accept_loop(s, listener))
            .expect("spawn accept thread");
        KubeApi {
            shared,
            port,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes a kubeconfig for this server (plain HTTP, a bearer token user, namespace default).
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: stub\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: stub\n  context:\n    cluster: stub\n    user: stub\n    namespace: default\n\
             current-context: stub\n\
             preferences: {{}}\n\
             users:\n\
             - name: stub\n  user:\n    token: stub-token\n",
            url = self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Creates a pod (an `ADDED` event). Sets `metadata.resourceVersion` (and `namespace` to
    /// "default" when absent). Panics if the pod exists.
    pub fn add_pod(&self, pod: Value) {
        self.change(Kind::Added, pod);
    }

    /// Replaces a pod (a `MODIFIED` event). Panics if it does not exist.
    pub fn update_pod(&self, pod: Value) {
        self.change(Kind::Modified, pod);
    }

    /// Deletes a pod (a `DELETED` event whose object is its last state). Panics if absent.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let pod = {
            let st = self.shared.lock();
            st.pods
                .get(&(namespace.to_string(), name.to_string()))
                .unwrap_or_else(|| panic!("delete_pod: no pod {namespace}/{name}"))
                .clone()
        };
        self.change(Kind::Deleted, pod);
    }

    fn change(&self, kind: Kind, mut pod: Value) {
        let meta = pod
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("pod without metadata");
        assert!(
            meta.get("name").and_then(Value::as_str).is_some(),
            "pod without metadata.name"
        );
        if meta.get("namespace").and_then(Value::as_str).is_none() {
            meta.insert("namespace".into(), json!("default"));
        }
        let key = key_of(&pod);
        let mut st = self.shared.lock();
        let old = st.pods.get(&key).cloned();
        match (kind, &old) {
            (Kind::Added, Some(_)) => panic!("add_pod: {}/{} exists; use update_pod", key.0, key.1),
            (Kind::Modified | Kind::Deleted, None) => {
                panic!("{kind:?}: no pod {}/{}", key.0, key.1)
            }
            _ => {}
        }
        let rv = next_revision();
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind == Kind::Deleted {
            st.pods.remove(&key);
        } else {
            st.pods.insert(key, pod.clone());
        }
        st.rv = rv;
        st.history.push(Change {
            rv,
            kind,
            old,
            new: pod,
        });
        drop(st);
        self.shared.cv.notify_all();
    }

    /// Closes the listener and every open connection (watches end without their last chunk, as
    /// when a server dies), and waits for the server's threads.
    pub fn stop(self) {
        drop(self)
    }

    /// The request lines seen so far: `"GET /api/v1/pods?watch=true&…"` (query as sent).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Answers every new request with this status code and a Status body (401 Unauthorized,
    /// 403 Forbidden, 429, 500, 503, …) until set back to None. Open watches go on.
    pub fn set_status_override(&self, code: Option<u16>) {
        self.shared.lock().status_override = code;
    }

    /// Forgets the history before the current resourceVersion: a watch from an older version
    /// gets a 410 `Expired` ERROR event, an `Exact` list or a `continue` from before gets HTTP 410.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.oldest = st.rv;
        st.base = st.pods.clone();
        drop(st);
        self.shared.cv.notify_all();
    }

    /// `compact()`, and every open watch gets a 410 `Expired` ERROR event and ends, as when the
    /// real server's watch cache drops its watchers: a kube watcher relists.
    pub fn expire_watches(&self) {
        let mut st = self.shared.lock();
        st.oldest = st.rv;
        st.base = st.pods.clone();
        st.expire_gen += 1;
        drop(st);
        self.shared.cv.notify_all();
    }

    /// Closes every open connection (watches end abruptly) but keeps listening and keeps the
    /// pods and history: a client reconnects and resumes its watches.
    pub fn drop_connections(&self) {
        let st = self.shared.lock();
        for c in st.conns.values() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> String {
        self.shared.lock().rv.to_string()
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            for c in st.conns.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        self.shared.cv.notify_all();
        let _ = accept.join();
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A Pod object as the API server returns it. `containers` are (name, 64-hex container id);
/// `volumes` is the `spec.volumes` array (null for none).
pub fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    service_account: &str,
    containers: &[(&str, &str)],
    volumes: Value,
) -> Value {
    let volumes = if volumes.is_null() {
        json!([])
    } else {
        volumes
    };
    let started = "2024-01-01T00:00:00Z";
    let specs: Vec<Value> = containers
        .iter()
        .map(|(c, _)| {
            json!({
                "name": c,
                "image": format!("registry.example/{c}:1.0"),
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            })
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(c, id)| {
            json!({
                "name": c,
                "containerID": format!("containerd://{id}"),
                "image": format!("registry.example/{c}:1.0"),
                "imageID": format!("registry.example/{c}@sha256:{}", "0".repeat(64)),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
                "lastState": {},
            })
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "",
            "creationTimestamp": started,
            "labels": {"app": name},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "containers": specs,
            "volumes": volumes,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "dnsPolicy": "ClusterFirst",
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": "10.244.0.10",
            "startTime": started,
            "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": statuses,
        },
    })
}

fn key_of(pod: &Value) -> Key {
    let m = &pod["metadata"];
    (
        m["namespace"].as_str().unwrap_or("default").to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Server

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let mut st = shared.lock();
                if st.stopping {
                    return;
                }
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let id = st.next_conn;
                st.next_conn += 1;
                st.conns.insert(id, clone);
                st.threads.retain(|t| !t.is_finished());
                let s = shared.clone();
                match std::thread::Builder::new()
                    .name(format!("kubeapi-conn-{id}"))
                    .spawn(move || {
                        let _ = serve(&s, stream);
                        s.lock().conns.remove(&id);
                    }) {
                    Ok(t) => st.threads.push(t),
                    Err(_) => {
                        st.conns.remove(&id);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shared.lock().stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => {
                if shared.lock().stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

/// Reads one request; None at a clean end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<(String, Request)>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let line = line.trim_end().to_string();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    let mut total = 0;
    loop {
        let mut h = String::new();
        let n = r.read_line(&mut h)?;
        total += n;
        if n == 0 || total > 1 << 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
    }
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let query = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let req_line = format!("{method} {target}");
    Ok(Some((
        req_line,
        Request {
            method,
            path: path.to_string(),
            query,
            headers,
        },
    )))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one connection's requests (keep-alive) until it closes or the server stops.
fn serve(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some((line, req)) = read_request(&mut reader)? {
        let override_code = {
            let mut st = shared.lock();
            if st.stopping {
                return Ok(());
            }
            st.requests.push(line);
            st.status_override
        };
        let close = req
            .headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let keep = match override_code {
            Some(code) => {
                send_status(&mut out, code, None)?;
                true
            }
            None => handle(shared, &mut out, &req)?,
        };
        if close || !keep {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A `metav1.Status` failure as the API server writes it.
fn status_json(code: u16, message: Option<&str>) -> Value {
    let (reason, default_msg) = match code {
        400 => ("BadRequest", "bad request"),
        401 => ("Unauthorized", "Unauthorized"),
        403 => (
            "Forbidden",
            "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
        ),
        404 => ("NotFound", "the server could not find the requested resource"),
        405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
        410 => ("Expired", "too old resource version"),
        422 => ("Invalid", "invalid request"),
        429 => ("TooManyRequests", "too many requests, please try again later"),
        500 => ("InternalError", "an error on the server has prevented the request from succeeding"),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504 => ("Timeout", "the server was unable to return a response in the time allotted"),
        _ => ("Unknown", "error"),
    };
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.unwrap_or(default_msg),
        "reason": reason,
        "code": code,
    });
    if code == 403 {
        s["details"] = json!({"kind": "pods"});
    }
    s
}

fn send_status(out: &mut TcpStream, code: u16, message: Option<&str>) -> io::Result<()> {
    let extra = if matches!(code, 429 | 503) {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    send(out, code, extra, &status_json(code, message))
}

fn send(out: &mut TcpStream, code: u16, extra_headers: &str, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body.as_bytes());
    out.write_all(&msg)?;
    out.flush()
}

/// Answers one request; false to close the connection.
fn handle(shared: &Shared, out: &mut TcpStream, req: &Request) -> io::Result<bool> {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let (namespace, name) = match segs.as_slice() {
        ["version"] if req.method == "GET" => {
            send(
                out,
                200,
                "",
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
                    "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64",
                }),
            )?;
            return Ok(true);
        }
        ["api", "v1", "pods"] => (None, None),
        ["api", "v1", "namespaces", ns, "pods"] => (Some(*ns), None),
        ["api", "v1", "namespaces", ns, "pods", name] => (Some(*ns), Some(*name)),
        _ => {
            send_status(out, 404, None)?;
            return Ok(true);
        }
    };
    if req.method != "GET" {
        send_status(out, 405, None)?;
        return Ok(true);
    }
    let meta_only = req
        .headers
        .get("accept")
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    if let (Some(ns), Some(name)) = (namespace, name) {
        let pod = shared
            .lock()
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .cloned();
        match pod {
            Some(p) => send(out, 200, "", &present(p, meta_only, true))?,
            None => {
                let mut s = status_json(404, Some(&format!("pods \"{name}\" not found")));
                s["details"] = json!({"name": name, "kind": "pods"});
                send(out, 404, "", &s)?;
            }
        }
        return Ok(true);
    }
    let selector = match Selector::parse(
        req.query.get("fieldSelector").map(String::as_str),
        req.query.get("labelSelector").map(String::as_str),
        namespace,
    ) {
        Ok(s) => s,
        Err(msg) => {
            send_status(out, 400, Some(&msg))?;
            return Ok(true);
        }
    };
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    if watch {
        watch_pods(shared, out, req, &selector, meta_only)
    } else {
        list_pods(shared, out, req, &selector, meta_only)?;
        Ok(true)
    }
}

/// The object as sent: whole, or as PartialObjectMetadata. `typed`: with kind/apiVersion (watch
/// events and gets have them; the items of a core list have not).
fn present(mut pod: Value, meta_only: bool, typed: bool) -> Value {
    if meta_only {
        return json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": pod["metadata"].take(),
        });
    }
    if let Some(o) = pod.as_object_mut() {
        if typed {
            o.insert("kind".into(), json!("Pod"));
            o.insert("apiVersion".into(), json!("v1"));
        } else {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    pod
}

fn list_pods(
    shared: &Shared,
    out: &mut TcpStream,
    req: &Request,
    sel: &Selector,
    meta_only: bool,
) -> io::Result<()> {
    let q = |k: &str| req.query.get(k).map(String::as_str);
    let rv_param = q("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = q("resourceVersionMatch").filter(|s| !s.is_empty());
    let limit = match q("limit").map(str::parse::<usize>) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return send_status(out, 400, Some("limit: invalid value")),
    };
    if rv_match.is_some() && rv_param.is_none() {
        return send_status(
            out,
            422,
            Some("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"),
        );
    }
    if q("continue").is_some_and(|c| !c.is_empty()) && rv_param.is_some_and(|v| v != "0") {
        return send_status(
            out,
            422,
            Some("resourceVersion: Forbidden: specifying resource version is not allowed when using continue"),
        );
    }
    let st = shared.lock();
    // Where the list starts: (snapshot rv, key to start after).
    let (at, after): (u64, Option<Key>) = match q("continue").filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some((rv, key)) if rv >= st.oldest => (rv, Some(key)),
            Some(_) => {
                drop(st);
                return send_status(
                    out,
                    410,
                    Some("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."),
                );
            }
            None => {
                drop(st);
                return send_status(out, 400, Some("continue key is not valid"));
            }
        },
        None => match (rv_param, rv_match) {
            (Some(v), Some("Exact")) => {
                let Ok(x) = v.parse::<u64>() else {
                    drop(st);
                    return send_status(out, 400, Some("resourceVersion: invalid value"));
                };
                if x < st.oldest {
                    let msg = format!("too old resource version: {x} ({})", st.oldest);
                    drop(st);
                    return send_status(out, 410, Some(&msg));
                }
                if x > st.rv {
                    let msg = format!("Too large resource version: {x}, current: {}", st.rv);
                    drop(st);
                    return send_status(out, 504, Some(&msg));
                }
                (x, None)
            }
            (_, Some(m)) if m != "NotOlderThan" => {
                drop(st);
                return send_status(
                    out,
                    422,
                    Some(&format!("resourceVersionMatch: Unsupported value: \"{m}\"")),
                );
            }
            _ => (st.rv, None),
        },
    };
    let snap = st.snapshot(at);
    drop(st);
    let mut items = Vec::new();
    let mut cont = None;
    let mut remaining = 0usize;
    for (key, pod) in &snap {
        if after.as_ref().is_some_and(|a| key <= a) || !sel.matches(pod) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(present(pod.clone(), meta_only, meta_only));
        if limit.is_some_and(|l| items.len() >= l) {
            cont = Some(encode_continue(at, key));
        }
    }
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0 {
        metadata["continue"] = json!(cont.expect("continue token"));
        if sel.is_empty() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        ("PodList", "v1")
    };
    send(
        out,
        200,
        "",
        &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
    )
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}", key.0, key.1)});
    URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    let (ns, name) = v["start"].as_str()?.split_once('/')?;
    Some((v["rv"].as_u64()?, (ns.to_string(), name.to_string())))
}

fn write_chunk(out: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut msg = format!("{:x}\r\n", data.len()).into_bytes();
    msg.extend_from_slice(data);
    msg.extend_from_slice(b"\r\n");
    out.write_all(&msg)?;
    out.flush()
}

fn write_event(out: &mut TcpStream, kind: &str, object: Value) -> io::Result<()> {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    write_chunk(out, line.as_bytes())
}

fn bookmark(rv: u64, initial_end: bool, meta_only: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    if meta_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
    } else {
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta})
    }
}

/// Streams watch events; Ok(false) when the server stops (close the connection).
fn watch_pods(
    shared: &Shared,
    out: &mut TcpStream,
    req: &Request,
    sel: &Selector,
    meta_only: bool,
) -> io::Result<bool> {
    let q = |k: &str| req.query.get(k).map(String::as_str);
    let bookmarks = q("allowWatchBookmarks") == Some("true");
    let initial_events = q("sendInitialEvents") == Some("true");
    let rv_match = q("resourceVersionMatch").filter(|s| !s.is_empty());
    if initial_events && rv_match != Some("NotOlderThan") {
        send_status(
            out,
            422,
            Some("resourceVersionMatch: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan"),
        )?;
        return Ok(true);
    }
    if initial_events && !bookmarks {
        send_status(
            out,
            422,
            Some("allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"),
        )?;
        return Ok(true);
    }
    if !initial_events && rv_match.is_some() {
        send_status(
            out,
            422,
            Some("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"),
        )?;
        return Ok(true);
    }
    let secs = match q("timeoutSeconds").map(str::parse::<u64>) {
        Some(Ok(0)) | None => MAX_WATCH_SECS,
        Some(Ok(n)) => n.min(MAX_WATCH_SECS),
        Some(Err(_)) => {
            send_status(out, 400, Some("timeoutSeconds: invalid value"))?;
            return Ok(true);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let rv_param = q("resourceVersion").filter(|s| !s.is_empty() && *s != "0");
    let requested = match rv_param.map(str::parse::<u64>) {
        None => None,
        Some(Ok(x)) => Some(x),
        Some(Err(_)) => {
            send_status(out, 400, Some("resourceVersion: invalid value"))?;
            return Ok(true);
        }
    };
    // The starting point: synthetic ADDEDs for the current pods when no version was given (or
    // for a streaming list), else every change after the requested version.
    let (mut cursor, initial, expired, gen) = {
        let st = shared.lock();
        let gen = st.expire_gen;
        let (cursor, initial, expired) = match requested {
            Some(x) if initial_events => (st.rv.max(x), Some(st.pods.clone()), None),
            Some(x) if x < st.oldest => (x, None, Some(st.oldest)),
            Some(x) => (x, None, None),
            None => (st.rv, Some(st.pods.clone()), None),
        };
        (cursor, initial, expired, gen)
    };
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    out.flush()?;
    if let Some(oldest) = expired {
        let msg = format!("too old resource version: {cursor} ({oldest})");
        write_event(out, "ERROR", status_json(410, Some(&msg)))?;
        write_chunk(out, b"")?;
        return Ok(true);
    }
    for pod in initial.iter().flat_map(|m| m.values()) {
        if sel.matches(pod) {
            write_event(out, "ADDED", present(pod.clone(), meta_only, true))?;
        }
    }
    if initial_events {
        write_event(out, "BOOKMARK", bookmark(cursor, true, meta_only))?;
    }
    let mut next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    loop {
        let mut events = Vec::new();
        let mut expired = None;
        {
            let mut st = shared.lock();
            loop {
                if st.stopping {
                    return Ok(false);
                }
                if st.expire_gen != gen {
                    expired = Some(st.oldest);
                    break;
                }
                let from = st.history.partition_point(|c| c.rv <= cursor);
                for c in &st.history[from..] {
                    if let Some(e) = visible(c, sel) {
                        events.push(e);
                    }
                }
                cursor = cursor.max(st.rv);
                let now = Instant::now();
                if !events.is_empty() || now >= deadline || (bookmarks && now >= next_bookmark) {
                    break;
                }
                let until = if bookmarks {
                    deadline.min(next_bookmark)
                } else {
                    deadline
                };
                st = shared
                    .cv
                    .wait_timeout(st, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if let Some(oldest) = expired {
            let msg = format!("too old resource version: {cursor} ({oldest})");
            write_event(out, "ERROR", status_json(410, Some(&msg)))?;
            write_chunk(out, b"")?;
            return Ok(true);
        }
        for (kind, obj) in events {
            write_event(out, kind, present(obj, meta_only, true))?;
        }
        let now = Instant::now();
        if bookmarks && now >= next_bookmark {
            write_event(out, "BOOKMARK", bookmark(cursor, false, meta_only))?;
            next_bookmark = now + BOOKMARK_INTERVAL;
        }
        if now >= deadline {
            write_chunk(out, b"")?;
            return Ok(true);
        }
    }
}

/// What a watch with this selector sees of a change: a pod that leaves the selection is
/// DELETED, one that enters it is ADDED.
fn visible(c: &Change, sel: &Selector) -> Option<(&'static str, Value)> {
    let was = c.old.as_ref().is_some_and(|o| sel.matches(o));
    let is = sel.matches(&c.new);
    let kind = match c.kind {
        Kind::Added if is => "ADDED",
        Kind::Modified if was && is => "MODIFIED",
        Kind::Modified if is => "ADDED",
        Kind::Modified if was => "DELETED",
        Kind::Deleted if was => "DELETED",
        _ => return None,
    };
    Some((kind, c.new.clone()))
}

// ---------------------------------------------------------------------------------------------
// Selectors

/// The pod fields the API server accepts in a field selector.
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

struct Selector {
    namespace: Option<String>,
    /// (field path, value, equal?)
    fields: Vec<(String, String, bool)>,
    labels: Vec<LabelReq>,
}

impl Selector {
    fn parse(fields: Option<&str>, labels: Option<&str>, ns: Option<&str>) -> Result<Self, String> {
        let mut sel = Selector {
            namespace: ns.map(str::to_string),
            fields: Vec::new(),
            labels: Vec::new(),
        };
        for term in fields.unwrap_or_default().split(',').map(str::trim) {
            if term.is_empty() {
                continue;
            }
            let (f, v, eq) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let f = f.trim();
            if !POD_FIELDS.contains(&f) {
                return Err(format!(
                    "field label not supported: {f}; unable to parse requirement"
                ));
            }
            sel.fields.push((f.to_string(), v.trim().to_string(), eq));
        }
        for term in split_outside_parens(labels.unwrap_or_default()) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::Ne(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, set)) = term.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_string(), parse_set(set)?)
            } else if let Some((k, set)) = term.split_once(" in ") {
                LabelReq::In(k.trim().to_string(), parse_set(set)?)
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unable to parse requirement: {term}"));
            } else {
                LabelReq::Exists(term.to_string())
            };
            sel.labels.push(req);
        }
        Ok(sel)
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.labels.is_empty()
    }

    fn matches(&self, pod: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if pod["metadata"]["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        for (path, want, eq) in &self.fields {
            let mut v = pod;
            for p in path.split('.') {
                v = &v[p];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if (have == *want) != *eq {
                return false;
            }
        }
        let labels = &pod["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::Ne(k, v) => label(k) != Some(v),
            LabelReq::In(k, set) => label(k).is_some_and(|l| set.iter().any(|s| s == l)),
            LabelReq::NotIn(k, set) => !label(k).is_some_and(|l| set.iter().any(|s| s == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        })
    }
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: set {s}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str) -> Value {
        let id = format!("{:0>64x}", name.len());
        pod_json(
            "ns1",
            name,
            &format!("uid-{name}"),
            node,
            "sa",
            &[("main", &id)],
            json!([{"name": "tok", "secret": {"secretName": "s"}}]),
        )
    }

    fn connect(port: u16) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// One request on its own connection: (status, body).
    fn get(port: u16, target: &str) -> (u16, Value) {
        let mut s = connect(port);
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(head.contains("Content-Length:"), "{head}");
        (code, serde_json::from_str(body).expect("JSON body"))
    }

    struct Watch {
        r: BufReader<TcpStream>,
    }

    impl Watch {
        fn open(port: u16, target: &str) -> Watch {
            let mut s = connect(port);
            write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("HTTP/1.1 200"), "{line}");
            let mut chunked = false;
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
            }
            assert!(chunked);
            Watch { r }
        }

        /// The next event; None at the end of the stream (last chunk, EOF or reset).
        fn next(&mut self) -> Option<Value> {
            let mut size = String::new();
            if self.r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                return None;
            }
            let mut data = vec![0; n + 2];
            self.r.read_exact(&mut data).ok()?;
            assert!(data.ends_with(b"\n\r\n"), "one JSON line per chunk");
            Some(serde_json::from_slice(&data[..n]).expect("event JSON"))
        }

        /// The next event that is not a BOOKMARK.
        fn next_change(&mut self) -> Option<Value> {
            loop {
                let e = self.next()?;
                if e["type"] != "BOOKMARK" {
                    return Some(e);
                }
            }
        }
    }

    fn rv(v: &Value) -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn list_filters_by_node_and_pages() {
        let api = KubeApi::start();
        api.add_pod(pod("a", "node-1"));
        api.add_pod(pod("b", "node-2"));
        api.add_pod(pod("c", "node-1"));
        let mut other = pod("d", "node-1");
        other["metadata"]["namespace"] = json!("ns2");
        api.add_pod(other);
        let (code, list) = get(
            api.port(),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1",
        );
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(names(&list), ["a", "c", "d"]);
        assert_eq!(rv(&list).to_string(), api.resource_version());
        for item in list["items"].as_array().unwrap() {
            assert!(rv(item) > 1000);
            assert_eq!(item["spec"]["nodeName"], "node-1");
            assert!(item.get("kind").is_none(), "list items have no kind");
        }
        let (_, ns1) = get(
            api.port(),
            "/api/v1/namespaces/ns1/pods?labelSelector=app%20in%20(a,b)",
        );
        assert_eq!(names(&ns1), ["a", "b"]);
        let (code, bad) = get(api.port(), "/api/v1/pods?fieldSelector=spec.nope%3Dx");
        assert_eq!((code, bad["reason"].as_str()), (400, Some("BadRequest")));

        // Pages come from one snapshot, even when pods change in between.
        let (_, p1) = get(api.port(), "/api/v1/pods?limit=2");
        assert_eq!(names(&p1), ["a", "b"]);
        assert_eq!(p1["metadata"]["remainingItemCount"], 2);
        let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
        api.delete_pod("ns1", "c");
        let (_, p2) = get(
            api.port(),
            &format!("/api/v1/pods?limit=2&continue={token}"),
        );
        assert_eq!(names(&p2), ["c", "d"]);
        assert_eq!(rv(&p2), rv(&p1));
        assert!(p2["metadata"].get("continue").is_none());
        let (_, now) = get(api.port(), "/api/v1/pods");
        assert_eq!(names(&now), ["a", "b", "d"]);
        // Exact lists of a past version.
        let (_, then) = get(
            api.port(),
            &format!(
                "/api/v1/pods?resourceVersion={}&resourceVersionMatch=Exact",
                rv(&p1)
            ),
        );
        assert_eq!(names(&then), ["a", "b", "c", "d"]);
    }

    #[test]
    fn watch_sees_changes_in_order_after_its_version() {
        let api = KubeApi::start();
        api.add_pod(pod("before", "node-1"));
        let (_, list) = get(api.port(), "/api/v1/pods");
        let from = rv(&list);
        api.add_pod(pod("a", "node-1"));
        let mut w = Watch::open(
            api.port(),
            &format!("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-1&resourceVersion={from}&timeoutSeconds=20"),
        );
        let mut a = pod("a", "node-1");
        a["metadata"]["labels"]["v"] = json!("2");
        api.update_pod(a);
        api.add_pod(pod("elsewhere", "node-2"));
        api.delete_pod("ns1", "before");
        api.update_pod(pod("a", "node-2")); // leaves the selection
        let want = [
            ("ADDED", "a"),
            ("MODIFIED", "a"),
            ("DELETED", "before"),
            ("DELETED", "a"),
        ];
        let mut last = from;
        for (kind, name) in want {
            let e = w.next_change().expect("event");
            assert_eq!(e["type"], kind, "{e}");
            assert_eq!(e["object"]["metadata"]["name"], name);
            assert_eq!(e["object"]["kind"], "Pod");
            let v = rv(&e["object"]);
            assert!(v > last, "resourceVersions increase");
            last = v;
        }
        assert_eq!(api.requests().len(), 2);
        assert!(api.requests()[1].starts_with("GET /api/v1/pods?watch=true&"));

        // No version: the current pods first, as ADDED.
        let mut w = Watch::open(api.port(), "/api/v1/namespaces/ns1/pods?watch=1");
        let e = w.next().unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("a"))
        );
        let e = w.next().unwrap();
        assert_eq!(e["object"]["metadata"]["name"], "elsewhere");
        api.add_pod(pod("new", "node-1"));
        let e = w.next().unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("new"))
        );
    }

    #[test]
    fn bookmarks_streaming_lists_and_timeouts() {
        let api = KubeApi::start();
        api.add_pod(pod("a", "node-1"));
        let cur = api.resource_version();
        let mut w = Watch::open(
            api.port(),
            &format!("/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={cur}&timeoutSeconds=2"),
        );
        let t = Instant::now();
        let e = w.next().unwrap();
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "Pod");
        assert_eq!(e["object"]["metadata"]["resourceVersion"], cur.as_str());
        assert!(t.elapsed() < Duration::from_millis(1900));
        while w.next().is_some() {}
        let secs = t.elapsed().as_secs_f64();
        assert!(
            (1.5..5.0).contains(&secs),
            "ended after timeoutSeconds, {secs}"
        );

        let mut w = Watch::open(
            api.port(),
            "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0",
        );
        assert_eq!(w.next().unwrap()["type"], "ADDED");
        let end = w.next().unwrap();
        assert_eq!(end["type"], "BOOKMARK");
        assert_eq!(
            end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(end["object"]["metadata"]["resourceVersion"], cur.as_str());
        let (code, _) = get(api.port(), "/api/v1/pods?watch=true&sendInitialEvents=true");
        assert_eq!(code, 422);
    }

    #[test]
    fn compact_expires_old_versions() {
        let api = KubeApi::start();
        api.add_pod(pod("a", "node-1"));
        api.add_pod(pod("b", "node-1"));
        let old = api.resource_version();
        let (_, page) = get(api.port(), "/api/v1/pods?limit=1");
        assert!(page["metadata"]["continue"].is_string());
        api.add_pod(pod("c", "node-1"));
        api.compact();
        let mut w = Watch::open(
            api.port(),
            &format!("/api/v1/pods?watch=true&resourceVersion={old}"),
        );
        let e = w.next().unwrap();
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["kind"], "Status");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
        assert!(e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version"));
        assert!(w.next().is_none(), "the stream ends");

        let (code, s) = get(
            api.port(),
            &format!("/api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact"),
        );
        assert_eq!(
            (code, s["code"].as_u64(), s["reason"].as_str()),
            (410, Some(410), Some("Expired"))
        );
        let token = page["metadata"]["continue"].as_str().unwrap_or_default();
        let (code, _) = get(
            api.port(),
            &format!("/api/v1/pods?limit=1&continue={token}"),
        );
        assert_eq!(code, 410);

        // From the compaction point on, watches work; expire_watches ends them with a 410.
        let now = api.resource_version();
        let mut w = Watch::open(
            api.port(),
            &format!("/api/v1/pods?watch=true&resourceVersion={now}"),
        );
        api.add_pod(pod("d", "node-1"));
        assert_eq!(w.next().unwrap()["type"], "ADDED");
        api.expire_watches();
        assert_eq!(w.next().unwrap()["object"]["code"], 410);
        assert!(w.next().is_none());
    }

    #[test]
    fn stop_ends_open_watch_and_restart_on_same_port() {
        let api = KubeApi::start();
        let port = api.port();
        api.add_pod(pod("a", "node-1"));
        let cur = api.resource_version();
        let mut w = Watch::open(
            port,
            &format!("/api/v1/pods?watch=true&resourceVersion={cur}"),
        );
        let idle = connect(port); // a keep-alive connection with no request yet
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        api.stop();
        assert!(w.next().is_none());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stop() ended the watch"
        );
        let mut buf = [0u8; 1];
        assert!(matches!((&idle).read(&mut buf), Ok(0) | Err(_)));
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens"
        );

        let api = KubeApi::start_on(port);
        assert_eq!(api.port(), port);
        assert_eq!(api.url(), format!("http://127.0.0.1:{port}"));
        assert!(api.resource_version().parse::<u64>().unwrap() > cur.parse().unwrap());
        let (code, list) = get(port, "/api/v1/pods");
        assert_eq!(code, 200);
        assert!(names(&list).is_empty(), "a restarted stub starts empty");
        // A watch resuming from before the restart must relist.
        let mut w = Watch::open(
            port,
            &format!("/api/v1/pods?watch=true&resourceVersion={cur}"),
        );
        assert_eq!(w.next().unwrap()["object"]["code"], 410);
    }

    #[test]
    fn status_override_other_paths_get_and_kubeconfig() {
        let api = KubeApi::start();
        api.add_pod(pod("a", "node-1"));
        api.set_status_override(Some(401));
        let (code, s) = get(api.port(), "/api/v1/pods");
        assert_eq!(code, 401);
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "Unauthorized");
        assert_eq!(s["code"], 401);
        api.set_status_override(Some(403));
        let (code, s) = get(api.port(), "/api/v1/pods?watch=true");
        assert_eq!((code, s["reason"].as_str()), (403, Some("Forbidden")));
        api.set_status_override(None);
        assert_eq!(get(api.port(), "/api/v1/pods").0, 200);

        let (code, s) = get(api.port(), "/api/v1/services");
        assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
        let (code, p) = get(api.port(), "/api/v1/namespaces/ns1/pods/a");
        assert_eq!((code, p["kind"].as_str()), (200, Some("Pod")));
        assert_eq!(
            p["status"]["containerStatuses"][0]["containerID"],
            format!("containerd://{:0>64x}", 1)
        );
        let (code, s) = get(api.port(), "/api/v1/namespaces/ns1/pods/zz");
        assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
        assert_eq!(api.requests().len(), 6);

        let dir = std::env::temp_dir().join(format!("kubeapi-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        api.write_kubeconfig(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("server: {}", api.url())));
        assert!(text.contains("current-context: stub"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
