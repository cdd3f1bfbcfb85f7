//! Every HTTP endpoint against any query string: each answers 200 or a 400 that names
//! the parameter at fault, never a 500 and never a dropped connection.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use gpulse_collector::config::CollectorConfig;

/// Endpoints that read parameters, and how a refusal names the parameter.
const PARAMETER_ENDPOINTS: [&str; 4] = ["/api/v1/report", "/report", "/api/v1/findings", "/fleet"];
/// Endpoints that take none: any query is ignored.
const PLAIN_ENDPOINTS: [&str; 4] = ["/", "/metrics", "/healthz", "/readyz"];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(rt: &tokio::runtime::Runtime) -> gpulse_collector::RunningCollector {
    let dir = tempfile::tempdir().unwrap().keep();
    rt.block_on(gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..CollectorConfig::default()
    }))
    .unwrap()
}

/// Checks one answer: a 200, or a 400 whose body names a parameter of the query (or
/// the query as a whole).
fn check(http: SocketAddr, path: &str, query: &str) -> Result<(), TestCaseError> {
    let target = format!("{path}?{query}");
    let (status, body) = support::http_get(http, &target)
        .map_err(|e| TestCaseError::fail(format!("{target}: the connection failed: {e}")))?;
    match status {
        200 => Ok(()),
        400 => {
            let named = if path.starts_with("/api/") {
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["parameter"].as_str().map(str::to_string))
                    .is_some_and(|p| !p.is_empty())
            } else {
                body.contains("parameter `")
            };
            prop_assert!(named, "{target}: a 400 that names no parameter: {body}");
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "{target}: answered {other}: {body}"
        ))),
    }
}

fn panics_counted(c: &gpulse_collector::RunningCollector) -> f64 {
    support::parse_exposition(&c.render_metrics())
        .into_iter()
        .find(|(s, _)| s["__name__"] == "gpulse_collector_http_panics_total")
        .map(|(_, v)| v)
        .expect("gpulse_collector_http_panics_total is exposed")
}

#[test]
fn windows_at_the_edge_of_time_are_answered() {
    let rt = runtime();
    let c = start(&rt);
    for query in [
        "from=9999-12-31T00:00:00Z&to=9999-12-31T23:30:00Z",
        "from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:59Z",
        "to=9999-12-31T23:59:59Z",
        "from=9999-12-31&to=9999-12-31T23:00:00Z",
        "from=18445744073709551s",
        "from=18446744073709551615ns",
        "from=584942417355y",
        "from=1970-01-01T00:00:00Z&to=1970-01-01T00:00:01Z",
        "to=1970-01-01T00:00:00Z",
        "to=1970-01-02",
        "from=0000-01-01T00:00:00Z",
        "from=%FF%FE",
        "from=7d&from=1d",
        "=&&=x&",
    ] {
        for path in ["/api/v1/report", "/report"] {
            check(c.http_addr, path, query).unwrap();
        }
    }
    let (status, body) = support::http_get(
        c.http_addr,
        "/api/v1/report?from=9999-12-31T00:00:00Z&to=9999-12-31T23:00:00Z",
    )
    .unwrap();
    assert_eq!(status, 200, "the last hour a report can cover: {body}");
    assert_eq!(panics_counted(&c), 0.0);
    rt.block_on(c.shutdown());
}

/// A parameter name: a known one, mostly, or anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "from", "to", "group_by", "format", "granularity", "severity", "host",
        ])
        .prop_map(str::to_string),
        1 => ".{0,12}",
    ]
}

/// A year, often one at either end of what RFC 3339 can write.
fn year() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..10_000,
        Just(9999),
        Just(1970),
        1969u32..1972,
        9998u32..10_000
    ]
}

/// A value built to find the edges: times near 1970 and 9999, durations of any size,
/// the known words, and anything at all.
fn value() -> impl Strategy<Value = String> {
    let units = prop::sample::select(vec![
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "",
    ]);
    prop_oneof![
        // As many digits as any, so every magnitude up to u64's is as likely.
        (1u32..21, any::<u64>(), units)
            .prop_map(|(digits, n, u)| format!("{}{u}", n % 10u64.saturating_pow(digits))),
        (year(), 1u32..13, 1u32..32, 0u32..25, 0u32..61, 0u32..61).prop_map(
            |(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        ),
        (year(), 1u32..13, 1u32..32).prop_map(|(y, mo, d)| format!("{y:04}-{mo:02}-{d:02}")),
        prop::sample::select(vec![
            "now",
            "json",
            "csv",
            "day",
            "window",
            "provider,host",
            "label:team",
            "gpu,gpu",
            "warning",
            "critical",
            "info",
            "",
            " ",
            "label:",
            ",",
        ])
        .prop_map(str::to_string),
        ".{0,24}",
    ]
}

/// A query string: encoded pairs, with now and then raw bytes a client may send.
fn query() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        8 => (key(), value())
            .prop_map(|(k, v)| format!("{}={}", support::encode(&k), support::encode(&v))),
        1 => prop::sample::select(vec![
            "%", "%Z", "%FF", "=", "&", "from", "from=", "=7d", "%00=%00", "+=+", "a=b=c",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join("&"))
}

#[test]
fn any_query_string_gets_a_200_or_a_400_naming_its_parameter() {
    let rt = runtime();
    let c = start(&rt);
    let http = c.http_addr;
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&query(), |q| {
            for path in PARAMETER_ENDPOINTS {
                check(http, path, &q)?;
            }
            Ok(())
        })
        .unwrap();
    for path in PLAIN_ENDPOINTS {
        check(http, path, "from=18445744073709551s&%FF=%FF").unwrap();
    }
    assert_eq!(panics_counted(&c), 0.0, "no request panicked");
    rt.block_on(c.shutdown());
}
