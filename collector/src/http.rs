//! HTTP endpoints: /metrics (Prometheus), /healthz, /readyz, the cost report API
//! (/api/v1/report, JSON or FOCUS-shaped CSV) and page (/report), and an index at /.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;

use gpulse_exposition::ExpositionOptions;

use crate::auth::BearerToken;
use crate::fleet::Fleet;

/// What a scrape of /metrics shows: the fleet, its cost series, then the collector's
/// own metrics.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub fleet: Arc<Fleet>,
    pub options: ExpositionOptions,
    pub registry: Registry,
    /// `None` where no ledger is kept.
    pub cost: Option<crate::cost::metrics::CostSeries>,
}

impl Scrape {
    /// The whole /metrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        gpulse_exposition::render_fleet(self.fleet.as_ref(), self.options, &mut out);
        if let Some(cost) = &self.cost {
            cost.render(self.fleet.as_ref(), &mut out);
        }
        gpulse_exposition::append_registry(&self.registry, &mut out);
        out
    }

    /// The same series as [`Scrape::render`], as remote-write samples.
    pub fn write_samples(&self, out: &mut crate::remote_write::wire::SnapshotBuilder) {
        gpulse_exposition::write_fleet(self.fleet.as_ref(), self.options, out);
        if let Some(cost) = &self.cost {
            cost.write(self.fleet.as_ref(), out);
        }
        out.add_registry(&self.registry);
    }
}
use crate::cost::report::{self, Dim, ParamError, Window};
use crate::cost::{page, store};

#[derive(Clone)]
pub(crate) struct HttpState {
    pub scrape: Scrape,
    pub ready: Arc<AtomicBool>,
    pub token: Option<BearerToken>,
    /// The ledger reports read.
    pub ledger: Option<store::LedgerSource>,
    /// The ledger's writer: readiness asks whether it can commit a batch now.
    pub ledger_writer: Option<store::StoreHandle>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/report", get(report_api))
        .route("/api/v1/findings", get(findings_api))
        .route("/report", get(report_page))
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><title>gpulse collector</title><h1>gpulse collector</h1><ul>",
        "<li><a href=\"/fleet\">/fleet</a>: every GPU at a glance, live: busy, idle, throttled and why, lost, erroring</li>",
        "<li><a href=\"/metrics\">/metrics</a>: Prometheus exposition of every GPU and agent</li>",
        "<li><a href=\"/healthz\">/healthz</a>: the process is alive</li>",
        "<li><a href=\"/readyz\">/readyz</a>: listeners are bound and the ledger commits batches</li>",
        "<li><a href=\"/report\">/report</a>: GPU cost and efficiency report (estimate)</li>",
        "<li><a href=\"/api/v1/report\">/api/v1/report</a>: the same as JSON, or CSV with <code>?format=csv</code></li>",
        "<li><a href=\"/api/v1/findings\">/api/v1/findings</a>: what slows each GPU down now, in words (<code>?severity=warning&amp;host=H</code>)</li></ul>"
    ))
}

/// Ready once serving, while the ledger's last write worked: a collector that cannot
/// commit cannot acknowledge a batch, and agents are better served by another.
async fn readyz(State(state): State<HttpState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    }
    match state
        .ledger_writer
        .as_ref()
        .map(store::StoreHandle::writable)
    {
        Some(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger cannot commit a batch: {why}\n"),
        )
            .into_response(),
        _ => "ready\n".into_response(),
    }
}

/// `Some(401)` when a token is required and the request lacks it.
fn unauthorized(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    match &state.token {
        Some(token) if !token.accepts(headers.get(header::AUTHORIZATION)) => Some(
            (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <token> \
                 (Prometheus: authorization credentials_file)\n",
            )
                .into_response(),
        ),
        _ => None,
    }
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
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

/// Findings parameters accepted.
const FINDINGS_PARAMS: [&str; 2] = ["severity", "host"];

/// Fleet-wide findings as JSON (docs/diagnose.md describes the document).
async fn findings_api(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let filter = match check_params(&q, &FINDINGS_PARAMS).and_then(|()| {
        crate::findings::Filter::parse(
            q.get("severity").map(String::as_str),
            q.get("host").map(String::as_str),
        )
    }) {
        Ok(f) => f,
        Err(e) => return bad_param(&e),
    };
    let fleet = state.scrape.fleet.clone();
    // The rules run on every GPU: keep that off the async workers.
    match tokio::task::spawn_blocking(move || {
        crate::findings::report(fleet.as_ref(), &filter, now_ms())
    })
    .await
    {
        Ok(report) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "findings failed\n").into_response(),
    }
}

