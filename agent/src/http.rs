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

use crate::state::{Credential, ReaderRecord, State};

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
    match tokio::task::spawn_blocking(move || crate::export::render(&app.registry)).await {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
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

async fn credentials(AxumState(app): AxumState<App>) -> Json<Vec<Credential>> {
    Json(app.state.credentials())
}

async fn readers(AxumState(app): AxumState<App>) -> Json<Vec<ReaderRecord>> {
    Json(app.state.readers())
}
