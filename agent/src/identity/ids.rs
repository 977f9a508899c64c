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
}
