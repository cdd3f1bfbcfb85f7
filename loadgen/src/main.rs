//! `gpulse-loadgen`: many simulated agents streaming to one collector over real gRPC,
//! to measure what a collector sustains. Each agent is a stream that sends a Hello
//! and then one batch of simulated GPUs per interval, the way gpulse-agent does; the
//! figures are acknowledgements, their latency, refusals, and the time a /metrics
//! scrape takes under that load.
//!
//! Without `--collector`, it starts a collector in this process (temporary data
//! directory) and also reports the process's resident memory.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};

/// Streams simulated agents to a gpulse collector and reports what it sustained.
#[derive(Debug, Parser)]
#[command(name = "gpulse-loadgen", version)]
struct Cli {
    /// Collector gRPC URL; unset: a collector in this process.
    #[arg(long)]
    collector: Option<String>,
    /// Its HTTP address, to time a /metrics scrape (with --collector).
    #[arg(long)]
    http: Option<String>,
    /// Bearer token the collector wants, if any.
    #[arg(long, env = "GPULSE_LOADGEN_TOKEN")]
    token: Option<String>,
    /// Simulated agents (hosts).
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// GPUs per host (1 to 16).
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Simulated GPU model.
    #[arg(long, default_value = "h100-sxm")]
    model: String,
    /// Time between one agent's batches, as gpulse-agent's interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to stream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Summary {
    agents: usize,
    gpus_per_agent: u32,
    interval_seconds: f64,
    duration_seconds: f64,
    batches_sent: u64,
    batches_acked: u64,
    batches_rejected: u64,
    streams_failed: u64,
    /// Connections retried (refused or reset while opening), as agents retry them.
    connect_retries: u64,
    /// Acknowledged GPU samples per second over the run.
    gpu_samples_per_second: f64,
    /// Time from sending a batch to its acknowledgement.
    ack_latency_ms_p50: f64,
    ack_latency_ms_p99: f64,
    ack_latency_ms_max: f64,
    /// One GET /metrics at the end, under the load.
    scrape_ms: Option<f64>,
    scrape_bytes: Option<usize>,
    /// Resident memory of this process (collector inside) at the end.
    resident_mib: Option<f64>,
}

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn identity(i: usize) -> HostIdentity {
    let providers = ["aws", "gcp", "azure", "oci", "coreweave", "lambda"];
    HostIdentity {
        agent_id: format!("load-{i:05}"),
        boot_id: format!("boot-{i}"),
        hostname: format!("load-{i:05}.example"),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        provider: ProviderIdentity {
            provider: Learned::from_config(providers[i % providers.len()]),
            ..ProviderIdentity::default()
        },
        ..HostIdentity::default()
    }
}

type Opened = (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::CollectorMessage>,
);

/// Connects and opens a stream with its Hello.
async fn open(cli: &Cli, url: &str, hello: v1::Hello) -> anyhow::Result<Opened> {
    let mut client = IngestClient::connect(url.to_string()).await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = &cli.token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let inbound = client.stream(request).await?.into_inner();
    Ok((tx, inbound))
}

