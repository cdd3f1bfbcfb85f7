//! The collector from the outside: over real gRPC on loopback, and its exposition
//! against a golden file and promtool.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;

use gpulse_collector::RunningCollector;
use gpulse_collector::config::CollectorConfig;
use gpulse_collector::fleet::Fleet;
use gpulse_collector::metrics::SelfMetrics;
use gpulse_exposition::ExpositionOptions;
use gpulse_exposition::dcgm::DcgmCompat;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostFacts, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn identity(agent_id: &str, machine_id: &str) -> HostIdentity {
    HostIdentity {
        agent_id: agent_id.into(),
        boot_id: "boot-1".into(),
        hostname: agent_id.into(),
        agent_version: "0.1.0".into(),
        provider: ProviderIdentity {
            provider: Learned::from_config("aws"),
            region: Learned::from_config("us-east-1"),
            zone: Learned::from_config("us-east-1a"),
            instance_type: Learned::from_config("p5.48xlarge"),
        },
        facts: HostFacts {
            machine_id: machine_id.into(),
            os: "Ubuntu 22.04".into(),
            kernel: "5.15.0".into(),
            ..HostFacts::default()
        },
        labels: [("team".to_string(), "llm".to_string())].into(),
        gpu_backend_error: String::new(),
    }
}

async fn start() -> RunningCollector {
    start_with(CollectorConfig::default()).await
}

async fn start_with(config: CollectorConfig) -> RunningCollector {
    let dir = tempfile::tempdir().unwrap().keep();
    gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..config
    })
    .await
    .unwrap()
}

/// A hand-driven agent stream.
struct Stream {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: Streaming<v1::CollectorMessage>,
}

async fn open(
    c: &RunningCollector,
    hello: v1::Hello,
    token: Option<&str>,
) -> Result<Stream, tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{}", c.grpc_addr)).unwrap();
    open_via(endpoint, hello, token).await
}

/// Opens a stream over `endpoint`; a failed connection is a status too.
async fn open_via(
    endpoint: Endpoint,
    hello: v1::Hello,
    token: Option<&str>,
) -> Result<Stream, tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let rx = client.stream(req).await?.into_inner();
    Ok(Stream { tx, rx })
}

impl Stream {
    async fn send(&mut self, seq: u64, snapshots: Vec<v1::Snapshot>) -> collector_message::Msg {
        self.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(v1::Batch {
                    seq,
                    snapshots,
                    agent: None,
                })),
            })
            .await
            .unwrap();
        self.next().await.unwrap()
    }

    async fn next(&mut self) -> Result<collector_message::Msg, tonic::Status> {
        let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("the collector answers within 10 s")?;
        Ok(m.expect("the stream is open").msg.expect("a message"))
    }
}

fn sim(spec: &str) -> Simulator {
    Simulator::new(spec.parse().unwrap())
}

fn hello_for(id: &HostIdentity, sim: &Simulator) -> v1::Hello {
    gpulse_proto::hello(id, sim.inventory(), 5000)
}

fn snapshot(sim: &mut Simulator, t: i64) -> v1::Snapshot {
    v1::Snapshot::from(&Snapshot {
        timestamp_unix_ms: t,
        gpus: sim.sample(t),
    })
}

fn counter(c: &RunningCollector, name: &str) -> f64 {
    c.render_metrics()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exposed"))
}

fn rejected(c: &RunningCollector, reason: &str) -> f64 {
    counter(
        c,
        &format!("gpulse_collector_rejected_messages_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn a_replayed_batch_is_acknowledged_but_applied_once() {
    let c = start().await;
    let mut sim = sim("gpus=2,scenario=training,seed=3");
    let id = identity("node-a", "m-a");
    let t0 = now_ms();
    let s1 = snapshot(&mut sim, t0);
    let s2 = snapshot(&mut sim, t0 + 5000);
    let s3 = snapshot(&mut sim, t0 + 10000);

    let mut first = open(&c, hello_for(&id, &sim), None).await.unwrap();
    assert_eq!(
        first.send(1, vec![s1]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 1 })
    );
    assert_eq!(
        first.send(2, vec![s2.clone()]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 2 })
    );
    drop(first);

    // The agent did not see the ack for 2 before the stream dropped: it replays 2, then sends 3.
    let mut second = open(&c, hello_for(&id, &sim), None).await.unwrap();
    assert_eq!(
        second.send(2, vec![s2]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 2 })
    );
    assert_eq!(
        second.send(3, vec![s3.clone()]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 3 })
    );

    assert_eq!(counter(&c, "gpulse_collector_batches_received_total"), 3.0);
    assert_eq!(counter(&c, "gpulse_collector_duplicate_batches_total"), 1.0);
    assert_eq!(
        counter(&c, "gpulse_collector_gpu_samples_received_total"),
        6.0
    );
    let view = c.fleet.host("node-a").unwrap();
    assert_eq!(view.latest_snapshot_unix_ms, Some(s3.timestamp_unix_ms));
    c.shutdown().await;
}

#[tokio::test]
async fn a_bad_batch_is_refused_with_its_reason_and_changes_nothing() {
    let c = start().await;
    let mut sim = sim("gpus=2,seed=4");
    let id = identity("node-b", "m-b");
    let t0 = now_ms();
    let mut s = open(&c, hello_for(&id, &sim), None).await.unwrap();
    assert!(matches!(
        s.send(10, vec![snapshot(&mut sim, t0)]).await,
        collector_message::Msg::Ack(_)
    ));
    let before = c.fleet.host("node-b").unwrap();

    // Read now and dated an hour ahead: a reading taken an hour on would carry an
    // hour of energy, which ten seconds later is impossible.
    let mut future = snapshot(&mut sim, t0 + 5000);
    future.timestamp_unix_ms = t0 + 3_600_000;
    let mut hot = snapshot(&mut sim, t0 + 5000);
    hot.gpus[1].temperature_celsius = Some(900);
    let mut stranger = snapshot(&mut sim, t0 + 5000);
    stranger.gpus[0].uuid = "GPU-not-ours".into();
    let mut unknown_state = snapshot(&mut sim, t0 + 5000);
    unknown_state.gpus[0].state = 42;
    for (seq, snap, reason) in [
        (11, future, "future_timestamp"),
        (12, hot, "out_of_range"),
        (13, stranger, "unknown_gpu"),
        (14, unknown_state, "unknown_enum"),
    ] {
        match s.send(seq, vec![snap]).await {
            collector_message::Msg::Reject(r) => {
                assert_eq!((r.seq, r.reason.as_str()), (seq, reason), "{}", r.message);
                assert!(!r.message.is_empty());
            }
            other => panic!("seq {seq}: expected a reject, got {other:?}"),
        }
        assert_eq!(rejected(&c, reason), 1.0, "{reason}");
    }
    let after = c.fleet.host("node-b").unwrap();
    assert_eq!(
        after.gpus, before.gpus,
        "a refused batch must not touch stored state"
    );
    // The stream stays usable after a refusal.
    assert!(matches!(
        s.send(15, vec![snapshot(&mut sim, t0 + 10_000)]).await,
        collector_message::Msg::Ack(_)
    ));
    c.shutdown().await;
}