/// Report parameters accepted; anything else is refused, so a typo does not pass silently.
const REPORT_PARAMS: [&str; 5] = ["from", "to", "group_by", "format", "granularity"];

fn bad_param(e: &ParamError) -> Response {
    let body = serde_json::json!({ "error": e.to_string(), "parameter": e.parameter });
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn check_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ParamError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ParamError {
            parameter: "query",
            reason: format!("unknown parameter {k:?}; known: {}", allowed.join(", ")),
        }),
        None => Ok(()),
    }
}

fn now_ms() -> i64 {
    crate::ingest::now_unix_ms()
}

/// Runs a report query off the async workers; a failure is a 500 naming the ledger.
async fn with_ledger<T: Send + 'static>(
    state: &HttpState,
    f: impl FnOnce(&mut store::LedgerReader) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let Some(source) = state.ledger.clone() else {
        return Err((
            StatusCode::NOT_FOUND,
            "this collector keeps no cost ledger\n",
        )
            .into_response());
    };
    let result = tokio::task::spawn_blocking(move || source.read(f)).await;
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a report failed");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())
        }
        Err(_) => Err((StatusCode::INTERNAL_SERVER_ERROR, "the report failed\n").into_response()),
    }
}

async fn report_api(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let parsed = (|| {
        check_params(&q, &REPORT_PARAMS)?;
        let csv = match q.get("format").map(String::as_str) {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => {
                return Err(ParamError {
                    parameter: "format",
                    reason: format!("{other:?} is not json or csv"),
                });
            }
        };
        let by_day = match q.get("granularity").map(String::as_str) {
            None | Some("day") => csv,
            Some("window") => false,
            Some(other) => {
                return Err(ParamError {
                    parameter: "granularity",
                    reason: format!("{other:?} is not day or window"),
                });
            }
        };
        let window = Window::parse(
            q.get("from").map(String::as_str),
            q.get("to").map(String::as_str),
            now_ms(),
        )?;
        let default: &[Dim] = if csv { &[Dim::Gpu] } else { &[Dim::Provider] };
        let group_by = Dim::parse_list(q.get("group_by").map(String::as_str), default)?;
        Ok((csv, by_day, window, group_by))
    })();
    let (csv, by_day, window, group_by) = match parsed {
        Ok(p) => p,
        Err(e) => return bad_param(&e),
    };
    let body = with_ledger(&state, move |reader| {
        let rows = report::load(reader, window, by_day)?;
        Ok(if csv {
            report::csv(&rows, window, &group_by)
                .map_err(|e| store::StoreError::Write(e.to_string()))?
        } else {
            serde_json::to_string_pretty(&report::json(&rows, window, &group_by))
                .map_err(|e| store::StoreError::Write(e.to_string()))?
        })
    })
    .await;
    match body {
        Ok(b) if csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"gpulse-cost-focus.csv\"",
                ),
            ],
            b,
        )
            .into_response(),
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(r) => r,
    }
}

async fn report_page(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let window = check_params(&q, &["from", "to"]).and_then(|()| {
        Window::parse(
            q.get("from").map(String::as_str),
            q.get("to").map(String::as_str),
            now_ms(),
        )
    });
    let window = match window {
        Ok(w) => w,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Html(format!(
                    "<!doctype html><title>bad report parameter</title><p>{}</p>",
                    page::esc(&e.to_string())
                )),
            )
                .into_response();
        }
    };
    match with_ledger(&state, move |reader| {
        let per_day = report::load(reader, window, true)?;
        let per_gpu = report::per_gpu(&per_day);
        Ok(page::render(window, &per_gpu, &per_day))
    })
    .await
    {
        Ok(html) => Html(html).into_response(),
        Err(r) => r,
    }
}