/// One simulated agent: a stream, a Hello, then a batch per interval until `until`.
async fn agent(
    cli: Arc<Cli>,
    url: String,
    i: usize,
    until: Instant,
    counts: Arc<Counts>,
    latencies: Arc<Mutex<Vec<f64>>>,
) -> anyhow::Result<()> {
    let spec = format!(
        "gpus={},model={},scenario=training,seed={i}",
        cli.gpus, cli.model
    );
    let mut sim = Simulator::new(spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?);
    // Agents come up spread over one interval, as a real fleet's do, and retry a
    // refused connection with backoff, as gpulse-agent does.
    let offset = cli.interval.mul_f64(i as f64 / cli.agents.max(1) as f64);
    tokio::time::sleep(offset).await;
    let hello = gpulse_proto::hello(
        &identity(i),
        sim.inventory(),
        cli.interval.as_millis() as u64,
    );
    let mut wait = Duration::from_millis(100);
    let (tx, mut inbound) = loop {
        match open(&cli, &url, hello.clone()).await {
            Ok(opened) => break opened,
            Err(_) if Instant::now() + wait < until => {
                counts.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    let sent_at: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    // Acknowledgements are read beside the sending, as an agent does.
    let reader = {
        let (counts, latencies, sent_at) = (counts.clone(), latencies.clone(), sent_at.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match m.msg {
                    Some(collector_message::Msg::Ack(a)) => {
                        counts.acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = sent_at.lock().await.remove(&a.seq) {
                            latencies
                                .lock()
                                .await
                                .push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Some(collector_message::Msg::Reject(r)) => {
                        counts.rejected.fetch_add(1, Ordering::Relaxed);
                        sent_at.lock().await.remove(&r.seq);
                    }
                    _ => {}
                }
            }
        })
    };
    let mut tick = tokio::time::interval(cli.interval);
    let mut seq = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        seq += 1;
        let t = now_ms();
        let snapshot = Snapshot {
            timestamp_unix_ms: t,
            gpus: sim.sample(t),
        };
        sent_at.lock().await.insert(seq, Instant::now());
        let batch = v1::Batch {
            seq,
            snapshots: vec![v1::Snapshot::from(&snapshot)],
            agent: Some(v1::AgentStats::default()),
        };
        tx.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::Batch(batch)),
        })
        .await
        .context("the collector closed the stream")?;
        counts.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Give the last acknowledgements a moment, then hang up.
    let drain = Instant::now() + Duration::from_secs(5);
    while !sent_at.lock().await.is_empty() && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    reader.abort();
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// One GET of `path` on `addr` (plain HTTP/1.1): its time and body size.
async fn timed_get(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<(f64, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach {addr} for /metrics"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    sock.read_to_end(&mut body).await?;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "GET {path} on {addr} was not 200"
    );
    Ok((started.elapsed().as_secs_f64() * 1000.0, body.len()))
}

async fn run(cli: Cli) -> anyhow::Result<Summary> {
    anyhow::ensure!(cli.agents > 0, "--agents must be at least 1");
    anyhow::ensure!(
        (1..=16).contains(&cli.gpus),
        "--gpus {} must be 1 to 16",
        cli.gpus
    );
    let mut local = None;
    let (url, http) = match &cli.collector {
        Some(url) => (url.clone(), cli.http.clone()),
        None => {
            let dir = tempfile::tempdir().context("cannot make a temporary data directory")?;
            let c = gpulse_collector::start(gpulse_collector::config::CollectorConfig {
                grpc_listen: "127.0.0.1:0".parse().expect("an address"),
                http_listen: "127.0.0.1:0".parse().expect("an address"),
                data_dir: dir.path().to_path_buf(),
                limits: gpulse_collector::config::Limits {
                    max_agents: cli.agents.max(10_000),
                    ..Default::default()
                },
                ..Default::default()
            })
            .await
            .context("cannot start the in-process collector")?;
            let urls = (
                format!("http://{}", c.grpc_addr),
                Some(c.http_addr.to_string()),
            );
            local = Some((c, dir));
            urls
        }
    };
    let cli = Arc::new(cli);
    let counts = Arc::new(Counts::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let until = started + cli.duration;
    let mut tasks = Vec::new();
    for i in 0..cli.agents {
        let (cli, url, counts, latencies) =
            (cli.clone(), url.clone(), counts.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = agent(cli, url, i, until, counts.clone(), latencies).await {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("agent {i}: {e:#}");
            }
        }));
    }
    // Scrape under load, once every agent has been heard from.
    tokio::time::sleep(cli.duration.mul_f64(0.8)).await;
    let scrape = match &http {
        Some(addr) => Some(timed_get(addr, "/metrics", cli.token.as_deref()).await?),
        None => None,
    };
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let acked = counts.acked.load(Ordering::Relaxed);
    let summary = Summary {
        agents: cli.agents,
        gpus_per_agent: cli.gpus,
        interval_seconds: cli.interval.as_secs_f64(),
        duration_seconds: elapsed,
        batches_sent: counts.sent.load(Ordering::Relaxed),
        batches_acked: acked,
        batches_rejected: counts.rejected.load(Ordering::Relaxed),
        streams_failed: counts.failed.load(Ordering::Relaxed),
        connect_retries: counts.retries.load(Ordering::Relaxed),
        gpu_samples_per_second: (acked * u64::from(cli.gpus)) as f64 / cli.duration.as_secs_f64(),
        ack_latency_ms_p50: percentile(&lat, 0.50),
        ack_latency_ms_p99: percentile(&lat, 0.99),
        ack_latency_ms_max: lat.last().copied().unwrap_or(0.0),
        scrape_ms: scrape.map(|s| s.0),
        scrape_bytes: scrape.map(|s| s.1),
        resident_mib: local.as_ref().and_then(|_| resident_mib()),
    };
    if let Some((c, _dir)) = local {
        c.shutdown().await;
    }
    Ok(summary)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let s = run(cli).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{} agents x {} GPUs every {}s for {:.0}s: sent {}, acked {}, refused {}, streams failed {} (connections retried {})",
            s.agents,
            s.gpus_per_agent,
            s.interval_seconds,
            s.duration_seconds,
            s.batches_sent,
            s.batches_acked,
            s.batches_rejected,
            s.streams_failed,
            s.connect_retries
        );
        println!(
            "  {:.0} GPU samples/s acknowledged; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.gpu_samples_per_second,
            s.ack_latency_ms_p50,
            s.ack_latency_ms_p99,
            s.ack_latency_ms_max
        );
        if let (Some(ms), Some(bytes)) = (s.scrape_ms, s.scrape_bytes) {
            println!("  /metrics under load: {ms:.0} ms, {bytes} bytes");
        }
        if let Some(mib) = s.resident_mib {
            println!("  resident memory (collector in this process): {mib:.0} MiB");
        }
    }
    let lost = s
        .batches_sent
        .saturating_sub(s.batches_acked + s.batches_rejected);
    anyhow::ensure!(
        s.streams_failed == 0 && s.batches_rejected == 0 && lost == 0,
        "the collector did not take everything: {lost} unacknowledged, {} refused, {} streams failed",
        s.batches_rejected,
        s.streams_failed
    );
    Ok(())
}
