//! HTTP endpoints: /metrics (Prometheus), /healthz, /readyz, the cost report API
//! (/api/v1/report, JSON or FOCUS-shaped CSV) and page (/report), and an index at /.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::FutureExt;
use prometheus::{IntCounter, Registry};

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
        // Fresh buffers each time: reusing the last render's would save about a quarter
        // of a render's time but hold its size (about 100 KB per 8-GPU host) for good.
        let mut out = String::new();
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
    /// Requests whose handler panicked.
    pub panics: IntCounter,
    /// The last /metrics body.
    pub scrape_cache: crate::scrape_cache::ScrapeCache,
}

/// Every HTTP route: these and `more` (the fleet page's), all behind the one layer that
/// turns a handler's panic into a counted 500.
pub(crate) fn router(state: HttpState, more: Router) -> Router {
    let panics = state.panics.clone();
    routes(state)
        .merge(more)
        .layer(middleware::from_fn_with_state(panics, answer_panics))
}

fn routes(state: HttpState) -> Router {
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

/// A handler that panics answers 500, is logged and counted; the connection and every
/// other request carry on. Without this the panic would end the connection's task and
/// the client would see the connection drop.
async fn answer_panics(State(panics): State<IntCounter>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            panics.inc();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(
                path,
                panic = message,
                "a request failed on a bug and was answered 500; please report it"
            );
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: this request failed on a bug in the collector; it is logged\n",
            )
                .into_response()
        }
    }
}

/// The result of work moved off the async workers; a panic there goes on to
/// [`answer_panics`] like one in the handler itself.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// A request's query parameters, each one of `allowed` and given at most once.
#[derive(Debug)]
struct Params(HashMap<String, String>);

