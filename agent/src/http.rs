//! The agent's HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz`, `/readyz`,
//! `/api/v1/credentials` and `/api/v1/readers` (JSON).
use std::sync::Arc;

use axum::{
    extract::State as AxumState,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::registry::Registry;

use crate::state::{CredentialRecord, ReaderRecord, State};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct App {
    pub registry: Arc<Registry>,
    pub state: Arc<State>,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/credentials", get(credentials))
        .route("/api/v1/readers", get(readers))
        .with_state(app)
}

async fn metrics(AxumState(app): AxumState<App>) -> Response {
    // Rendering reads kernel maps (syscalls) and may walk the cgroup tree: off the async threads.
    match tokio::task::spawn_blocking(move || crate::metrics::render(&app.registry)).await {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz(AxumState(app): AxumState<App>) -> Response {
    use std::sync::atomic::Ordering::Acquire;
    if app.state.ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut waiting = Vec::new();
    if !app.state.probes_attached.load(Acquire) {
        waiting.push("probes not attached");
    }
    if !app.state.inventory_done.load(Acquire) {
        waiting.push("first inventory scan not done");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", waiting.join(", ")),
    )
        .into_response()
}

async fn credentials(AxumState(app): AxumState<App>) -> Json<Vec<CredentialRecord>> {
    let creds = app.state.credentials.lock().expect("credentials lock");
    Json(creds.iter().cloned().collect())
}

async fn readers(AxumState(app): AxumState<App>) -> Json<Vec<ReaderRecord>> {
    let mut v: Vec<ReaderRecord> = app
        .state
        .readers
        .iter()
        .map(|r| r.value().clone())
        .collect();
    v.sort_by_key(|r| r.cgroup_id);
    Json(v)
}
