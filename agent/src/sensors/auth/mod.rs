//! Outbound authentication calls: the endpoint catalog, connect outcomes and HTTP status over
//! plaintext and TLS. Not built yet; its hooks (`sock/inet_sock_set_state`, OpenSSL uprobes) and
//! stages go here, beside `file`, with their shared types in `ebpf/common/src/auth.rs` and their
//! programs in `ebpf/src/auth.rs`.