impl Params {
    /// Reads the query; whatever is wrong with it is a [`ParamError`] naming the
    /// parameter, or `query` when no single one is at fault.
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Params, ParamError> {
        let Query(pairs) = query.map_err(|e| ParamError {
            parameter: "query",
            reason: format!("{}; percent-encode each name and value", e.body_text()),
        })?;
        let mut params = HashMap::new();
        for (k, v) in pairs {
            let Some(known) = allowed.iter().find(|a| **a == k) else {
                return Err(ParamError {
                    parameter: "query",
                    reason: format!("unknown parameter {k:?}; known: {}", allowed.join(", ")),
                });
            };
            if params.insert(k, v).is_some() {
                return Err(ParamError {
                    parameter: known_name(known),
                    reason: "given more than once; give it once".into(),
                });
            }
        }
        Ok(Params(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The `'static` name of a known parameter, for its error.
fn known_name(name: &str) -> &'static str {
    REPORT_PARAMS
        .iter()
        .chain(&FINDINGS_PARAMS)
        .find(|p| **p == name)
        .copied()
        .unwrap_or("query")
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
    use crate::scrape_cache::{Body, accepts_gzip};
    let scrape = state.scrape.clone();
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    // Rendering a large fleet takes milliseconds of CPU: the cache renders off the
    // async workers, and reuses a young body.
    match state
        .scrape_cache
        .body(accepts_gzip(&headers), move || scrape.render())
        .await
    {
        Ok(Body::Plain(body)) => (
            [
                (header::CONTENT_TYPE, TEXT),
                (header::VARY, "accept-encoding"),
            ],
            body,
        )
            .into_response(),
        Ok(Body::Gzip(body)) => (
            [
                (header::CONTENT_TYPE, TEXT),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "accept-encoding"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// Findings parameters accepted.
const FINDINGS_PARAMS: [&str; 2] = ["severity", "host"];

/// Fleet-wide findings as JSON (docs/diagnose.md describes the document).
async fn findings_api(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let filter = match Params::parse(query, &FINDINGS_PARAMS)
        .and_then(|q| crate::findings::Filter::parse(q.get("severity"), q.get("host")))
    {
        Ok(f) => f,
        Err(e) => return bad_param(&e),
    };
    let fleet = state.scrape.fleet.clone();
    // The rules run on every GPU: keep that off the async workers.
    match joined(
        tokio::task::spawn_blocking(move || {
            crate::findings::report(fleet.as_ref(), &filter, now_ms())
        })
        .await,
    ) {
        Some(report) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
            .into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "findings failed\n").into_response(),
    }
}

/// Report parameters accepted; anything else is refused, so a typo does not pass silently.
const REPORT_PARAMS: [&str; 5] = ["from", "to", "group_by", "format", "granularity"];
/// The report page's parameters.
const PAGE_PARAMS: [&str; 2] = ["from", "to"];

fn bad_param(e: &ParamError) -> Response {
    let body = serde_json::json!({ "error": e.to_string(), "parameter": e.parameter });
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
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
    let result = joined(tokio::task::spawn_blocking(move || source.read(f)).await);
    match result {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "a report failed");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())
        }
        None => Err((StatusCode::INTERNAL_SERVER_ERROR, "the report failed\n").into_response()),
    }
}

async fn report_api(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let parsed = (|| {
        let q = Params::parse(query, &REPORT_PARAMS)?;
        let csv = match q.get("format") {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => {
                return Err(ParamError {
                    parameter: "format",
                    reason: format!("{other:?} is not json or csv"),
                });
            }
        };
        let by_day = match q.get("granularity") {
            None | Some("day") => csv,
            Some("window") => false,
            Some(other) => {
                return Err(ParamError {
                    parameter: "granularity",
                    reason: format!("{other:?} is not day or window"),
                });
            }
        };
        let window = Window::parse(q.get("from"), q.get("to"), now_ms())?;
        let default: &[Dim] = if csv { &[Dim::Gpu] } else { &[Dim::Provider] };
        let group_by = Dim::parse_list(q.get("group_by"), default)?;
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
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let window = Params::parse(query, &PAGE_PARAMS)
        .and_then(|q| Window::parse(q.get("from"), q.get("to"), now_ms()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `app` behind the panic guard on loopback; its address and the counter.
    async fn serve(app: Router) -> (std::net::SocketAddr, IntCounter) {
        let panics = IntCounter::new("panics_total", "panics").unwrap();
        let app = app.layer(middleware::from_fn_with_state(
            panics.clone(),
            answer_panics,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, panics)
    }

    /// One GET on its own connection: the status, or `None` when the connection dropped.
    async fn status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn bug() -> &'static str {
        panic!("a bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_counted_500_and_the_server_carries_on() {
        let app = Router::new()
            .route("/in-handler", get(|| async { bug() }))
            .route(
                "/off-the-workers",
                get(|| async {
                    joined(tokio::task::spawn_blocking(bug).await).unwrap_or("cancelled")
                }),
            )
            .route("/fine", get(|| async { "ok" }));
        let (addr, panics) = serve(app).await;
        assert_eq!(status(addr, "/in-handler").await, Some(500));
        assert_eq!(status(addr, "/off-the-workers").await, Some(500));
        assert_eq!(panics.get(), 2);
        assert_eq!(status(addr, "/fine").await, Some(200));
        assert_eq!(panics.get(), 2);
    }

    #[test]
    fn a_parameter_given_twice_is_named() {
        let uri: axum::http::Uri = "/api/v1/report?from=7d&from=1d".parse().unwrap();
        let e = Params::parse(Query::try_from_uri(&uri), &REPORT_PARAMS).unwrap_err();
        assert_eq!(e.parameter, "from");
        let uri: axum::http::Uri = "/report?form=7d".parse().unwrap();
        let e = Params::parse(Query::try_from_uri(&uri), &PAGE_PARAMS).unwrap_err();
        assert_eq!(e.parameter, "query");
        assert!(e.reason.contains("\"form\""), "{e}");
    }
}
