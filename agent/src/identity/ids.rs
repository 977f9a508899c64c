//! The shapes of the ids that name pods and containers, as the kubelet and runtimes write them.
//! One definition, used for cgroup names, kubelet directories and the API's container ids alike.

/// A container id as runtimes write it: 64 lowercase hex digits.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod uid: a UUID (8-4-4-4-12 lowercase hex) or, for static and mirror pods, the 32-hex
/// config hash.
pub fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if hex(s, 32) {
        return true;
    }
    let mut groups = s.split('-');
    [8, 4, 4, 4, 12]
        .iter()
        .all(|&n| groups.next().is_some_and(|g| hex(g, n)))
        && groups.next().is_none()
}

/// A DNS-1123 label: what Kubernetes allows for namespace names (1-63 of `a-z0-9-`, alphanumeric
/// at both ends).
pub fn is_dns1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what Kubernetes allows for most object names, service accounts and pods
/// included (at most 253 characters, dot-separated labels).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uid_shapes() {
        assert!(is_pod_uid("8f1a2b3c-1111-2222-3333-444455556666"));
        assert!(
            is_pod_uid("0123456789abcdef0123456789abcdef"),
            "static pod config hash"
        );
        for bad in [
            "",
            "pod",
            "8f1a2b3c-1111-2222-3333",
            "zz1a2b3c-1111-2222-3333-444455556666",
            "a b",
        ] {
            assert!(!is_pod_uid(bad), "{bad}");
        }
    }

    #[test]
    fn kubernetes_names() {
        for ok in ["builder", "kube-system", "a", "x1", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a\"b",
            "a\nb",
            &"a".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain("system.serviceaccount.x"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("builder\"} 1\nfake{a=\"b"));
    }
}