#[tokio::test]
async fn bad_hellos_get_a_clear_status() {
    let c = start().await;
    let sim = sim("gpus=1,seed=5");

    let bad_id = identity("bad id!", "m");
    let err = open(&c, hello_for(&bad_id, &sim), None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("agent id"), "{}", err.message());

    let _holder = open(&c, hello_for(&identity("node-c", "machine-1"), &sim), None)
        .await
        .unwrap();
    let err = open(&c, hello_for(&identity("node-c", "machine-2"), &sim), None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("machine-1"), "{}", err.message());
    assert_eq!(rejected(&c, "agent_id_conflict"), 1.0);

    // A batch before any Hello.
    let mut client = IngestClient::connect(format!("http://{}", c.grpc_addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch::default())),
    })
    .await
    .unwrap();
    let err = client.stream(ReceiverStream::new(rx)).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(rejected(&c, "no_hello"), 1.0);
    c.shutdown().await;
}

/// Opens a stream whose messages are gzipped when `send_gzip`, from a client that asks
/// for gzipped answers when `accept_gzip`; also gives the answer's `grpc-encoding`.
async fn open_compressed(
    c: &RunningCollector,
    hello: v1::Hello,
    send_gzip: bool,
    accept_gzip: bool,
) -> Result<(Stream, Option<String>), tonic::Status> {
    use tonic::codec::CompressionEncoding::Gzip;
    let mut client = IngestClient::connect(format!("http://{}", c.grpc_addr))
        .await
        .unwrap();
    if send_gzip {
        client = client.send_compressed(Gzip);
    }
    if accept_gzip {
        client = client.accept_compressed(Gzip);
    }
    let (tx, rx) = mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let response = client.stream(ReceiverStream::new(rx)).await?;
    let encoding = response
        .metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((
        Stream {
            tx,
            rx: response.into_inner(),
        },
        encoding,
    ))
}

#[tokio::test]
async fn gzipped_and_plain_streams_are_both_taken_and_answers_are_gzipped_only_on_request() {
    let c = start().await;
    for (host, send_gzip, accept_gzip) in [
        ("plain-1", false, false),
        ("gzip-1", true, true),
        ("gzip-send-only-1", true, false),
        ("gzip-accept-only-1", false, true),
    ] {
        let mut sim = sim("gpus=8,seed=11");
        let (mut s, encoding) = open_compressed(
            &c,
            hello_for(&identity(host, &format!("m-{host}")), &sim),
            send_gzip,
            accept_gzip,
        )
        .await
        .unwrap();
        assert_eq!(encoding.as_deref(), accept_gzip.then_some("gzip"), "{host}");
        for seq in 1..=3 {
            let t = now_ms() - 10_000 + seq as i64 * 1000;
            let answer = s.send(seq, vec![snapshot(&mut sim, t)]).await;
            assert!(
                matches!(answer, collector_message::Msg::Ack(v1::Ack { seq: a }) if a == seq),
                "{host}: {answer:?}"
            );
        }
        assert!(
            c.fleet
                .host(host)
                .unwrap()
                .gpus
                .iter()
                .all(|g| g.latest().is_some()),
            "{host}"
        );
    }
    c.shutdown().await;
}

#[tokio::test]
async fn a_gzipped_message_is_bounded_by_its_size_once_decompressed() {
    let c = start_with(CollectorConfig {
        limits: gpulse_collector::config::Limits {
            max_message_bytes: 64 * 1024,
            ..Default::default()
        },
        ..CollectorConfig::default()
    })
    .await;
    let mut sim = sim("gpus=8,seed=6");
    let (s, _) = open_compressed(&c, hello_for(&identity("node-z", "m-z"), &sim), true, false)
        .await
        .unwrap();
    let mut s = s;
    // The same reading 400 times: over 2 MB decoded, a few KB gzipped.
    let one = snapshot(&mut sim, now_ms() - 1000);
    s.tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq: 1,
            snapshots: vec![one; 400],
            agent: None,
        })),
    })
    .await
    .unwrap();
    let end = s.next().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("max_message_bytes"), "{end:?}");
    for _ in 0..50 {
        if rejected(&c, "oversized") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected(&c, "oversized"), 1.0);
    c.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_counted() {
    let c = start_with(CollectorConfig {
        limits: gpulse_collector::config::Limits {
            max_message_bytes: 64 * 1024,
            ..Default::default()
        },
        ..CollectorConfig::default()
    })
    .await;
    let mut sim = sim("gpus=8,seed=6");
    let mut s = open(&c, hello_for(&identity("node-d", "m-d"), &sim), None)
        .await
        .unwrap();
    let t0 = now_ms();
    let big: Vec<v1::Snapshot> = (0..400)
        .map(|i| snapshot(&mut sim, t0 - 400_000 + i * 1000))
        .collect();
    s.tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq: 1,
            snapshots: big,
            agent: None,
        })),
    })
    .await
    .unwrap();
    let end = s.next().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("max_message_bytes"), "{end:?}");
    // The server counts the refusal once the stream has failed.
    for _ in 0..50 {
        if rejected(&c, "oversized") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected(&c, "oversized"), 1.0);
    assert!(
        c.fleet
            .host("node-d")
            .unwrap()
            .gpus
            .iter()
            .all(|g| g.latest().is_none())
    );
    c.shutdown().await;
}

