//! Who a reader is, from its cgroup v2 path: a container (with its pod uid when the path shows
//! one) or a host process (with its systemd unit kept for logs).
use serde::Serialize;

use super::ids::{is_container_id, is_pod_uid};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reader {
    /// A process of the host; `unit` is its systemd unit or scope when the path names one.
    Node { unit: Option<String> },
    Container {
        container_id: String,
        runtime: String,
        pod_uid: Option<String>,
    },
    /// A process inside a pod's cgroup tree that is in no container cgroup we can name: a
    /// sandbox runtime's layout (Kata's `kata_<id>`, gVisor), or the pod cgroup itself. Still
    /// that pod's reader.
    PodSandbox { pod_uid: String },
}

/// Runtime name of a cgroup name prefix (`<prefix>-<id>.scope`, `<prefix>-<id>`,
/// `<slice>:<prefix>:<id>`).
fn runtime_of(prefix: &str) -> Option<&'static str> {
    Some(match prefix {
        "cri-containerd" | "containerd" => "containerd",
        "crio" => "cri-o",
        "docker" => "docker",
        "libpod" => "podman",
        _ => return None,
    })
}

/// `<prefix>-<id>.scope` (systemd driver) or, unless `scope_required`, `<prefix>-<id>`
/// (cgroupfs driver): (runtime, id). CRI-O's and Podman's monitors (`crio-conmon-<id>`,
/// `libpod-conmon-<id>`) have no runtime prefix of their own and are not containers.
fn runtime_container(component: &str, scope_required: bool) -> Option<(&'static str, &str)> {
    let stem = match component.strip_suffix(".scope") {
        Some(stem) => stem,
        None if scope_required => return None,
        None => component,
    };
    let (prefix, id) = stem.rsplit_once('-')?;
    is_container_id(id).then_some(())?;
    Some((runtime_of(prefix)?, id))
}

/// `crio-conmon-<id>[.scope]`, `libpod-conmon-<id>[.scope]`: the runtime's monitor, a host helper
/// that sits beside the container it watches.
fn is_monitor(component: &str) -> bool {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    ["crio-conmon-", "libpod-conmon-"]
        .iter()
        .any(|p| stem.strip_prefix(p).is_some_and(is_container_id))
}

/// The pod uid of a pod cgroup: systemd `[<root>-]kubepods[-<qos>]-pod<uid, - as _>.slice`
/// (kubepods.slice/..., kubelet.slice/kubelet-kubepods.slice/... with --cgroup-root), or cgroupfs
/// `pod<uid>` right below `kubepods`, `besteffort` or `burstable`.
fn pod_uid(component: &str, parent: Option<&str>) -> Option<String> {
    let stem = component.strip_suffix(".slice").unwrap_or(component);
    if let Some((prefix, uid)) = stem.rsplit_once("-pod") {
        let last = prefix.rsplit('-').next();
        let kubelet_named = prefix.split('-').any(|w| w == "kubepods")
            && matches!(last, Some("kubepods" | "besteffort" | "burstable"));
        let uid = uid.replace('_', "-");
        return (kubelet_named && is_pod_uid(&uid)).then_some(uid);
    }
    let uid = component.strip_prefix("pod")?;
    (matches!(parent, Some("kubepods" | "besteffort" | "burstable")) && is_pod_uid(uid))
        .then(|| uid.to_owned())
}

/// The container cgroup right below a pod cgroup: `<runtime>-<id>.scope`, `<runtime>-<id>`, or a
/// bare id (cgroupfs driver with containerd or dockershim: the runtime is not in the name).
fn pod_container(component: &str) -> Option<(&'static str, &str)> {
    if is_container_id(component) {
        return Some(("unknown", component));
    }
    runtime_container(component, false)
}

/// `<pod slice>:<prefix>:<id>`: a systemd-style cgroupsPath that a runtime in cgroupfs mode took
/// literally (e.g. below `system.slice/containerd.service` when containerd has SystemdCgroup
/// while the kubelet does not): (pod uid, runtime, id).
fn colon_container(component: &str) -> Option<(Option<String>, &'static str, &str)> {
    let mut fields = component.split(':');
    let (slice, prefix, id) = (fields.next()?, fields.next()?, fields.next()?);
    (fields.next().is_none() && is_container_id(id)).then_some(())?;
    Some((pod_uid(slice, None), runtime_of(prefix)?, id))
}

