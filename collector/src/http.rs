//! HTTP endpoints: /metrics (Prometheus), /healthz, /readyz, and an index at /.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;

use gpulse_exposition::ExpositionOptions;

use crate::auth::BearerToken;
use crate::fleet::Fleet;

/// What a scrape of /metrics shows: the fleet, then the collector's own metrics.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub fleet: Arc<Fleet>,
    pub options: ExpositionOptions,
    pub registry: Registry,
}

impl Scrape {
    /// The whole /metrics text.
    pub fn render(&self) -> String {
        gpulse_exposition::render(&self.fleet, self.options, &self.registry)
    }
}

#[derive(Clone)]
pub(crate) struct HttpState {
    pub scrape: Scrape,
    pub ready: Arc<AtomicBool>,
    pub token: Option<BearerToken>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><title>gpulse collector</title><h1>gpulse collector</h1><ul>",
        "<li><a href=\"/metrics\">/metrics</a>: Prometheus exposition of every GPU and agent</li>",
        "<li><a href=\"/healthz\">/healthz</a>: the process is alive</li>",
        "<li><a href=\"/readyz\">/readyz</a>: listeners are bound and serving</li></ul>"
    ))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.token
        && !token.accepts(headers.get(header::AUTHORIZATION))
    {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: configure Prometheus with authorization credentials_file\n",
        )
            .into_response();
    }
    let scrape = state.scrape.clone();
    // Rendering a large fleet takes milliseconds of CPU: keep it off the async workers.
    match tokio::task::spawn_blocking(move || scrape.render()).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response(),
    }
}