#[tokio::test]
async fn with_a_token_only_authenticated_agents_and_scrapers_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let c = start_with(CollectorConfig {
        auth_token_file: Some(token_file),
        ..CollectorConfig::default()
    })
    .await;
    let sim = sim("gpus=1,seed=7");
    let hello = hello_for(&identity("node-e", "m-e"), &sim);

    let err = open(&c, hello.clone(), None).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = open(&c, hello.clone(), Some("wrong-token-wrong-token"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(rejected(&c, "unauthenticated"), 2.0);
    let _connected = open(&c, hello, Some(token)).await.unwrap();

    let url = format!("http://{}/metrics", c.http_addr);
    assert_eq!(http_get(&url, None).await.0, 401);
    let (status, body) = http_get(&url, Some(token)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("gpulse_agent_up{host=\"node-e\"} 1"),
        "{body}"
    );
    let (status, _) = http_get(&format!("http://{}/healthz", c.http_addr), None).await;
    assert_eq!(status, 200, "probes stay open");
    c.shutdown().await;
}

/// A minimal HTTP/1.1 GET over a raw socket, to test the server as any scraper sees it.
async fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    sock.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn readiness_and_health_answer() {
    let c = start().await;
    assert_eq!(
        http_get(&format!("http://{}/readyz", c.http_addr), None)
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(&format!("http://{}/healthz", c.http_addr), None)
            .await
            .0,
        200
    );
    c.shutdown().await;
}

/// A fleet in a fixed state: every scenario, hidden fields, a lost GPU, a departed agent,
/// and the cost series its ledger gives.
fn golden_text() -> String {
    golden_text_with(DcgmCompat::Off)
}

/// The golden fleet, exposed under the names `dcgm` asks for.
/// The build's own revision and date are the same placeholder in the golden file.
fn without_build_stamp(text: String) -> String {
    use gpulse_exposition::build_info::{BUILD_DATE, REVISION};
    text.replace(
        &format!("build_date=\"{BUILD_DATE}\",revision=\"{REVISION}\""),
        "build_date=\"BUILD_DATE\",revision=\"REVISION\"",
    )
}

fn golden_text_with(dcgm: DcgmCompat) -> String {
    use gpulse_collector::config::BareMetalConfig;
    use gpulse_collector::cost::ledger::Ledger;
    use gpulse_collector::cost::metrics::CostSeries;
    use gpulse_collector::cost::pricing::Pricing;
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    let registry = Registry::new();
    SelfMetrics::new(&registry).unwrap();
    let fleet = Fleet::new(Default::default());
    let pricing = Arc::new(Pricing::from_texts(None, &BareMetalConfig::default()).unwrap());
    let mut ledger = Ledger::new();
    let mut totals = HashMap::new();
    let t0 = 1_790_000_000_000;
    for (i, spec) in [
        "gpus=2,model=h100-sxm,scenario=thermal,seed=11,pods=1",
        "gpus=2,model=a100,scenario=power-cap,seed=12",
        "gpus=1,model=l4,scenario=idle,seed=13,hide=energy+pcie_replays",
        "gpus=2,model=h200,scenario=lost,seed=14",
        "gpus=1,model=h100-sxm,scenario=pcie-degraded,seed=15",
        "gpus=1,model=h100-sxm,scenario=nvlink-errors,seed=16",
        "gpus=1,model=a100,scenario=ecc,seed=17",
        "gpus=1,model=h100-sxm,scenario=xid,seed=18",
        "gpus=1,model=h100-sxm,scenario=idle-held,seed=19",
        "gpus=1,model=a100,scenario=training,seed=20,mig=2,pods=1",
    ]
    .iter()
    .enumerate()
    {
        let mut sim = sim(spec);
        let mut id = identity(&format!("host-{i}"), &format!("machine-{i}"));
        if i == 2 {
            // A provider with no catalogue entry: unpriced, never free.
            id.provider.provider = Learned::from_config("on-prem");
        }
        let host = gpulse_collector::cost::ledger_host(&pricing, &id, sim.inventory(), 5000);
        let session = fleet.connect(id, sim.inventory().to_vec(), t0).unwrap();
        for k in 0..3 {
            let t = t0 + k * 5000;
            let snap = Snapshot {
                timestamp_unix_ms: t,
                gpus: sim.sample(t),
            };
            let mut out = Vec::new();
            for s in &snap.gpus {
                let key = (host.agent_id.clone(), s.uuid.clone());
                out.clear();
                ledger.apply(&key, &host.gpus[&s.uuid].terms, t, s, 300_000, &mut out);
                let total: &mut gpulse_collector::cost::ledger::Usage =
                    totals.entry(key).or_default();
                for (_, u) in &out {
                    total.add(u);
                }
            }
            fleet.apply(&session, k as u64 + 1, vec![snap], t).unwrap();
        }
        // One host's agent lost batches while its collector was away.
        if i == 3 {
            fleet.set_agent_stats(
                &session,
                gpulse_exposition::AgentStats {
                    batches_dropped: 12,
                    batches_rejected: 1,
                    spool_errors: 0,
                    buffered_batches: 2,
                    spool_bytes: 1_048_576,
                },
            );
        }
        if i == 4 {
            fleet.disconnect(&session, t0 + 20_000);
        }
        if i == 8 {
            // A host whose agent cannot read its GPUs says why.
            let mut id = identity("host-no-driver", "machine-nd");
            id.gpu_backend_error = "driver_not_loaded".into();
            fleet.connect(id, Vec::new(), t0).unwrap();
        }
    }
    without_build_stamp(
        gpulse_collector::http::Scrape {
            fleet,
            options: ExpositionOptions {
                nvlink_per_link: true,
                per_process: true,
                dcgm,
            },
            registry,
            cost: Some(CostSeries::new(pricing, Arc::new(RwLock::new(totals)))),
        }
        .render(),
    )
}

/// Diffs an exposition against a golden file, or writes it with GPULSE_BLESS=1.
fn assert_golden(text: &str, file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("GPULSE_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        golden == text,
        "the exposition changed ({file}); if that is intended, review and run GPULSE_BLESS=1 cargo test -p gpulse-collector --test ingest (metric names are API: see docs/metrics.md and docs/dcgm-compat.md)"
    );
    assert!(!text.contains("NaN"), "no metric may be NaN");
}

#[test]
fn the_dcgm_view_matches_its_golden_file() {
    let text = golden_text_with(DcgmCompat::Only);
    assert_golden(&text, "exposition-dcgm.prom");
    // Cost has no DCGM counterpart and stays; gpulse's GPU telemetry gives way.
    let cost: Vec<&str> = gpulse_exposition::names::COST
        .iter()
        .map(|d| d.name)
        .collect();
    for l in text.lines().filter(|l| l.starts_with("gpulse_gpu_")) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(
            cost.contains(&name),
            "only: no gpulse GPU telemetry beside DCGM's: {l}"
        );
    }
    for kept in ["gpulse_agent_up{", "gpulse_host_info{", "gpulse_collector_"] {
        assert!(text.contains(kept), "only keeps {kept}");
    }
    // The XID host (host-7) saw 13 then 31 (third sample): the last XID is 31.
    assert!(
        text.lines()
            .any(|l| l.starts_with("DCGM_FI_DEV_XID_ERRORS{")
                && l.contains("Hostname=\"host-7\"")
                && l.ends_with(" 31")),
        "last XID of host-7"
    );
}

#[test]
fn also_exposes_both_views_unchanged() {
    let both = golden_text_with(DcgmCompat::Also);
    let gpulse = golden_text_with(DcgmCompat::Off);
    let dcgm = golden_text_with(DcgmCompat::Only);
    let lines: std::collections::BTreeSet<&str> = both.lines().collect();
    for l in gpulse.lines().chain(dcgm.lines()) {
        assert!(lines.contains(l), "also lacks {l}");
    }
    assert!(gpulse.lines().count() > 100 && dcgm.lines().count() > 100);
}

