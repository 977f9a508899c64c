//! Keeps the kernel's `ENDPOINTS` trie equal to the catalog, hostnames resolved again every
//! `RESOLVE_EVERY`; an address that moves is followed, a name that stops resolving keeps
//! nothing stale.
use std::{net::IpAddr, sync::Arc};

use super::catalog::{Catalog, Resolved, RESOLVE_EVERY};
use crate::kernel::auth_maps::AuthMaps;

/// One pass: resolves the catalog with `resolve` and writes the difference to the kernel.
pub fn sync(
    catalog: &Catalog,
    maps: &AuthMaps,
    resolve: impl Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
) -> Vec<Resolved> {
    let (routes, report) = catalog.routes(resolve);
    for (route, e) in maps.set_routes(&routes) {
        tracing::warn!(?route, error = %e, "the kernel refused an endpoint address");
    }
    report
}

/// Logs what changed in the resolution of each entry (the first pass logs everything).
fn log_changes(before: &[Resolved], now: &[Resolved]) {
    for (i, r) in now.iter().enumerate() {
        if before.get(i) == Some(r) {
            continue;
        }
        match &r.error {
            None => tracing::info!(
                endpoint = ?r.name,
                port = r.port,
                addresses = ?r.addresses,
                "auth endpoint"
            ),
            Some(e) => tracing::info!(
                endpoint = ?r.name,
                port = r.port,
                error = ?e,
                "auth endpoint does not resolve (connects to it are not seen until it does)"
            ),
        }
    }
}

/// Resolves and syncs now, then every `RESOLVE_EVERY`, until the process ends.
pub async fn run(catalog: Arc<Catalog>, maps: Arc<AuthMaps>) {
    let mut before: Vec<Resolved> = Vec::new();
    let mut tick = tokio::time::interval(RESOLVE_EVERY);
    loop {
        tick.tick().await;
        let (c, m) = (catalog.clone(), maps.clone());
        let Ok(now) =
            tokio::task::spawn_blocking(move || sync(&c, &m, super::catalog::system_resolve)).await
        else {
            continue;
        };
        log_changes(&before, &now);
        before = now;
    }
}
