//! The agent's HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz`, `/readyz` on the
//! scrape port; `/api/v1/credentials` and `/api/v1/readers` (JSON) only with `--api`, and then to
//! loopback clients unless `--api-allow-remote`: they map every credential path, pod, service
//! account, claim subject and reader process on the node.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Query, State as AxumState},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::registry::Registry;

use crate::{
    config::ApiAccess,
    state::{auth::AuthFailure, Credential, ReaderRecord, State},
};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct App {
    pub registry: Arc<Registry>,
    pub state: Arc<State>,
    pub api: ApiAccess,
}

/// The routes; serve them with `into_make_service_with_connect_info::<SocketAddr>()` (the JSON
/// API checks who asks).
pub fn router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/credentials", get(credentials))
        .route("/api/v1/readers", get(readers))
        .route("/api/v1/auth-failures", get(auth_failures))
        .with_state(app)
}

/// Whether `peer` may use the JSON API; the refusal otherwise.
fn api_allowed(app: &App, peer: SocketAddr) -> Result<(), (StatusCode, &'static str)> {
    match app.api {
        ApiAccess::Anyone => Ok(()),
        ApiAccess::Loopback if peer.ip().is_loopback() => Ok(()),
        ApiAccess::Loopback => Err((
            StatusCode::FORBIDDEN,
            "the JSON API answers loopback clients only (--api-allow-remote changes that)\n",
        )),
        ApiAccess::Off => Err((
            StatusCode::NOT_FOUND,
            "the JSON API is off: start the agent with --api\n",
        )),
    }
}

async fn metrics(AxumState(app): AxumState<App>) -> Response {
    // Rendering reads kernel maps (syscalls) and may walk the cgroup tree: off the async threads.
    let render = move || crate::export::render(&app.registry);
    match tokio::task::spawn_blocking(render).await {
        Ok(body) => {
            // The render's label sets and buffers are freed by now; without this the heap keeps
            // their high-water mark resident. Beside the reply, not before it: a trim walks the
            // whole heap.
            tokio::task::spawn_blocking(crate::sys::release_free_memory);
            ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Alive while every task the agent runs for good is running (a stopped ring reader or inventory
/// watcher means the metrics no longer follow anything). Answered from memory: never waits on a
/// scan or a lock held for I/O.
async fn healthz(AxumState(app): AxumState<App>) -> Response {
    let why = app.state.unhealthy();
    if why.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("unhealthy: {}\n", why.join("; ")),
    )
        .into_response()
}

async fn readyz(AxumState(app): AxumState<App>) -> Response {
    let waiting = app.state.waiting_for();
    if waiting.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", waiting.join(", ")),
    )
        .into_response()
}

async fn credentials(
    AxumState(app): AxumState<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Vec<Arc<Credential>>>, (StatusCode, &'static str)> {
    api_allowed(&app, peer)?;
    Ok(Json(app.state.credentials()))
}

/// `?offset=N&limit=M` of `/api/v1/readers`, by cgroup id.
#[derive(Debug, serde::Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Readers per page by default, and at most: thousands of readers with their first reads would
/// make one answer of hundreds of megabytes.
const READERS_PAGE: usize = 500;
const READERS_PAGE_MAX: usize = 5000;

async fn readers(
    AxumState(app): AxumState<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(page): Query<Page>,
) -> Result<Response, (StatusCode, &'static str)> {
    api_allowed(&app, peer)?;
    let all = app.state.readers();
    let total = all.len();
    let limit = page.limit.unwrap_or(READERS_PAGE).min(READERS_PAGE_MAX);
    let page: Vec<ReaderRecord> = all.into_iter().skip(page.offset).take(limit).collect();
    // The total in a header, so that the body stays the plain list it always was.
    Ok(([("x-total-count", total.to_string())], Json(page)).into_response())
}

/// The recent 401/403s joined to the caller's reads, newest first (at most
/// `state::auth::MAX_FAILURES`).
async fn auth_failures(
    AxumState(app): AxumState<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Vec<AuthFailure>>, (StatusCode, &'static str)> {
    api_allowed(&app, peer)?;
    Ok(Json(app.state.with_auth(|a| a.failures())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(api: ApiAccess) -> App {
        App {
            registry: Arc::new(Registry::default()),
            state: Arc::new(State::default()),
            api,
        }
    }

    #[test]
    fn the_json_api_is_opt_in_and_loopback_only_unless_allowed() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local6: SocketAddr = "[::1]:40000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let status = |api, peer| match api_allowed(&app(api), peer) {
            Ok(()) => StatusCode::OK,
            Err((code, _)) => code,
        };
        assert_eq!(status(ApiAccess::Off, local), StatusCode::NOT_FOUND);
        assert_eq!(status(ApiAccess::Loopback, local), StatusCode::OK);
        assert_eq!(status(ApiAccess::Loopback, local6), StatusCode::OK);
        assert_eq!(status(ApiAccess::Loopback, remote), StatusCode::FORBIDDEN);
        assert_eq!(status(ApiAccess::Anyone, remote), StatusCode::OK);
    }
}
