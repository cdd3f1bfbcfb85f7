//! The fleet page's HTTP routes: the page, its script and style, its event stream,
//! its sign-in form and its JSON.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use gpulse_exposition::HostSource;

use super::access::{Access, Refused};
use super::hub::{Hub, Update};
use super::tile::TileState;

const PAGE: &str = include_str!("assets/fleet.html");
const SCRIPT: &str = include_str!("assets/fleet.js");
const STYLE: &str = include_str!("assets/fleet.css");

/// Filter parameters of /fleet. Each narrows the tiles to one value; `namespace`
/// keeps the GPUs a pod of that namespace holds.
pub const FILTERS: [&str; 6] = ["provider", "region", "model", "host", "namespace", "state"];

/// Everything the fleet page's handlers need.
#[derive(Clone)]
pub struct FleetPage {
    pub hub: Hub,
    pub source: Arc<dyn HostSource>,
    pub access: Access,
}

impl std::fmt::Debug for FleetPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPage")
            .field("hub", &self.hub)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// The fleet page's routes, ready to merge into the collector's router.
pub fn router(page: FleetPage) -> Router {
    Router::new()
        .route("/fleet", get(fleet_page))
        .route("/fleet/events", get(events))
        .route("/fleet/session", axum::routing::post(sign_in))
        .route("/fleet/assets/fleet.js", get(script))
        .route("/fleet/assets/fleet.css", get(style))
        .route("/api/v1/fleet", get(fleet_api))
        .route("/api/v1/fleet/host", get(host_api))
        .with_state(page)
}

/// Nothing but the collector itself: no CDN, no inline script (the state travels in a
/// JSON data block, which is not run).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

fn sign_in_page(status: StatusCode, message: &str, next: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>gpulse fleet: sign in</title>\
         <link rel=\"stylesheet\" href=\"/fleet/assets/fleet.css\">\
         <main class=\"sign-in\"><h1>gpulse fleet</h1><p id=\"sign-in-message\">{}</p>\
         <form method=\"post\" action=\"/fleet/session\">\
         <label for=\"token\">HTTP bearer token of this collector (auth_token_file)</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Sign in</button></form></main></html>",
        crate::cost::page::esc(message),
        crate::cost::page::esc(next),
    );
    (status, [(header::CONTENT_SECURITY_POLICY, CSP)], Html(body)).into_response()
}

fn refused_text(why: Refused) -> Response {
    let text = match why {
        Refused::NoCredential => "sign in at /fleet, or send Authorization: Bearer <token>\n",
        Refused::WrongToken => {
            "wrong bearer token or an old fleet cookie: sign in again at /fleet\n"
        }
    };
    (StatusCode::UNAUTHORIZED, text).into_response()
}

fn bad_parameter(parameter: &str, reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><title>bad fleet parameter</title><p>parameter `{}`: {}</p>",
            crate::cost::page::esc(parameter),
            crate::cost::page::esc(&reason),
        )),
    )
        .into_response()
}

/// A query string's pairs, decoded leniently (bytes that are not UTF-8 become U+FFFD),
/// so that a malformed query is judged by its names, with a 400 naming the one at
/// fault, rather than refused whole without a name.
fn pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Checks /fleet's query: known filters only, and states by their names. The error
/// names the parameter and says what it accepts.
fn check_filters(q: &[(String, String)]) -> Result<(), (String, String)> {
    for (key, value) in q {
        if !FILTERS.contains(&key.as_str()) {
            return Err((
                key.clone(),
                format!("unknown filter; known: {}", FILTERS.join(", ")),
            ));
        }
        if key == "state"
            && let Some(bad) = value
                .split(',')
                .find(|s| !TileState::ALL.iter().any(|t| t.name() == *s))
        {
            return Err((
                key.clone(),
                format!(
                    "{bad:?} is not a state; known: {}",
                    TileState::ALL.map(TileState::name).join(", ")
                ),
            ));
        }
    }
    Ok(())
}