#[test]
fn the_dcgm_view_passes_promtool_but_for_dcgm_exporters_own_names() {
    let text = golden_text_with(DcgmCompat::Only);
    let report = promtool_report(&text);
    let counters: Vec<&str> = gpulse_exposition::dcgm::defs()
        .iter()
        .filter(|d| d.kind == gpulse_exposition::names::Kind::Counter)
        .map(|d| d.name)
        .collect();
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let (name, problem) = line.split_once(' ').unwrap();
        let inherited = name.starts_with("DCGM_FI_")
            && (problem == "label names should be written in 'snake_case' not 'camelCase'"
                || (problem == "counter metrics should have \"_total\" suffix"
                    && counters.contains(&name))
                || (problem == "metric name should not include type 'counter'"
                    && name.ends_with("_COUNTER")));
        assert!(inherited, "promtool check metrics: {line}");
    }
    // Every DCGM family carries camelCase labels, so each one exposed must be in the
    // report: promtool did read the whole view.
    for def in gpulse_exposition::dcgm::defs() {
        if text.contains(&format!("# TYPE {} ", def.name)) {
            assert!(
                report.contains(&format!("{} label names", def.name)),
                "promtool did not report on {}: {report}",
                def.name
            );
        }
    }
}

#[test]
fn the_exposition_matches_the_golden_file() {
    assert_golden(&golden_text(), "exposition.prom");
}

use gpulse_testkit::promtool::{check as promtool_check, report as promtool_report};

#[test]
fn every_fleet_metric_appears_in_the_golden_fleet() {
    let text = golden_text();
    // Not played by any simulated model: page retirement is the pre-Ampere mechanism;
    // it is covered through the NVML test library.
    let not_simulated = [
        gpulse_exposition::names::GPU_RETIRED_PAGES.name,
        gpulse_exposition::names::GPU_RETIRED_PAGES_PENDING.name,
    ];
    for def in gpulse_exposition::names::FLEET {
        let present = text.lines().any(|l| {
            l.starts_with(&format!("{}{{", def.name)) || l.starts_with(&format!("{} ", def.name))
        });
        assert_eq!(present, !not_simulated.contains(&def.name), "{}", def.name);
    }
}

#[test]
fn the_exposition_passes_promtool() {
    promtool_check(&golden_text());
}

#[test]
fn an_agent_that_stays_away_past_the_expiry_disappears() {
    let fleet = Fleet::new(Default::default());
    let registry = Registry::new();
    let render = || gpulse_exposition::render(&fleet, ExpositionOptions::default(), &registry);
    let sim = sim("gpus=1,seed=21");
    let session = fleet
        .connect(identity("leaver", "m"), sim.inventory().to_vec(), 1000)
        .unwrap();
    fleet.disconnect(&session, 2000);
    let text = render();
    assert!(
        text.contains("gpulse_agent_up{host=\"leaver\"} 0"),
        "{text}"
    );
    assert!(fleet.expire(2000 + 299_000, 300_000).is_empty(), "not yet");
    assert_eq!(fleet.expire(2000 + 300_001, 300_000), ["leaver"]);
    assert!(!render().contains("leaver"));
}

/// Batches of a simulated host, `count` snapshots `step_ms` apart ending near now.
fn history(sim: &mut Simulator, count: i64, step_ms: i64) -> Vec<v1::Snapshot> {
    let start = now_ms() - count * step_ms - 60_000;
    (0..count)
        .map(|i| snapshot(sim, start + i * step_ms))
        .collect()
}

