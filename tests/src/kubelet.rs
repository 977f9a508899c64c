//! A kubelet-shaped tree on disk, written the way the kubelet writes it, and the credentials that
//! go in it: service-account JWTs signed with a throwaway RSA key, certificate chains, keys.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::TempDir;

pub const SECRET: &str = "kubernetes.io~secret";
pub const PROJECTED: &str = "kubernetes.io~projected";
pub const CSI: &str = "kubernetes.io~csi";
pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";

/// `<root>/pods/<uid>/volumes/<plugin>/<volume>`; secret and projected volumes are tmpfs mounts
/// of their own, as the kubelet makes them.
pub struct KubeletTree {
    pub root: TempDir,
    seq: u32,
    mounts: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for KubeletTree {
    fn drop(&mut self) {
        let mounts = self.mounts.get_mut().unwrap_or_else(|e| e.into_inner());
        for m in mounts.drain(..).rev() {
            crate::mounts::detach(&m);
        }
    }
}

impl Default for KubeletTree {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeletTree {
    pub fn new() -> Self {
        Self {
            root: TempDir::new("kubelet"),
            seq: 0,
            mounts: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Removes a pod's directory as the kubelet does when the pod is gone: its volumes
    /// unmounted first.
    pub fn remove_pod(&self, uid: &str) {
        let dir = self.pod_dir(uid);
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        mounts.retain(|m| {
            let inside = m.starts_with(&dir);
            if inside {
                crate::mounts::detach(m);
            }
            !inside
        });
        std::fs::remove_dir_all(&dir).expect("remove pod directory");
    }

    /// Creates (if needed) and returns a volume directory; a new secret or projected volume is
    /// a tmpfs mount of its own, as the kubelet makes it.
    pub fn volume(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        let v = self.pod_dir(uid).join("volumes").join(plugin).join(name);
        let new = !v.exists();
        std::fs::create_dir_all(&v).expect("volume dir");
        if new && (plugin == SECRET || plugin == PROJECTED) {
            // Mode 0755: readers of any user, as the kubelet's.
            crate::mounts::tmpfs(&v, "mode=0755").unwrap_or_else(|e| panic!("tmpfs on {v:?}: {e}"));
            self.mounts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(v.clone());
        }
        v
    }

    /// A CSI volume: `<vol>/vol_data.json` naming the driver, files under `<vol>/mount`.
    pub fn csi_volume(&self, uid: &str, name: &str, driver: &str) -> PathBuf {
        let v = self.volume(uid, CSI, name);
        std::fs::write(
            v.join("vol_data.json"),
            format!(
                r#"{{"driverName":"{driver}","specVolID":"{name}","volumeHandle":"csi-{name}"}}"#
            ),
        )
        .expect("vol_data.json");
        let mount = v.join("mount");
        std::fs::create_dir_all(&mount).expect("mount dir");
        mount
    }

    /// Steps 1-7 of the kubelet's atomic writer (pkg/volume/util/atomic_writer.go): write the
    /// payload into a new `..<timestamp>` directory, point `..data_tmp` at it, rename it over
    /// `..data`, create the visible symlinks. Returns the previous directory, which the caller
    /// removes with `finish_write` (step 9) — in between, old paths still open the old generation.
    pub fn begin_write(&mut self, vol: &Path, files: &[(&str, &[u8])]) -> Option<String> {
        self.seq += 1;
        let old = std::fs::read_link(vol.join("..data"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The kubelet names it with time.Now().UTC().Format("..2006_01_02_15_04_05.") plus a
        // random suffix; what matters is that names sort in write order.
        let ts = format!("..{secs}_{:09}.{}", self.seq, std::process::id());
        let tsdir = vol.join(&ts);
        std::fs::create_dir(&tsdir).expect("timestamped dir");
        for (name, content) in files {
            std::fs::write(tsdir.join(name), content).expect("payload file");
        }
        let tmp = vol.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, vol.join("..data")).expect("rename ..data_tmp over ..data");
        for (name, _) in files {
            let visible = vol.join(name);
            if std::fs::symlink_metadata(&visible).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &visible)
                    .expect("visible symlink");
            }
        }
        old
    }

    /// Step 9: remove the previous timestamped directory.
    pub fn finish_write(&self, vol: &Path, old: Option<String>) {
        if let Some(old) = old {
            std::fs::remove_dir_all(vol.join(old)).expect("remove old generation");
        }
    }

    /// The whole atomic write.
    pub fn write(&mut self, vol: &Path, files: &[(&str, &[u8])]) {
        let old = self.begin_write(vol, files);
        self.finish_write(vol, old);
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A throwaway self-signed certificate and its key for a TLS server on this host, written into
/// `dir` as `cert.pem` and `key.pem`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// Signs JWTs with a throwaway RSA key (RS256), as the API server signs service-account tokens.
pub struct Signer {
    dir: TempDir,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    pub fn new() -> Self {
        let dir = TempDir::new("signer");
        let key = dir.join("sa.key");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str().unwrap(),
        ]);
        Self { dir }
    }

    pub fn jwt(&self, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"credwatch-e2e"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let input = format!("{header}.{payload}");
        let msg = self.dir.join("msg");
        std::fs::write(&msg, &input).unwrap();
        let sig = openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            self.dir.join("sa.key").to_str().unwrap(),
            msg.to_str().unwrap(),
        ]);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Claims of a projected service-account token as the API server issues them.
pub fn sa_claims(
    ns: &str,
    pod: &str,
    uid: &str,
    sa: &str,
    iat: i64,
    exp: i64,
    warnafter: Option<i64>,
) -> serde_json::Value {
    let mut k8s = serde_json::json!({
        "namespace": ns,
        "pod": {"name": pod, "uid": uid},
        "serviceaccount": {"name": sa, "uid": "6a0b4b3e-0000-4000-8000-000000000001"},
    });
    if let Some(w) = warnafter {
        k8s["warnafter"] = w.into();
    }
    serde_json::json!({
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "jti": "e2e",
        "kubernetes.io": k8s,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
    })
}

/// A CA and a leaf it signed, valid for `days`. Returns (chain PEM: leaf then CA, leaf key PEM,
/// leaf NotBefore, leaf NotAfter) with the dates as Unix seconds read back from openssl.
pub fn cert_chain(days: u32) -> (Vec<u8>, Vec<u8>, i64, i64) {
    let d = TempDir::new("pki");
    let p = |n: &str| d.join(n).to_string_lossy().into_owned();
    let days = days.to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=e2e-ca",
        "-days",
        "30",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=e2e-leaf",
        "-keyout",
        &p("leaf.key"),
        "-out",
        &p("leaf.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        &days,
        "-out",
        &p("leaf.crt"),
    ]);
    let date = |flag: &str| -> i64 {
        let out =
            String::from_utf8(openssl(&["x509", "-noout", flag, "-in", &p("leaf.crt")])).unwrap();
        let text = out.trim().split_once('=').unwrap().1.to_owned();
        let o = Command::new("date")
            .args(["-u", "-d", &text, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let mut chain = std::fs::read(p("leaf.crt")).unwrap();
    chain.extend(std::fs::read(p("ca.crt")).unwrap());
    (
        chain,
        std::fs::read(p("leaf.key")).unwrap(),
        date("-startdate"),
        date("-enddate"),
    )
}

/// The kubelet's cgroup, `system.slice/kubelet.service`. Keep it while the agent may still look
/// at its reads: like the real kubelet's it must outlive them (a reader cgroup gone before the
/// agent described it is `_unknown`).
pub fn kubelet_cgroup() -> crate::Cgroup {
    crate::Cgroup::new("system.slice/kubelet.service")
}

/// The kubelet's own reads: every file of every volume under `root`, read `rounds` times from
/// its `cgroup`, as its atomic writer does on each resync (it compares the old content before
/// writing). Returns the opens made.
pub fn kubelet_resync(cgroup: &crate::Cgroup, root: &Path, rounds: u32) -> u64 {
    let mut files = Vec::new();
    collect_files(&root.join("pods"), &mut files);
    let mut opens = 0;
    for _ in 0..rounds {
        for f in &files {
            opens += cgroup.read(&["open", f.to_str().expect("UTF-8 path"), "1"]);
        }
    }
    opens
}

/// Regular files below `dir` (the visible names, through the volumes' symlinks), skipping the
/// atomic writer's `..` entries.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}