fn container(runtime: &str, id: &str, pod_uid: Option<String>) -> Reader {
    Reader::Container {
        container_id: id.to_owned(),
        runtime: runtime.to_owned(),
        pod_uid,
    }
}

impl Reader {
    /// The kubelet's own cgroup: its systemd unit, or Talos' `podruntime/kubelet`.
    pub fn is_kubelet(&self) -> bool {
        matches!(self, Reader::Node { unit: Some(u) } if u == "kubelet.service")
    }
}

/// A container id inside a name no runtime we know writes (`kata_<id>`, `<sandbox>-<id>.slice`):
/// the one 64-hex word in it.
fn embedded_id(component: &str) -> Option<(&'static str, &str)> {
    let mut ids = component
        .split(['_', '-', '.', ':'])
        .filter(|w| is_container_id(w));
    let id = ids.next()?;
    ids.next().is_none().then_some(("unknown", id))
}

/// A host process: its unit is the deepest `.service`/`.scope` (or runtime monitor) component.
fn node(parts: &[&str]) -> Reader {
    if parts == ["podruntime", "kubelet"] {
        // Talos runs the kubelet without systemd, in this cgroup.
        return Reader::Node {
            unit: Some("kubelet.service".to_owned()),
        };
    }
    let unit = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope") || is_monitor(p))
        .map(|p| p.to_string());
    Reader::Node { unit }
}