async fn fleet_page(
    State(page): State<FleetPage>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = pairs(raw);
    let here = uri
        .path_and_query()
        .map_or("/fleet".to_string(), |p| p.to_string());
    if let Err(why) = page.access.check(&headers) {
        let message = match why {
            Refused::NoCredential => "This collector asks for its HTTP bearer token.",
            Refused::WrongToken => {
                "That token or sign-in is not valid here (was the token changed?)."
            }
        };
        return sign_in_page(StatusCode::UNAUTHORIZED, message, &here);
    }
    if let Err((parameter, reason)) = check_filters(&q) {
        return bad_parameter(&parameter, reason);
    }
    let hub = page.hub.clone();
    let source = page.source.clone();
    // A link to one host shows it at once, without a second round trip.
    let host = q
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.contains(','));
    let built = tokio::task::spawn_blocking(move || {
        let detail =
            host.and_then(|h| super::detail::of(source.as_ref(), &h, crate::ingest::now_unix_ms()));
        (hub.full_fresh(), detail)
    })
    .await;
    let Ok((full, detail)) = built else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the fleet failed\n",
        )
            .into_response();
    };
    let detail = serde_json::to_string(&detail).unwrap_or_else(|_| "null".into());
    let html = PAGE
        .replace("{{EVENT_ID}}", &page.hub.event_id(full.seq))
        .replace("{{HOST}}", &data_block(&detail))
        .replace("{{STATE}}", &data_block(&full.json));
    let mut response = (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response();
    // A page loaded with the bearer header (through a proxy) signs its stream in too.
    if headers.contains_key(header::AUTHORIZATION)
        && let Some(cookie) = page.access.set_cookie()
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// JSON made safe inside a `<script type="application/json">` block: "</" cannot end
/// the block early once written "<\/", which JSON reads alike.
fn data_block(json: &str) -> String {
    json.replace("</", "<\\/")
}

/// Where the sign-in form may send the browser back to: this page only.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n == "/fleet" || n.starts_with("/fleet?") => n,
        _ => "/fleet",
    }
}

async fn sign_in(State(page): State<FleetPage>, body: Bytes) -> Response {
    let fields: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let next = safe_next(fields.get("next").map(String::as_str)).to_string();
    let Some(typed) = fields.get("token") else {
        return sign_in_page(
            StatusCode::BAD_REQUEST,
            "The form lacks its token field.",
            &next,
        );
    };
    if !page.access.token_is(typed.trim()) {
        tracing::debug!("a fleet page sign-in with a wrong token");
        return sign_in_page(
            StatusCode::UNAUTHORIZED,
            "That is not this collector's token: try again.",
            &next,
        );
    }
    let mut response = Redirect::to(&next).into_response();
    if let Some(cookie) = page.access.set_cookie() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn event(hub: &Hub, u: &Update) -> Event {
    Event::default()
        .event(u.kind)
        .id(hub.event_id(u.seq))
        .data(u.json.as_ref())
}

/// How long a page waits before it reconnects (EventSource's `retry`).
const RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

async fn events(
    State(page): State<FleetPage>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(why) = page.access.check(&headers) {
        return refused_text(why);
    }
    let q: HashMap<String, String> = pairs(raw).into_iter().collect();
    // A reconnecting EventSource names the last event it applied; the first connection
    // names the state the page was served with.
    let after = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .or(q.get("after").map(String::as_str))
        .and_then(|id| page.hub.parse_event_id(id));
    let hub = page.hub.clone();
    if after.is_none() {
        // A page that connects afresh gets the fleet as it is now, not as the last
        // viewer left it.
        let fresh = hub.clone();
        let _ = tokio::task::spawn_blocking(move || fresh.full_fresh()).await;
    }
    let viewer = hub.viewer(after);
    let first =
        futures::stream::once(async { Ok::<_, Infallible>(Event::default().retry(RECONNECT)) });
    let updates = futures::stream::unfold((viewer, hub), |(mut viewer, hub)| async move {
        let u = viewer.next().await?;
        let e = event(&hub, &u);
        Some((Ok::<_, Infallible>(e), (viewer, hub)))
    });
    let mut response = Sse::new(futures::StreamExt::chain(first, updates))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn fleet_api(State(page): State<FleetPage>, headers: HeaderMap) -> Response {
    if let Err(why) = page.access.check(&headers) {
        return refused_text(why);
    }
    let hub = page.hub.clone();
    match tokio::task::spawn_blocking(move || hub.full_fresh()).await {
        Ok(full) => (
            [(header::CONTENT_TYPE, "application/json")],
            full.json.to_string(),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the fleet failed\n",
        )
            .into_response(),
    }
}

async fn host_api(
    State(page): State<FleetPage>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(why) = page.access.check(&headers) {
        return refused_text(why);
    }
    let q: HashMap<String, String> = pairs(raw).into_iter().collect();
    if let Some(k) = q.keys().find(|k| *k != "host") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "query",
            format!("unknown parameter {k:?}; known: host"),
        );
    }
    let Some(host) = q.get("host").cloned() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "host",
            "name the host: ?host=<hostname>".into(),
        );
    };
    let source = page.source.clone();
    let name = host.clone();
    let found = tokio::task::spawn_blocking(move || {
        super::detail::of(source.as_ref(), &name, crate::ingest::now_unix_ms())
    })
    .await;
    match found {
        Ok(Some(detail)) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&detail).unwrap_or_default(),
        )
            .into_response(),
        Ok(None) => json_error(
            StatusCode::NOT_FOUND,
            "host",
            format!("no host {host:?} in the fleet (it may have expired); see /api/v1/fleet"),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the host failed\n",
        )
            .into_response(),
    }
}

fn json_error(status: StatusCode, parameter: &str, error: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": error, "parameter": parameter }).to_string(),
    )
        .into_response()
}
