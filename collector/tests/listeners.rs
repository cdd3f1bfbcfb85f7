//! Both listeners under hostile or exhausted conditions: silent connections are closed,
//! connections are bounded, and a process out of file descriptors backs off instead of
//! spinning while it keeps serving the agents it has.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod agent;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use gpulse_collector::RunningCollector;
use gpulse_collector::config::{CollectorConfig, ListenerLimits};

use agent::{Agent, spawn_collector};

async fn start(listeners: ListenerLimits) -> RunningCollector {
    gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tempfile::tempdir().unwrap().keep(),
        listeners,
        ..CollectorConfig::default()
    })
    .await
    .unwrap()
}

/// A value of the collector's own /metrics.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::parse_exposition(text)
        .into_iter()
        .find(|(s, _)| {
            s["__name__"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name}{labels:?} is not exposed"))
}

/// Whether the collector closed `s` before `within` passed (it may first send what its
/// protocol opens with, as HTTP/2's settings).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_quiet_agents_are_not() {
    let idle = Duration::from_secs(3);
    let c = start(ListenerLimits {
        idle_timeout: idle,
        ..ListenerLimits::default()
    })
    .await;
    let mut agent = Agent::connect(c.grpc_addr).await;
    agent.deliver().await;
    const SILENT: usize = 40;
    let (grpc, http) = (c.grpc_addr, c.http_addr);
    let closed = tokio::task::spawn_blocking(move || {
        let mut silent: Vec<(&str, TcpStream)> = Vec::new();
        for _ in 0..SILENT {
            silent.push(("grpc", TcpStream::connect(grpc).unwrap()));
            silent.push(("http", TcpStream::connect(http).unwrap()));
        }
        silent
            .iter_mut()
            .map(|(listener, s)| (*listener, closed_within(s, idle * 3)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let open: Vec<_> = closed.iter().filter(|(_, c)| !c).collect();
    assert!(open.is_empty(), "still open after {:?}: {open:?}", idle * 3);
    let text = c.render_metrics();
    for listener in ["grpc", "http"] {
        assert_eq!(
            value(
                &text,
                "gpulse_collector_idle_connections_closed_total",
                &[("listener", listener)]
            ),
            SILENT as f64,
            "{listener}"
        );
    }
    // The agent said nothing for longer than the idle timeout too; its answers to the
    // collector's pings kept it connected.
    agent.deliver().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_closed() {
    let header_read_timeout = Duration::from_secs(2);
    let c = start(ListenerLimits {
        header_read_timeout,
        ..ListenerLimits::default()
    })
    .await;
    let http = c.http_addr;
    let (closed_after, sent) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(http).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: collector\r\n")
            .unwrap();
        let started = Instant::now();
        // One header byte every half second: never idle, never done.
        let mut sent = 0;
        while started.elapsed() < header_read_timeout * 5 {
            std::thread::sleep(Duration::from_millis(500));
            if s.write_all(b"X").is_err() || closed_within(&mut s, Duration::from_millis(1)) {
                break;
            }
            sent += 1;
        }
        (started.elapsed(), sent)
    })
    .await
    .unwrap();
    assert!(
        closed_after < header_read_timeout * 3,
        "still open after {closed_after:?} and {sent} header bytes"
    );
    c.shutdown().await;
}

/// GET over a fresh connection: the status, or `None` when the collector closed the
/// connection without answering.
fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    support::http_get(addr, path)
        .ok()
        .filter(|(status, _)| *status != 0)
        .map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_closed_and_counted() {
    const MAX: usize = 20;
    let c = start(ListenerLimits {
        max_connections: MAX,
        ..ListenerLimits::default()
    })
    .await;
    let http = c.http_addr;
    let held: Vec<TcpStream> = (0..MAX)
        .map(|_| TcpStream::connect(http).unwrap())
        .collect();
    // The collector takes each in turn; wait until it holds them all.
    support::eventually("every connection held", Duration::from_secs(10), || {
        let open = value(
            &c.render_metrics(),
            "gpulse_collector_connections_open",
            &[("listener", "http")],
        );
        (open == MAX as f64).then_some(())
    })
    .await;
    let refused = tokio::task::spawn_blocking(move || status(http, "/healthz"))
        .await
        .unwrap();
    assert_eq!(refused, None, "a connection past the bound gets no answer");
    let text = c.render_metrics();
    assert_eq!(
        value(
            &text,
            "gpulse_collector_connections_refused_total",
            &[("listener", "http")]
        ),
        1.0
    );
    drop(held);
    let status = support::eventually("a slot frees", Duration::from_secs(10), || {
        status(http, "/healthz").filter(|s| *s == 200)
    })
    .await;
    assert_eq!(status, 200);
    c.shutdown().await;
}

/// CPU time the process has used (user and system), from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are fields 14 and 15 of proc(5), 12 and 13 after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let ticks_per_second: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks_per_second)
}

/// A GET on a kept-alive HTTP/1.1 connection: the body of a 200.
fn get_on(conn: &mut TcpStream, path: &str) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: collector\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the collector closed the kept-alive connection");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body[..length].to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_collector_backs_off_and_serves_what_it_has() {
    if !support::installed("prlimit") {
        panic!("prlimit (util-linux) is needed to lower the collector's file limit");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_collector(dir.path());
    let pid = p.child.id();
    let mut agent = Agent::connect(p.grpc).await;
    agent.deliver().await;
    let mut scrape = TcpStream::connect(p.http).unwrap();
    get_on(&mut scrape, "/metrics");

    // Leave the process a few descriptors more than it holds, then use them up.
    let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_now + 4;
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(TcpStream::connect(p.grpc).unwrap());
        flood.push(TcpStream::connect(p.http).unwrap());
    }
    let exhausted = |text: &str, listener| {
        value(
            text,
            "gpulse_collector_accept_errors_total",
            &[("listener", listener), ("reason", "fd_exhausted")],
        )
    };
    support::eventually(
        "both listeners out of descriptors",
        Duration::from_secs(10),
        || {
            let text = get_on(&mut scrape, "/metrics");
            (exhausted(&text, "grpc") > 0.0 && exhausted(&text, "http") > 0.0).then_some(())
        },
    )
    .await;

    let window = Duration::from_secs(3);
    let before = cpu_time(pid);
    tokio::time::sleep(window).await;
    let used = cpu_time(pid) - before;
    // Backing off, the accept loops wake a few times a second; a spinning one takes a
    // whole core. A fifth of one leaves room for a slow, shared test machine.
    assert!(
        used < window / 5,
        "the collector used {used:?} of CPU in {window:?} while out of descriptors"
    );
    let text = get_on(&mut scrape, "/metrics");
    let attempts = exhausted(&text, "grpc") + exhausted(&text, "http");
    assert!(
        attempts < 2.0 * 2.0 * (window.as_secs_f64() + 10.0) + 20.0,
        "{attempts} failed accepts: the listeners do not back off"
    );
    // The agent already connected is still served.
    agent.deliver().await;
    drop(flood);
}