/// Interprets a cgroup v2 path (relative to the cgroup2 mount, as in `/proc/<pid>/cgroup`).
///
/// - Below a pod cgroup (the outermost one, so that whatever wraps the node, e.g. a kind node's
///   own container, is skipped), the reader is the container whose cgroup sits right below the
///   pod's, whatever sub-cgroups it made; the pod's sandbox (pause) is such a container too. A
///   runtime monitor there (`crio-conmon-<id>`) is a host process. Any other name (a sandbox
///   runtime's, with its id taken when it holds one), or a process in the pod cgroup itself, is
///   still the pod's: `PodSandbox` when no id can be read.
/// - Without a pod: the outermost `<runtime>-<id>.scope`, `docker/<id>` (Docker's cgroupfs
///   driver) or `libpod_parent/libpod-<id>` (Podman's) is a container without a pod.
/// - Anything else is a host process. Names that merely contain ids (mount units, transient
///   scopes, `system.slice/<id>`) are not taken for containers.
pub fn parse_cgroup_path(path: &str) -> Reader {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let parent = |i: usize| i.checked_sub(1).map(|j| parts[j]);
    let pod = (0..parts.len()).find_map(|i| pod_uid(parts[i], parent(i)).map(|uid| (i, uid)));
    if let Some((at, uid)) = pod {
        return match parts.get(at + 1) {
            Some(c) if is_monitor(c) => node(&parts),
            Some(c) => match pod_container(c).or_else(|| embedded_id(c)) {
                Some((runtime, id)) => container(runtime, id, Some(uid)),
                None => Reader::PodSandbox { pod_uid: uid },
            },
            None => Reader::PodSandbox { pod_uid: uid },
        };
    }
    for (i, part) in parts.iter().enumerate() {
        if let Some((uid, runtime, id)) = colon_container(part) {
            return container(runtime, id, uid);
        }
        let found = runtime_container(part, true).or_else(|| match parent(i) {
            Some("docker") => is_container_id(part).then_some(("docker", *part)),
            Some("libpod_parent") => runtime_container(part, false).filter(|(r, _)| *r == "podman"),
            _ => None,
        });
        if let Some((runtime, id)) = found {
            return container(runtime, id, None);
        }
    }
    node(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn container(id: &str, runtime: &str, pod: Option<&str>) -> Reader {
        Reader::Container {
            container_id: id.into(),
            runtime: runtime.into(),
            pod_uid: pod.map(Into::into),
        }
    }

    #[test]
    fn cgroup_paths() {
        let uid = "8f1a2b3c-1111-2222-3333-444455556666";
        let cases: Vec<(String, Reader)> = vec![
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f1a2b3c_1111_2222_3333_444455556666.slice/cri-containerd-{ID}.scope"),
                container(ID, "containerd", Some(uid)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod8f1a2b3c_1111_2222_3333_444455556666.slice/crio-{ID}.scope"),
                container(ID, "cri-o", Some(uid)),
            ),
            (
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
                container(ID, "unknown", Some(uid)),
            ),
            (
                format!("/kubepods/pod{uid}/{ID}/nested/sub"),
                container(ID, "unknown", Some(uid)),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                container(ID, "docker", None),
            ),
            (
                "/system.slice/ssh.service".into(),
                Reader::Node { unit: Some("ssh.service".into()) },
            ),
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                Reader::Node { unit: Some("session-3.scope".into()) },
            ),
            // A 64-hex name outside any pod is not a container.
            (format!("/system.slice/{ID}"), Reader::Node { unit: None }),
            ("/".into(), Reader::Node { unit: None }),
            ("".into(), Reader::Node { unit: None }),
            ("/kubepods.slice/kubepods-podnothex.slice/x".into(), Reader::Node { unit: None }),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    /// A container reader with its pod uid (None: no pod), id and runtime.
    fn ctr(pod: Option<&str>, id: &str, runtime: &str) -> Reader {
        container(id, runtime, pod)
    }

    fn sandbox(pod: &str) -> Reader {
        Reader::PodSandbox {
            pod_uid: pod.into(),
        }
    }

    /// A host process with its unit.
    fn host(unit: Option<&str>) -> Reader {
        Reader::Node {
            unit: unit.map(Into::into),
        }
    }

    /// Paths from public projects' test suites, fixtures and bug reports (origin in the comment
    /// of each; "issue" = GitHub issue or pull request thread).
    #[test]
    fn real_world_cgroup_paths() {
        let cases: &[(&str, Reader)] = &[
            // ---- systemd driver ----
            // falcosecurity/falco issue #1568 (kops, containerd with SystemdCgroup)
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod42d4123d_ae8b_4941_aead_64741a830402.slice/cri-containerd-790a0254dc76bfdbc6e218d1d3303585376a65eca0e4fc36bf7b4b9aaad39706.scope",
                ctr(Some("42d4123d-ae8b-4941-aead-64741a830402"), "790a0254dc76bfdbc6e218d1d3303585376a65eca0e4fc36bf7b4b9aaad39706", "containerd"),
            ),
            // cryptnono/cryptnono issue #47 (k3s / colima)
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7fda01c4_0ece_403d_88b4_c371d66d132a.slice/cri-containerd-e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1.scope",
                ctr(Some("7fda01c4-0ece-403d-88b4-c371d66d132a"), "e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1", "containerd"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (CRI-O)
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2942c55e_c9cb_428a_93f4_eaf89c1f3ce0.slice/crio-49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59.scope",
                ctr(Some("2942c55e-c9cb-428a-93f4-eaf89c1f3ce0"), "49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59", "cri-o"),
            ),
            // DataDog/datadog-agent pkg/util/cgroups/readerv2_test.go (CRI-O)
            (
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podb3922967_14e1_4867_9388_461bac94b37e.slice/crio-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40.scope",
                ctr(Some("b3922967-14e1-4867-9388-461bac94b37e"), "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40", "cri-o"),
            ),
            // coroot/coroot-node-agent cgroup/fixtures/proc/400/cgroup + cgroup_test.go (dockershim)
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb.slice/docker-73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd.scope",
                ctr(Some("8712f785-1a3e-41ec-a00b-e2dcc77431cb"), "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd", "docker"),
            ),
            // kontena/pharos-cluster issue #440 (systemd-cgls): kube-proxy in a sub-cgroup of its
            // container's scope ...
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9692aa0e_748e_11e8_8dfa_76d458035df6.slice/docker-abddff03dfd7710c79a750ce3e730365cbb2c8247a974170c1062683bc3e9152.scope/kube-proxy",
                ctr(Some("9692aa0e-748e-11e8-8dfa-76d458035df6"), "abddff03dfd7710c79a750ce3e730365cbb2c8247a974170c1062683bc3e9152", "docker"),
            ),
            // ... and the same pod's pause (sandbox) container: just another container
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9692aa0e_748e_11e8_8dfa_76d458035df6.slice/docker-f58c1c55e72c336d11c6af795260b57f7597d62e4d16951086f754d2e9ce5114.scope",
                ctr(Some("9692aa0e-748e-11e8-8dfa-76d458035df6"), "f58c1c55e72c336d11c6af795260b57f7597d62e4d16951086f754d2e9ce5114", "docker"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go: CRI-O's `container` sub-cgroup
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podea19ff5d_943a_4466_a07e_a71e9e50cc62.slice/crio-21572039dd8398ff8272b031fa5422a40165145ab37f2f8794e1e7f844fe8118.scope/container",
                ctr(Some("ea19ff5d-943a-4466-a07e-a71e9e50cc62"), "21572039dd8398ff8272b031fa5422a40165145ab37f2f8794e1e7f844fe8118", "cri-o"),
            ),
            // open-telemetry/opentelemetry-ebpf-instrumentation statagg cgroup index test
            // (guaranteed pod: kubepods-pod<uid>.slice right below kubepods.slice)
            (
                "kubepods.slice/kubepods-pod2d51509a_fcf0_41cc_b535_57cfeeaf73d1.slice/crio-0853fad78812e955b92d871d8d597d9bc598e34320c9edbfab0a73eacf150145.scope/container",
                ctr(Some("2d51509a-fcf0-41cc-b535-57cfeeaf73d1"), "0853fad78812e955b92d871d8d597d9bc598e34320c9edbfab0a73eacf150145", "cri-o"),
            ),
            // same test (MicroShift lab): CRI-O sandbox cgroup without `.scope`
            (
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod73dc8baf_43a0_413e_aac2_5eb0868f6c1a.slice/crio-c81572302e4a00c05810fc436ebc0952ed7a0806c58a2b7eddbfb58de4539206",
                ctr(Some("73dc8baf-43a0-413e-aac2-5eb0868f6c1a"), "c81572302e4a00c05810fc436ebc0952ed7a0806c58a2b7eddbfb58de4539206", "cri-o"),
            ),
            // aquasecurity/tracee issue #5086: CRI-O's conmon is a host helper, not the container
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podb13213a6_d47e_4bd1_bc00_f175d1ad3b6e.slice/crio-conmon-eb5a56051cf7c5e9e588d0dca94d6673d67d43604686e1485984732b18701057.scope",
                host(Some("crio-conmon-eb5a56051cf7c5e9e588d0dca94d6673d67d43604686e1485984732b18701057.scope")),
            ),
            // opencontainers/runc issue #4620 (systemctl status of a conmon scope)
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod207aaad1_659f_4db8_88e0_46e0cdcc3004.slice/crio-conmon-32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6.scope",
                host(Some("crio-conmon-32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6.scope")),
            ),
            // ---- static / mirror pods: 32-hex config hash as the uid ----
            // DataDog/datadog-agent pkg/util/cgroups/readerv2_test.go
            (
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podc704ef4c297ab11032b83ce52cbfc87b.slice/cri-containerd-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc42.scope",
                ctr(Some("c704ef4c297ab11032b83ce52cbfc87b"), "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc42", "containerd"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (containerd, no `.scope`)
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61c214bc3ed9ff81e21474dd6cba17.slice/cri-containerd-c74b0f5062f0bc726cae1e9369ad4a95deed6b298d247f0407475adb23fa3190",
                ctr(Some("3e61c214bc3ed9ff81e21474dd6cba17"), "c74b0f5062f0bc726cae1e9369ad4a95deed6b298d247f0407475adb23fa3190", "containerd"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (cgroupfs)
            (
                "/kubepods/burstable/pod9729a196c4723b60ab401eaff722982d/d166c6190614efc91956b78e96d74c3fbc96ca8e91948c36de3bc5b0e7b27d48",
                ctr(Some("9729a196c4723b60ab401eaff722982d"), "d166c6190614efc91956b78e96d74c3fbc96ca8e91948c36de3bc5b0e7b27d48", "unknown"),
            ),
            // open-telemetry/opentelemetry-ebpf-instrumentation statagg cgroup index test (cgroupfs CRI-O)
            (
                "kubepods/podb53dfa9e2dc9b890f7fadb2770857b03/crio-bb959773d06ad1a07d469bced637bbc49b6f8573c493fd0548d7f5810eb3e5a8",
                ctr(Some("b53dfa9e2dc9b890f7fadb2770857b03"), "bb959773d06ad1a07d469bced637bbc49b6f8573c493fd0548d7f5810eb3e5a8", "cri-o"),
            ),
            // ---- cgroupfs driver ----
            // Qard/container-info test/fixtures/result.js
            (
                "/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376",
                ctr(Some("74c13223-5a00-11e9-b385-42010a80018d"), "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376", "unknown"),
            ),
            // DataDog/dd-trace-go internal/container_linux_test.go
            (
                "/kubepods/burstable/podfd52ef25-a87d-11e9-9423-0800271a638e/8c046cb0b72cd4c99f51b5591cd5b095967f58ee003710a45280c28ee1a9c7fa",
                ctr(Some("fd52ef25-a87d-11e9-9423-0800271a638e"), "8c046cb0b72cd4c99f51b5591cd5b095967f58ee003710a45280c28ee1a9c7fa", "unknown"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (guaranteed: pod right below kubepods)
            (
                "/kubepods/poda38c12e8-255a-11e9-8cd9-0007cb0b2cc8/32c562ed81a2622b37b80cb216859820ba51bd694f60ee4cf10d07a4011266f8",
                ctr(Some("a38c12e8-255a-11e9-8cd9-0007cb0b2cc8"), "32c562ed81a2622b37b80cb216859820ba51bd694f60ee4cf10d07a4011266f8", "unknown"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (sub-cgroup below the container)
            (
                "/kubepods/besteffort/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8/671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55/kube-proxy",
                ctr(Some("0d08203e-255a-11e9-8cd9-0007cb0b2cc8"), "671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55", "unknown"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (CRI-O, cgroupfs)
            (
                "/kubepods/poda48c12e8-255a-11e9-8cd9-0007cb0b2cc8/crio-63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2e",
                ctr(Some("a48c12e8-255a-11e9-8cd9-0007cb0b2cc8"), "63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2e", "cri-o"),
            ),
            // cri-o/cri-o pull request #5511: the cgroupfs sandbox and its conmon
            (
                "/kubepods/burstable/pod44e2e33e-776b-4284-a647-4bd959899c91/crio-dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083",
                ctr(Some("44e2e33e-776b-4284-a647-4bd959899c91"), "dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083", "cri-o"),
            ),
            (
                "/kubepods/burstable/pod44e2e33e-776b-4284-a647-4bd959899c91/crio-conmon-dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083",
                host(Some("crio-conmon-dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083")),
            ),
            // DataDog/datadog-agent pkg/util/cgroups/readerv2_test.go (systemd-style names, cgroupfs dirs)
            (
                "kubepods/kubepods-besteffort/kubepods-besteffort-podb3922967_14e1_4867_9388_461bac94b37e/2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc41",
                ctr(Some("b3922967-14e1-4867-9388-461bac94b37e"), "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc41", "unknown"),
            ),
            // google/gvisor issue #8269: a process in the pod cgroup itself (no container below):
            // still the pod's
            (
                "/kubepods/besteffort/pod88bcf96e-7b92-4ce5-a3c0-2a6d098a1c33",
                sandbox("88bcf96e-7b92-4ce5-a3c0-2a6d098a1c33"),
            ),
            // Kata Containers with containerd: one cgroup for the pod's sandbox VM
            (
                "/kubepods/burstable/pod1e597579-417e-482f-bf65-5fe170c3aebd/kata_a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e",
                ctr(Some("1e597579-417e-482f-bf65-5fe170c3aebd"), "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e", "unknown"),
            ),
            // ---- kubelet under a cgroup root / nested nodes ----
            // cilium/tetragon pkg/sensors/exec/cgroups_test.go (kind-style kubelet.slice, with
            // cgroups nested below the container's)
            (
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod2edf54f8_6911_449f_9abe_3d468a770d6b.slice/cri-containerd-02de72688d6bb0908d279bbbb05ffa9d7e0b2ae17a8bf23683a33cc1349e55aa.scope/nested-below-container-tracking-level+1/nested-below-container-tracking-level+2",
                ctr(Some("2edf54f8-6911-449f-9abe-3d468a770d6b"), "02de72688d6bb0908d279bbbb05ffa9d7e0b2ae17a8bf23683a33cc1349e55aa", "containerd"),
            ),
            // containerd/nri pull request #227 (kind node)
            (
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice/cri-containerd-a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e.scope",
                ctr(Some("1e597579-417e-482f-bf65-5fe170c3aebd"), "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e", "containerd"),
            ),
            // open-telemetry/opentelemetry-ebpf-instrumentation statagg test (kind, cgroupfs)
            (
                "kubelet/kubepods/burstable/pod73dc8baf-43a0-413e-aac2-5eb0868f6c1a/f52987fbdcc7b29175fb52e01c7917e9d6d2e14550e3a2a7abf739da5a067e31",
                ctr(Some("73dc8baf-43a0-413e-aac2-5eb0868f6c1a"), "f52987fbdcc7b29175fb52e01c7917e9d6d2e14550e3a2a7abf739da5a067e31", "unknown"),
            ),
            // kubernetes/minikube issue #11280 (node in a Docker container, cgroupns off): the
            // node's own id (d6701ec2...) is not the pod's container
            (
                "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0.scope",
                ctr(Some("2ca4a155-3599-498d-bb9d-4446693fa3ea"), "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0", "cri-o"),
            ),
            // DataDog/datadog-agent pkg/util/cgroups/readerv2_test.go (node in a Podman container)
            (
                "libpod_parent/libpod-6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda2acd1bccd50fd7790183537181f658e.slice/docker-1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503.scope",
                ctr(Some("a2acd1bccd50fd7790183537181f658e"), "1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503", "docker"),
            ),
            // same file: the Podman-wrapped node's own mount unit: that node container, no pod
            (
                "libpod_parent/libpod-6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2/system.slice/var-lib-docker-containers-1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503-mounts-shm.mount",
                ctr(None, "6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2", "podman"),
            ),
            // Public code samples (the index holding them names no repository): kind nodes seen
            // from the host's cgroup namespace, cgroupfs and systemd Docker drivers
            (
                "/docker/65a1b6ad09655b3f1475ede1aa0061a97c0d1ada9f2b2acac959afbc92094463/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod96dd7de3_0783_4613_a707_e0effc077ef5.slice/cri-containerd-13a0f64b909e3ff2d63f196d6947927a8af997ab68f8fa9ebb6d6c7018af4ec9.scope",
                ctr(Some("96dd7de3-0783-4613-a707-e0effc077ef5"), "13a0f64b909e3ff2d63f196d6947927a8af997ab68f8fa9ebb6d6c7018af4ec9", "containerd"),
            ),
            (
                "/system.slice/docker-3350ade4226f0adcd9e4e9545d7c2a16a5aa362d12315f2a88e2024cea1246cf.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podb6a16766_05ee_446a_8ee5_ff96a817f47c.slice/cri-containerd-679f3691f7f1b20198548be43b86f265f9fff9be0ac4c973638f5ee89decbca9.scope",
                ctr(Some("b6a16766-05ee-446a-8ee5-ff96a817f47c"), "679f3691f7f1b20198548be43b86f265f9fff9be0ac4c973638f5ee89decbca9", "containerd"),
            ),
            // open-telemetry/opentelemetry-java issue #4507: containerd with SystemdCgroup while
            // runc/kubelet use cgroupfs: the systemd cgroupsPath taken literally
            (
                "/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459",
                ctr(Some("0125ec2f-b64a-4868-8f5b-94b56cbab864"), "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459", "containerd"),
            ),
            // ---- containers without a pod ----
            // coroot/coroot-node-agent cgroup/fixtures/proc/800/cgroup (plain Docker, systemd)
            (
                "/system.slice/docker-cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b.scope",
                ctr(None, "cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b", "docker"),
            ),
            // coroot/coroot-node-agent cgroup/cgroup_test.go (plain Docker, cgroupfs)
            (
                "/docker/63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d",
                ctr(None, "63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d", "docker"),
            ),
            // aquasecurity/tracee pkg/datastores/container/containers_test.go: Podman's conmon
            (
                "/machine.slice/libpod-conmon-64de256b4158dbfd331e27f93bf807f141883be795fd1b2ae7f40294f32c5bfd.scope",
                host(Some("libpod-conmon-64de256b4158dbfd331e27f93bf807f141883be795fd1b2ae7f40294f32c5bfd.scope")),
            ),
            // ---- host processes, and host cgroups whose names hold ids ----
            // coroot/coroot-node-agent cgroup/fixtures/proc/100/cgroup
            ("/system.slice/docker.service", host(Some("docker.service"))),
            // coroot/coroot-node-agent cgroup/cgroup_test.go
            ("/runtime.slice/kubelet.service", host(Some("kubelet.service"))),
            (
                "/system.slice/system-postgresql.slice/postgresql@9.4-main.service",
                host(Some("postgresql@9.4-main.service")),
            ),
            (r"/system.slice/system-serial\x2dgetty.slice", host(None)),
            // coroot/coroot-node-agent cgroup/cgroup_test.go and siderolabs/talos pull request
            // #3950 (Talos: no systemd)
            ("/podruntime/kubelet", host(Some("kubelet.service"))),
            ("/init", host(None)),
            // open-telemetry/opentelemetry-ebpf-instrumentation statagg test
            ("system.slice/crio.service", host(Some("crio.service"))),
            // balena-os/balenaos-in-container issue #60 (user manager)
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                host(Some("init.scope")),
            ),
            // DataDog/datadog-agent pkg/util/cgroups/readerv2_test.go: the container's rootfs mount
            (
                "system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc42-rootfs.mount",
                host(None),
            ),
            // kubernetes/kubernetes issue #10421: a pod's secret volume mount unit
            (
                r"/system.slice/var-lib-kubelet-pods-0d8917fd\x2dda6a\x2d11e7\x2da35d\x2d525400f0cb63-volumes-kubernetes.io\x7esecret-kube\x2dcerts.mount",
                host(None),
            ),
            // cryptnono/cryptnono issue #47: BuildKit's own ids are not container ids
            ("/docker/buildkit/t4967jvf8rbufklrhkicskyes", host(None)),
            // DataDog/dd-trace-go internal/container_linux_test.go: ECS, not Kubernetes
            (
                "/ecs/55091c13-b8cf-4801-b527-f4601742204d/432624d2150b349fe35ba397284dea788c2bf66b885d14dfc1569b01890ca7da",
                host(None),
            ),
            // elastic/apm-agent-python tests/utils/cgroup_tests.py: a UUID as container id: no id
            // to read, still the pod's
            (
                "/kubepods/besteffort/pode9b90526-f47d-11e8-b2a5-080027b9f4fb/15aa6e53-b09a-40c7-8558-c6c31e36c88a",
                sandbox("e9b90526-f47d-11e8-b2a5-080027b9f4fb"),
            ),
            // ---- known unsupported forms (fall back to the node) ----
            // kubernetes/kubernetes issue #36807: pre-1.6 QoS names (no `kubepods`) under a
            // mismatched docker cgroup driver
            (
                "/system.slice/docker.service/BestEffort.slice/BestEffort-pod0d33f94b_ab1a_11e6_9e1a_68f7281d8004.slice/0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b",
                host(Some("docker.service")),
            ),
        ];
        assert!(cases.len() >= 30);
        for (path, want) in cases {
            assert_eq!(&parse_cgroup_path(path), want, "{path}");
        }
    }

    #[test]
    fn ids_are_validated() {
        assert!(is_pod_uid("8f1a2b3c-1111-2222-3333-444455556666"));
        assert!(is_pod_uid("c704ef4c297ab11032b83ce52cbfc87b"));
        assert!(
            !is_pod_uid("8F1A2B3C-1111-2222-3333-444455556666"),
            "uppercase"
        );
        assert!(!is_pod_uid("8f1a2b3c-1111-2222-3333-4444555566667"));
        assert!(!is_pod_uid("8f1a2b3c11112222-3333-444455556666"));
        assert!(!is_pod_uid("123"));
        assert!(is_container_id(ID));
        assert!(!is_container_id(&ID.to_uppercase()));
        assert!(!is_container_id(&ID[1..]));
        // Uppercase or short ids are not taken, whatever the name around them.
        let upper = ID.to_uppercase();
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/docker-{upper}.scope")),
            host(Some(&format!("docker-{upper}.scope")))
        );
        assert_eq!(
            parse_cgroup_path("/kubepods/pod8f1a2b3c-1111-2222-3333-444455556666/abc"),
            sandbox("8f1a2b3c-1111-2222-3333-444455556666"),
            "an unreadable container name in a pod is still the pod's"
        );
        // A cgroupfs `pod<uid>` only counts below kubepods or a QoS class.
        assert_eq!(
            parse_cgroup_path(&format!(
                "/system.slice/pod8f1a2b3c-1111-2222-3333-444455556666/{ID}"
            )),
            host(None)
        );
    }
}