fn json_get(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The real binary on a data directory; its first stdout line names the addresses.
struct Process {
    child: std::process::Child,
    grpc: String,
    http: String,
}

fn spawn_collector(data_dir: &Path) -> Process {
    spawn_collector_with(data_dir, &[])
}

fn spawn_collector_with(data_dir: &Path, args: &[&str]) -> Process {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "gpulse-collector: agents -> 127.0.0.1:P  metrics -> http://127.0.0.1:Q/metrics"
    let grpc = line
        .split("agents -> ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let http = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    Process {
        grpc: grpc.to_string(),
        http: http.to_string(),
        child,
    }
}

async fn open_at(grpc: &str, hello: v1::Hello) -> Stream {
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let rx = client
        .stream(tonic::Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    Stream { tx, rx }
}

async fn report_totals(http: &str) -> serde_json::Value {
    let (status, body) = http_get(
        &format!("http://{http}/api/v1/report?from=1d&group_by=gpu"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    json_get(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_collector_keeps_its_ledger_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim("gpus=2,model=h100-sxm,scenario=training,seed=31");
    let id = identity("node-k", "m-k");
    let hello = hello_for(&id, &sim);
    let snaps = history(&mut sim, 40, 5000);

    // First life: 25 batches acknowledged, 5 more in flight when it is killed.
    let mut first = spawn_collector(dir.path());
    let mut s = open_at(&first.grpc, hello.clone()).await;
    for (i, snap) in snaps[..25].iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(
            s.send(seq, vec![snap.clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    for (i, snap) in snaps[25..30].iter().enumerate() {
        s.tx.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::Batch(v1::Batch {
                seq: 26 + i as u64,
                snapshots: vec![snap.clone()],
                agent: None,
            })),
        })
        .await
        .unwrap();
    }
    first.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.child.wait().unwrap();

    // Second life: everything acknowledged before the kill is there.
    let mut second = spawn_collector(dir.path());
    let acked_gpu_hours = 24.0 * 5.0 * 2.0 / 3600.0;
    let before = report_totals(&second.http).await;
    let h = before["totals"]["gpu_hours"].as_f64().unwrap();
    assert!(
        h >= acked_gpu_hours - 1e-9,
        "{h} < {acked_gpu_hours}: acknowledged ledger rows were lost"
    );

    // The agent replays everything it has (acknowledged or not, as after a restart of
    // its own), then carries on: nothing may count twice.
    let mut s = open_at(&second.grpc, hello.clone()).await;
    for (i, snap) in snaps.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(
            s.send(seq, vec![snap.clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    let after = report_totals(&second.http).await;

    // The same batches, once, into a collector that was never killed.
    let reference = start().await;
    let mut r = open(&reference, hello, None).await.unwrap();
    for (i, snap) in snaps.iter().enumerate() {
        r.send(i as u64 + 1, vec![snap.clone()]).await;
    }
    let once = report_totals(&reference.http_addr.to_string()).await;
    let expected_gpu_hours = 39.0 * 5.0 * 2.0 / 3600.0;
    for field in [
        "gpu_hours",
        "busy_gpu_hours",
        "energy_kwh",
        "list_cost_usd",
        "clock_lost_gpu_hours",
    ] {
        let (a, b) = (
            after["totals"][field].as_f64().unwrap(),
            once["totals"][field].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
            "{field}: {a} after the kill, {b} without"
        );
    }
    let gpu_hours = after["totals"]["gpu_hours"].as_f64().unwrap();
    assert!((gpu_hours - expected_gpu_hours).abs() < 1e-9, "{gpu_hours}");
    assert!(after["totals"]["list_cost_usd"].as_f64().unwrap() > 0.0);

    // The report command reads the same ledger while the collector runs.
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "report",
            "--since",
            "1d",
            "--group-by",
            "provider,instance_type",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("aws,p5.48xlarge") && text.contains("TOTAL"),
        "{text}"
    );

    second.child.kill().unwrap();
    second.child.wait().unwrap();
    reference.shutdown().await;
}

/// Sends batches `seqs` of `snaps` (seq n is snapshot n - 1) and waits for each ack.
async fn send_acked(s: &mut Stream, snaps: &[v1::Snapshot], seqs: std::ops::Range<u64>) {
    for seq in seqs {
        assert_eq!(
            s.send(seq, vec![snaps[seq as usize - 1].clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_sharing_postgresql_count_a_failover_once_and_report_alike() {
    let url =
        tokio::task::spawn_blocking(|| gpulse_testkit::postgres::server().database("failover"))
            .await
            .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = ["--ledger-url", url.as_str()];
    let agents: Vec<(v1::Hello, Vec<v1::Snapshot>)> = [("node-p1", 41), ("node-p2", 42)]
        .into_iter()
        .map(|(name, seed)| {
            let mut sim = sim(&format!(
                "gpus=2,model=h100-sxm,scenario=training,seed={seed}"
            ));
            let hello = hello_for(&identity(name, &format!("m-{name}")), &sim);
            (hello, history(&mut sim, 40, 5000))
        })
        .collect();
    let (hello1, snaps1) = &agents[0];
    let (hello2, snaps2) = &agents[1];

    let mut a = spawn_collector_with(dirs[0].path(), &shared);
    let b = spawn_collector_with(dirs[1].path(), &shared);
    // Agent 1 on collector A, agent 2 on B.
    let mut s1 = open_at(&a.grpc, hello1.clone()).await;
    let mut s2 = open_at(&b.grpc, hello2.clone()).await;
    send_acked(&mut s1, snaps1, 1..21).await;
    send_acked(&mut s2, snaps2, 1..21).await;
    // Five more batches in flight to A when it is killed.
    for seq in 21..26u64 {
        s1.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(v1::Batch {
                    seq,
                    snapshots: vec![snaps1[seq as usize - 1].clone()],
                    agent: None,
                })),
            })
            .await
            .unwrap();
    }
    a.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    a.child.wait().unwrap();

    // Agent 1 fails over to B and replays everything it has, acknowledged or not.
    let mut s1 = open_at(&b.grpc, hello1.clone()).await;
    send_acked(&mut s1, snaps1, 1..41).await;
    // A comes back; agent 2 reconnects to it and resends from batch 10, which B applied.
    let a = spawn_collector_with(dirs[0].path(), &shared);
    let mut s2 = open_at(&a.grpc, hello2.clone()).await;
    send_acked(&mut s2, snaps2, 10..41).await;

    // Both collectors answer for the whole fleet, identically.
    let (from_a, from_b) = (report_totals(&a.http).await, report_totals(&b.http).await);
    assert_eq!(from_a, from_b);
    for (path, format) in [
        ("/api/v1/report?from=1d&format=csv", "csv"),
        ("/report?from=1d", "page"),
    ] {
        let (sa, body_a) = http_get(&format!("http://{}{path}", a.http), None).await;
        let (sb, body_b) = http_get(&format!("http://{}{path}", b.http), None).await;
        assert_eq!((sa, sb), (200, 200), "{format}");
        assert_eq!(body_a, body_b, "the {format} differs between collectors");
    }

    // The same batches, once each, into one collector that was never killed.
    let reference = start().await;
    for (hello, snaps) in &agents {
        let mut r = open(&reference, hello.clone(), None).await.unwrap();
        for (i, snap) in snaps.iter().enumerate() {
            r.send(i as u64 + 1, vec![snap.clone()]).await;
        }
    }
    let once = report_totals(&reference.http_addr.to_string()).await;
    for field in [
        "gpus",
        "gpu_hours",
        "busy_gpu_hours",
        "energy_kwh",
        "list_cost_usd",
        "clock_lost_gpu_hours",
    ] {
        let (x, y) = (
            from_a["totals"][field].as_f64().unwrap(),
            once["totals"][field].as_f64().unwrap(),
        );
        assert!(
            (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
            "{field}: {x} across the failover, {y} without"
        );
    }
    assert!(from_a["totals"]["list_cost_usd"].as_f64().unwrap() > 0.0);
    eprintln!(
        "GPU-hours across the failover {}, without it {}",
        from_a["totals"]["gpu_hours"], once["totals"]["gpu_hours"]
    );

    // The report command reads the shared ledger too, from anywhere.
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "report",
            "--since",
            "1d",
            "--format",
            "json",
            "--group-by",
            "gpu",
        ])
        .args(shared)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = json_get(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(cli["totals"], from_a["totals"]);

    for mut c in [a, b] {
        c.child.kill().unwrap();
        c.child.wait().unwrap();
    }
    reference.shutdown().await;
}

#[tokio::test]
async fn report_parameters_are_checked_and_named() {
    let c = start().await;
    for (query, parameter) in [
        ("from=yesterday", "from"),
        ("from=now&to=2d", "from"),
        ("group_by=colour", "group_by"),
        ("format=xml", "format"),
        ("form=7d", "query"),
    ] {
        let (status, body) = http_get(
            &format!("http://{}/api/v1/report?{query}", c.http_addr),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(json_get(&body)["parameter"], parameter, "{query}: {body}");
    }
    let (status, body) = http_get(
        &format!("http://{}/api/v1/report?format=csv", c.http_addr),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("BilledCost,EffectiveCost,ListCost,"),
        "{body}"
    );
    c.shutdown().await;
}

/// A few days of a multi-provider fleet, fed over gRPC: what the report page shows.
async fn fleet_with_history(c: &RunningCollector) {
    let hosts = [
        (
            "aws-p5-thermal",
            "aws",
            "us-east-1",
            "p5.48xlarge",
            "gpus=8,model=h100-sxm,scenario=thermal",
        ),
        (
            "gcp-a3-capped",
            "gcp",
            "us-central1",
            "a3-highgpu-8g",
            "gpus=8,model=h100-sxm,scenario=power-cap",
        ),
        (
            "cw-h100",
            "coreweave",
            "us-east-04",
            "gd-8xh100ib-i128",
            "gpus=8,model=h100-sxm,scenario=training",
        ),
        (
            "lambda-h100",
            "lambda",
            "us-south-1",
            "gpu_8x_h100_sxm5",
            "gpus=8,model=h100-sxm,scenario=training",
        ),
        (
            "nebius-h200",
            "nebius",
            "eu-north1",
            "gpu-h200-sxm",
            "gpus=8,model=h200,scenario=training",
        ),
        (
            "crusoe-h200-idle",
            "crusoe",
            "us-northcentral1",
            "h200-141gb-sxm-ib.8x",
            "gpus=8,model=h200,scenario=idle",
        ),
        (
            "onprem-a100",
            "on-prem",
            "dc1",
            "dgx-a100",
            "gpus=8,model=a100,scenario=idle",
        ),
        (
            "gcp-l4",
            "gcp",
            "us-central1",
            "g2-standard-4",
            "gpus=1,model=l4,scenario=training",
        ),
    ];
    for (i, (name, provider, region, instance, spec)) in hosts.iter().enumerate() {
        let mut sim = sim(&format!("{spec},seed={}", 50 + i));
        let mut id = identity(name, &format!("m-{name}"));
        id.provider = ProviderIdentity {
            provider: Learned::from_config(*provider),
            region: Learned::from_config(*region),
            zone: Learned::default(),
            instance_type: Learned::from_config(*instance),
        };
        let hello = gpulse_proto::hello(&id, sim.inventory(), 600_000);
        let mut s = open(c, hello, None).await.unwrap();
        // Six days at 10-minute intervals, newest a minute ago.
        let snaps = history(&mut sim, 6 * 144, 600_000);
        for (k, chunk) in snaps.chunks(288).enumerate() {
            assert!(matches!(
                s.send(k as u64 + 1, chunk.to_vec()).await,
                collector_message::Msg::Ack(_)
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_page_renders_in_a_real_browser() {
    let c = start().await;
    fleet_with_history(&c).await;
    let url = format!("http://{}/report?from=7d", c.http_addr);
    let (status, html) = http_get(&url, None).await;
    assert_eq!(status, 200);
    assert!(!html.contains("<script"), "the page needs no script");

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("report.png");
    let browser = chromium::Chromium::new(1400, 2000);
    let dom = browser.dump_dom(&url, &[]);
    for needle in [
        "GPU cost and efficiency",
        "id=\"scorecard\"",
        "data-model=\"h100\"",
        "data-model=\"h200\"",
        "id=\"spend-chart\"",
        "class=\"spend-bar\"",
        "id=\"worst-table\"",
        "coreweave",
        "unpriced",
        "not an invoice",
    ] {
        assert!(dom.contains(needle), "the rendered page lacks {needle:?}");
    }
    assert!(
        dom.matches("class=\"spend-bar\"").count() >= 6,
        "a bar per day and provider"
    );
    let png = browser.screenshot(&url, &screenshot);
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("report page screenshot: {}", screenshot.display());
    c.shutdown().await;
}

/// Fleet-wide findings: the rules of `gpulse-agent diagnose` run by the collector on
/// every host's recent readings, at the agents' own 5 s cadence, served as JSON and as
/// `gpulse_gpu_finding`.
#[tokio::test]
async fn the_collector_finds_what_each_host_shows() {
    let expected: &[(&str, &str, &str)] = &[
        ("training", "", ""),
        ("idle", "", ""),
        ("thermal", "thermal_throttling", "warning"),
        ("power-cap", "provider_power_cap", "info"),
        ("pcie-degraded", "pcie_downtrained", "warning"),
        ("lost", "gpu_lost", "critical"),
        ("hw-slowdown", "hardware_slowdown", "warning"),
        ("sync-boost", "sync_boost", "info"),
        ("app-clocks", "application_clocks_locked", "warning"),
        ("nvlink-errors", "nvlink_down", "warning"),
        ("xid", "xid", "info"),
        // The uncorrectable error came a minute ago, before the 30 s window; what is
        // still true now is the remap waiting for a reset.
        ("ecc", "row_remap_pending", "warning"),
        ("idle-held", "idle_while_held", "warning"),
    ];
    let c = start().await;
    let mut streams = Vec::new();
    for (i, (scenario, _, _)) in expected.iter().enumerate() {
        let gpus = if *scenario == "nvlink-errors" { 8 } else { 2 };
        let mut sim = sim(&format!("gpus={gpus},scenario={scenario},seed={i}"));
        let host = format!("host-{scenario}");
        let mut stream = open(&c, hello_for(&identity(&host, &host), &sim), None)
            .await
            .unwrap();
        let reply = stream.send(1, history(&mut sim, 12, 5000)).await;
        assert!(
            matches!(reply, collector_message::Msg::Ack(_)),
            "{scenario}: {reply:?}"
        );
        streams.push(stream);
    }
    let http = format!("http://{}", c.http_addr);
    let (status, body) = http_get(&format!("{http}/api/v1/findings"), None).await;
    assert_eq!(status, 200, "{body}");
    let report = json_get(&body);
    assert_eq!(report["version"], 1);
    assert_eq!(report["hosts"].as_u64(), Some(expected.len() as u64));
    let findings = report["findings"].as_array().unwrap();
    for (scenario, kind, severity) in expected {
        let host = format!("host-{scenario}");
        let on_host: Vec<&serde_json::Value> =
            findings.iter().filter(|f| f["host"] == host).collect();
        if kind.is_empty() {
            assert!(on_host.is_empty(), "{scenario}: {on_host:?}");
            continue;
        }
        let found = on_host
            .iter()
            .find(|f| f["kind"] == *kind)
            .unwrap_or_else(|| panic!("{scenario}: no {kind} in {on_host:?}"));
        assert_eq!(found["severity"], *severity, "{scenario}");
        assert_eq!(found["provider"], "aws");
        assert_eq!(found["readings"], 6, "the default window");
        assert!(!found["summary"].as_str().unwrap().is_empty());
        assert!(!found["evidence"].as_array().unwrap().is_empty());
        assert!(!found["action"].as_str().unwrap().is_empty());
    }
    // Most severe first.
    let rank = |s: &serde_json::Value| match s.as_str().unwrap() {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    };
    assert!(
        findings
            .windows(2)
            .all(|w| rank(&w[0]["severity"]) >= rank(&w[1]["severity"]))
    );

    // Filters, and refusals that name the parameter.
    let (_, body) = http_get(&format!("{http}/api/v1/findings?severity=critical"), None).await;
    let critical = json_get(&body);
    assert!(
        critical["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] == "critical")
    );
    assert!(!critical["findings"].as_array().unwrap().is_empty());
    let (_, body) = http_get(&format!("{http}/api/v1/findings?host=host-thermal"), None).await;
    let one = json_get(&body);
    assert_eq!(one["hosts"], 1);
    assert!(
        one["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["host"] == "host-thermal")
    );
    for (query, parameter) in [("severity=bad", "severity"), ("colour=red", "query")] {
        let (status, body) = http_get(&format!("{http}/api/v1/findings?{query}"), None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(json_get(&body)["parameter"], parameter, "{query}");
    }

    // The same findings on /metrics, one series per GPU and finding.
    let text = c.render_metrics();
    promtool_check(&text);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gpulse_gpu_finding{"))
        .collect();
    assert_eq!(series.len(), findings.len(), "{series:?}");
    assert!(series.iter().any(|l| l.contains("host=\"host-thermal\"")
        && l.contains("kind=\"thermal_throttling\"")
        && l.contains("severity=\"warning\"")
        && l.ends_with(" 1")));
    drop(streams);
    c.shutdown().await;
}

/// With findings off, no readings are kept and nothing is found.
#[tokio::test]
async fn findings_can_be_turned_off() {
    let c = start_with(CollectorConfig {
        findings_readings: 0,
        ..CollectorConfig::default()
    })
    .await;
    let mut sim = sim("gpus=2,scenario=thermal,seed=1");
    let mut stream = open(&c, hello_for(&identity("hot", "m-hot"), &sim), None)
        .await
        .unwrap();
    let reply = stream.send(1, history(&mut sim, 12, 5000)).await;
    assert!(matches!(reply, collector_message::Msg::Ack(_)), "{reply:?}");
    let (status, body) = http_get(&format!("http://{}/api/v1/findings", c.http_addr), None).await;
    assert_eq!(status, 200);
    let report = json_get(&body);
    assert_eq!(report["gpus"], 2);
    assert_eq!(report["findings"].as_array().unwrap().len(), 0);
    assert!(!c.render_metrics().contains("gpulse_gpu_finding{"));
    drop(stream);
    c.shutdown().await;
}

/// A certificate authority for tests, issuing server and client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and key, as PEM text and as the files holding it.
struct Issued {
    cert_pem: String,
    key_pem: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for `dns_name`, for a server or a client.
    fn issue(&self, dns_name: &str, server: bool) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_string()]).unwrap();
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let base = self.dir.path().join(dns_name);
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: base.with_extension("crt"),
            key: base.with_extension("key"),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key, &issued.key_pem).unwrap();
        issued
    }
}

/// The name in the collector's test certificate.
const SERVER_NAME: &str = "collector.test";

/// A collector serving `server` on both listeners, with `client_ca` for mutual TLS.
async fn start_tls(
    server: &Issued,
    client_ca: Option<&Pki>,
    config: CollectorConfig,
) -> RunningCollector {
    start_with(CollectorConfig {
        tls_cert_file: Some(server.cert.clone()),
        tls_key_file: Some(server.key.clone()),
        tls_client_ca_file: client_ca.map(Pki::ca),
        ..config
    })
    .await
}

/// An endpoint to the collector's gRPC over TLS, trusting `ca`, with a client certificate.
fn tls_endpoint(c: &RunningCollector, ca: &Pki, client: Option<&Issued>) -> Endpoint {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.ca_pem))
        .domain_name(SERVER_NAME);
    if let Some(client) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &client.cert_pem,
            &client.key_pem,
        ));
    }
    Endpoint::from_shared(format!("https://{}", c.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

/// Polls until `reason` has been counted `at_least` times: a refused handshake is
/// counted by the server after the client has seen it fail.
async fn eventually_rejected(c: &RunningCollector, reason: &str, at_least: f64) {
    for _ in 0..250 {
        if rejected(c, reason) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{reason} counted {} times, expected at least {at_least}",
        rejected(c, reason)
    );
}

#[tokio::test]
async fn over_mutual_tls_an_agent_gets_in_under_its_certificates_name_only() {
    let pki = Pki::new("gpulse test CA");
    let server = pki.issue(SERVER_NAME, true);
    let c = start_tls(&server, Some(&pki), CollectorConfig::default()).await;
    let mut sim = sim("gpus=1,seed=21");

    let node_m = pki.issue("node-m", false);
    let hello = hello_for(&identity("node-m", "m-m"), &sim);
    let mut s = open_via(tls_endpoint(&c, &pki, Some(&node_m)), hello, None)
        .await
        .unwrap();
    assert_eq!(
        s.send(1, vec![snapshot(&mut sim, now_ms())]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 1 })
    );
    assert!(c.fleet.host("node-m").is_some());

    // node-m's certificate does not make it node-x.
    let hello = hello_for(&identity("node-x", "m-x"), &sim);
    let err = open_via(tls_endpoint(&c, &pki, Some(&node_m)), hello, None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("credential_mismatch"), "{err:?}");
    assert!(err.message().contains("node-m"), "{err:?}");
    assert_eq!(rejected(&c, "credential_mismatch"), 1.0);
    assert!(c.fleet.host("node-x").is_none());
    c.shutdown().await;
}

#[tokio::test]
async fn over_mutual_tls_a_certificate_from_another_ca_or_none_is_refused() {
    let pki = Pki::new("gpulse test CA");
    let server = pki.issue(SERVER_NAME, true);
    let c = start_tls(&server, Some(&pki), CollectorConfig::default()).await;
    let sim = sim("gpus=1,seed=22");
    let hello = hello_for(&identity("node-o", "m-o"), &sim);

    let other = Pki::new("another CA");
    let stranger = other.issue("node-o", false);
    let err = open_via(tls_endpoint(&c, &pki, Some(&stranger)), hello.clone(), None)
        .await
        .err()
        .unwrap();
    assert_ne!(err.code(), tonic::Code::Ok);
    eventually_rejected(&c, "unauthenticated", 1.0).await;

    let err = open_via(tls_endpoint(&c, &pki, None), hello.clone(), None)
        .await
        .err()
        .unwrap();
    assert_ne!(err.code(), tonic::Code::Ok);
    eventually_rejected(&c, "unauthenticated", 2.0).await;

    // Plain text to a TLS port gets nowhere either.
    let plain = Endpoint::from_shared(format!("http://{}", c.grpc_addr)).unwrap();
    assert!(open_via(plain, hello, None).await.is_err());
    assert!(c.fleet.host("node-o").is_none());
    c.shutdown().await;
}

#[tokio::test]
async fn a_per_agent_token_admits_its_own_agent_id_only() {
    let dir = tempfile::tempdir().unwrap();
    let shared = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
    let node_p = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    std::fs::write(dir.path().join("token"), shared).unwrap();
    std::fs::write(
        dir.path().join("agent-tokens"),
        format!("# one line per agent\nnode-p {node_p}\n"),
    )
    .unwrap();
    let c = start_with(CollectorConfig {
        auth_token_file: Some(dir.path().join("token")),
        agent_tokens_file: Some(dir.path().join("agent-tokens")),
        ..CollectorConfig::default()
    })
    .await;
    let mut sim = sim("gpus=1,seed=23");

    let mut s = open(
        &c,
        hello_for(&identity("node-p", "m-p"), &sim),
        Some(node_p),
    )
    .await
    .unwrap();
    assert_eq!(
        s.send(1, vec![snapshot(&mut sim, now_ms())]).await,
        collector_message::Msg::Ack(v1::Ack { seq: 1 })
    );

    let err = open(
        &c,
        hello_for(&identity("node-q", "m-q"), &sim),
        Some(node_p),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node-p"), "{err:?}");
    assert_eq!(rejected(&c, "credential_mismatch"), 1.0);
    assert!(c.fleet.host("node-q").is_none());

    // The shared token admits any agent id, as before.
    let _q = open(
        &c,
        hello_for(&identity("node-q", "m-q"), &sim),
        Some(shared),
    )
    .await
    .unwrap();
    let err = open(
        &c,
        hello_for(&identity("node-r", "m-r"), &sim),
        Some("not-a-token-at-all"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(rejected(&c, "unauthenticated"), 1.0);

    // Scrapers use the shared token; an agent's token does not open /metrics.
    let url = format!("http://{}/metrics", c.http_addr);
    assert_eq!(http_get(&url, Some(node_p)).await.0, 401);
    assert_eq!(http_get(&url, Some(shared)).await.0, 200);
    c.shutdown().await;
}

/// A GET over TLS, trusting `ca`, with a client certificate; `Err` when the connection
/// fails (a refused handshake).
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    ca: &Pki,
    client: Option<&Issued>,
) -> Result<(u16, String), std::io::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    tls.read_to_string(&mut buf).await?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {buf:?}")))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn metrics_are_served_over_tls_and_mutual_tls() {
    let pki = Pki::new("gpulse test CA");
    let server = pki.issue(SERVER_NAME, true);
    let scraper = pki.issue("prometheus", false);

    let c = start_tls(&server, None, CollectorConfig::default()).await;
    let (status, body) = https_get(c.http_addr, "/metrics", &pki, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("gpulse_collector_batches_received_total"),
        "{body}"
    );
    // A plain-text scrape of a TLS port gets no metrics.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(c.http_addr).await.unwrap();
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("gpulse_collector"), "{answer}");
    }
    c.shutdown().await;

    let c = start_tls(&server, Some(&pki), CollectorConfig::default()).await;
    assert!(
        https_get(c.http_addr, "/metrics", &pki, None)
            .await
            .is_err(),
        "without a client certificate the handshake is refused"
    );
    let other = Pki::new("another CA");
    assert!(
        https_get(
            c.http_addr,
            "/metrics",
            &pki,
            Some(&other.issue("prometheus", false))
        )
        .await
        .is_err()
    );
    let (status, body) = https_get(c.http_addr, "/metrics", &pki, Some(&scraper))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("gpulse_collector_batches_received_total"),
        "{body}"
    );
    c.shutdown().await;

    // HTTP can opt out of client certificates; the shared token then guards /metrics.
    let dir = tempfile::tempdir().unwrap();
    let token = "00112233445566778899aabbccddeeff";
    std::fs::write(dir.path().join("token"), token).unwrap();
    let c = start_tls(
        &server,
        Some(&pki),
        CollectorConfig {
            http_client_auth: gpulse_collector::config::HttpClientAuth::None,
            auth_token_file: Some(dir.path().join("token")),
            ..CollectorConfig::default()
        },
    )
    .await;
    let (status, _) = https_get(c.http_addr, "/metrics", &pki, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = https_get(c.http_addr, "/healthz", &pki, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    c.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_naming_the_file() {
    let pki = Pki::new("gpulse test CA");
    let server = pki.issue(SERVER_NAME, true);
    let missing = pki.dir.path().join("missing.crt");
    for (cert, key, ca, needle) in [
        (&missing, &server.key, None, "missing.crt"),
        (&server.cert, &server.cert, None, "PRIVATE KEY"),
        (&server.cert, &server.key, Some(&server.key), "client CA"),
    ] {
        let err = gpulse_collector::start(CollectorConfig {
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: pki.dir.path().join("data"),
            tls_cert_file: Some(cert.clone()),
            tls_key_file: Some(key.clone()),
            tls_client_ca_file: ca.cloned(),
            ..CollectorConfig::default()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// The binary as an operator runs it: TLS settings from flags and the environment, and
/// a file it cannot use named in its error.
#[test]
fn the_binary_names_the_tls_file_it_cannot_use() {
    let pki = Pki::new("gpulse test CA");
    let server = pki.issue(SERVER_NAME, true);
    let missing = pki.dir.path().join("no-such-key.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(pki.dir.path().join("data"))
        .arg("--tls-cert-file")
        .arg(&server.cert)
        .env("GPULSE_COLLECTOR_TLS_KEY_FILE", &missing)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("TLS key"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args(["--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(pki.dir.path().join("data"))
        .arg("--tls-cert-file")
        .arg(&server.cert)
        .arg("--tls-key-file")
        .arg(&server.key)
        .args(["--http-client-auth", "none"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("grpc_listen") && stderr.contains("TLS alone"),
        "{stderr}"
    );
}

/// A port in use is one clear message whatever RUST_BACKTRACE says, and a mistyped
/// GPULSE_COLLECTOR_ variable is named.
#[test]
fn a_start_up_error_is_one_message_without_a_stack_trace() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env("GPULSE_COLLECTOR_DATADIR", "/tmp/nowhere")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&taken.local_addr().unwrap().to_string()),
        "{stderr}"
    );
    assert!(
        !stderr.contains("acktrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("Error: ")).count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("GPULSE_COLLECTOR_DATADIR is set but no setting reads it")
            && stderr.contains("GPULSE_COLLECTOR_DATA_DIR"),
        "{stderr}"
    );
}

/// Two hosts that report the same GPU UUID (cloned images, a misconfigured simulator)
/// keep separate series, each with its own readings: never merged.
#[tokio::test]
async fn two_hosts_reporting_the_same_uuid_keep_separate_series_and_ledger_rows() {
    let c = start().await;
    // The same seed gives the same UUIDs; the scenarios give different readings.
    let mut idle = sim("gpus=1,scenario=idle,seed=5");
    let mut busy = sim("gpus=1,scenario=training,seed=5");
    let uuid = idle.inventory()[0].uuid.clone();
    assert_eq!(uuid, busy.inventory()[0].uuid);
    let t0 = now_ms();
    for (host, sim) in [("twin-a", &mut idle), ("twin-b", &mut busy)] {
        let id = identity(host, &format!("m-{host}"));
        let mut stream = open(&c, hello_for(&id, sim), None).await.unwrap();
        let batch = vec![snapshot(sim, t0), snapshot(sim, t0 + 5000)];
        assert_eq!(
            stream.send(1, batch).await,
            collector_message::Msg::Ack(v1::Ack { seq: 1 })
        );
    }
    let text = c.render_metrics();
    let utilisation = |host: &str| -> f64 {
        let prefix =
            format!("gpulse_gpu_utilization_ratio{{host=\"{host}\",gpu=\"0\",uuid=\"{uuid}\"");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "one series for {host}: {lines:?}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (a, b) = (utilisation("twin-a"), utilisation("twin-b"));
    assert!(
        a < b,
        "each host keeps its own readings: idle {a}, training {b}"
    );
    // The ledger keeps them apart too: each host its own GPU-hours, one busy, one idle.
    let report = report_totals(&c.http_addr.to_string()).await;
    let groups = report["groups"].as_array().unwrap();
    let of = |host: &str| {
        let g: Vec<&serde_json::Value> = groups
            .iter()
            .filter(|g| g["key"]["gpu"] == format!("{host}/{uuid}").as_str())
            .collect();
        assert_eq!(g.len(), 1, "one ledger row for {host}: {groups:?}");
        (
            g[0]["gpu_hours"].as_f64().unwrap(),
            g[0]["busy_gpu_hours"].as_f64().unwrap(),
        )
    };
    let ((hours_a, busy_a), (hours_b, busy_b)) = (of("twin-a"), of("twin-b"));
    assert!(hours_a > 0.0 && hours_b > 0.0, "{hours_a} {hours_b}");
    assert_eq!(busy_a, 0.0, "the idle twin's time is its own");
    assert!(busy_b > 0.0, "the busy twin's time is its own");
    c.shutdown().await;
}

#[path = "ingest/delivery.rs"]
mod delivery;

#[path = "support/chromium.rs"]
mod chromium;
