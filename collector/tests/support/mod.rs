//! Real remote-write receivers for tests, started on free loopback ports in temporary
//! directories, and the small tools to talk to them: an HTTP GET, a wait-until, and a
//! parser of the text exposition. Receivers are stopped when dropped.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on loopback now (the kernel's choice; bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET over plain HTTP/1.0: (status, body). Errors are connection failures.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Percent-encodes a query parameter value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` until it gives a value or `limit` passes; panics naming `what`.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    VictoriaMetrics,
    Prometheus,
}

/// A receiver process with its data directory.
#[derive(Debug)]
pub struct Receiver {
    pub kind: Kind,
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Receiver {
    /// VictoriaMetrics single node (Debian package victoria-metrics), answering
    /// queries about the newest second at once.
    pub fn victoria_metrics() -> Receiver {
        Self::start(Kind::VictoriaMetrics, free_port(), tempdir())
    }

    /// Prometheus as a remote-write receiver (Debian package prometheus, 2.33 or later).
    pub fn prometheus() -> Receiver {
        Self::start(Kind::Prometheus, free_port(), tempdir())
    }

    fn start(kind: Kind, port: u16, dir: PathBuf) -> Receiver {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = match kind {
            Kind::VictoriaMetrics => {
                let mut c = Command::new("victoria-metrics");
                c.arg(format!("-httpListenAddr={addr}"))
                    .arg(format!("-storageDataPath={}", dir.join("data").display()))
                    .args([
                        "-retentionPeriod=1d",
                        "-memory.allowedPercent=5",
                        "-search.latencyOffset=0s",
                        "-search.disableCache",
                        "-loggerLevel=ERROR",
                    ]);
                c
            }
            Kind::Prometheus => {
                let config = dir.join("prometheus.yml");
                std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("write config");
                let mut c = Command::new("prometheus");
                c.arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .args(["--web.enable-remote-write-receiver", "--log.level=error"]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {kind:?} ({e}): run scripts/install-test-deps.sh")
            });
        let r = Receiver {
            kind,
            addr,
            dir,
            child: Some(child),
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let path = match self.kind {
            Kind::VictoriaMetrics => "/health",
            Kind::Prometheus => "/-/ready",
        };
        let start = Instant::now();
        while !matches!(http_get(self.addr, path), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?} not ready on {}",
                self.kind,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the collector writes.
    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Stops the process (SIGTERM: it flushes what it holds in memory), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let term = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            if !term.is_ok_and(|s| s.success()) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::start(self.kind, self.addr.port(), self.dir.clone());
        let mut again = std::mem::ManuallyDrop::new(again);
        self.child = again.child.take();
    }

    /// An instant PromQL query: each series' labels (with `__name__`) and value.
    pub fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .expect("query");
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        v["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("a value");
                (labels, value)
            })
            .collect()
    }

    /// Every stored sample's timestamp (ms) of the series matching `selector`
    /// (VictoriaMetrics' raw export).
    pub fn timestamps(&self, selector: &str) -> Vec<Vec<i64>> {
        assert_eq!(self.kind, Kind::VictoriaMetrics);
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/export?match[]={}", encode(selector)),
        )
        .expect("export");
        assert_eq!(status, 200, "{selector}: {body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("export JSON line");
                v["timestamps"]
                    .as_array()
                    .expect("timestamps")
                    .iter()
                    .map(|t| t.as_i64().expect("a timestamp"))
                    .collect()
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().expect("a temp dir").keep()
}

/// One series of a text exposition: labels with `__name__`, empty values left out as
/// Prometheus reads them.
pub type Series = BTreeMap<String, String>;

/// Parses the text exposition (0.0.4) into series and values.
pub fn parse_exposition(text: &str) -> Vec<(Series, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name and value");
            let mut labels = Series::new();
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            labels.insert("__name__".into(), name.to_string());
            let mut chars = rest.trim_end_matches('}').chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "{l}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => {}
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                if chars.peek() == Some(&',') {
                    chars.next();
                }
                if !value.is_empty() {
                    labels.insert(key.trim_start_matches(',').to_string(), value);
                }
            }
            (labels, value.parse().expect("a number"))
        })
        .collect()
}

/// Whether `path` names an executable on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(program).is_file()))
}

/// Opens an agent's stream to the collector's gRPC address as an agent does: the Hello
/// (this identity, this inventory, a 5 s interval) goes first. Returns where to send
/// batches and the collector's answers.
pub async fn open_agent_stream(
    grpc: SocketAddr,
    identity: &gpulse_gpu::HostIdentity,
    inventory: &[gpulse_gpu::DeviceInfo],
) -> (
    tokio::sync::mpsc::Sender<gpulse_proto::v1::AgentMessage>,
    tonic::Streaming<gpulse_proto::v1::CollectorMessage>,
) {
    use gpulse_proto::v1::{self, agent_message, ingest_client::IngestClient};
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .expect("the collector's gRPC port accepts a connection");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(gpulse_proto::hello(
            identity, inventory, 5000,
        ))),
    })
    .await
    .expect("the stream's queue takes the Hello");
    let answers = client
        .stream(tonic::Request::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .expect("the collector opens the stream")
        .into_inner();
    (tx, answers)
}
