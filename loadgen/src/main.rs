//! `gpulse-loadgen`: many simulated agents streaming to one collector over real gRPC,
//! to measure what a collector sustains. Each agent is a stream that sends a Hello
//! and then one batch of simulated GPUs per interval, the way gpulse-agent does
//! (gzip-compressed unless `--compression none`); the figures are acknowledgements,
//! their latency (also while /metrics is scraped), refusals, the time every agent
//! took to get in, the bytes on the wire beside the text exposition's, and the
//! collector's CPU and memory.
//!
//! Without `--collector`, it starts a collector in this process (temporary data
//! directory); its CPU and memory are then this process's, load generator included.

#![forbid(unsafe_code)]

mod process;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Endpoint, Uri};

use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};

use crate::wire::{Counted, Sizes, Tally, Traffic};

/// Time allowed to open one connection, as gpulse-agent's default `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect waits: jittered in [wait/2, wait], doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// One agent in this many has every batch's size counted encoded and gzipped (the
/// counting gzips each batch again, which costs the load generator's CPU).
const SIZE_SAMPLE_EVERY: usize = 10;
/// How often the collector's resident memory is read for its peak during the run.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// Streams simulated agents to a gpulse collector and reports what it sustained.
#[derive(Debug, Parser)]
#[command(name = "gpulse-loadgen", version)]
struct Cli {
    /// Collector gRPC URL; unset: a collector in this process.
    #[arg(long)]
    collector: Option<String>,
    /// Its HTTP address, to scrape /metrics under load (with --collector).
    #[arg(long)]
    http: Option<String>,
    /// The collector's process id, for its CPU and memory (with --collector, on this
    /// machine). Unset: the process listening on --collector's port, found through
    /// /proc/net/tcp{,6} and /proc/*/fd; none found: not reported.
    #[arg(long)]
    collector_pid: Option<u32>,
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
    /// Time over which the agents' first connections are spread evenly: "0s" starts
    /// them all at once, as a fleet does when its collector comes back [default: one
    /// --interval, as a fleet started over time].
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_spread: Option<Duration>,
    /// Scrape /metrics this often during the run (the first one interval in), and give
    /// the ack latency of batches in flight during a scrape apart. Prometheus's
    /// usual scrape interval is the default; "0s", or an interval longer than the run,
    /// scrapes once, at 80% of the run.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    scrape_interval: Duration,
    /// Compress the streams as gpulse-agent does, or not.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Compression {
    Gzip,
    None,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Summary {
    agents: usize,
    gpus_per_agent: u32,
    interval_seconds: f64,
    duration_seconds: f64,
    connect_spread_seconds: f64,
    compression: Compression,
    batches_sent: u64,
    batches_acked: u64,
    batches_rejected: u64,
    streams_failed: u64,
    /// Connections retried (refused, reset or timed out while opening), with jittered
    /// backoff as agents retry them.
    connect_retries: u64,
    /// From the start until the last agent's Hello was accepted (its stream answered).
    all_connected_seconds: Option<f64>,
    /// From the start until the last agent's first batch was acknowledged.
    all_first_acked_seconds: Option<f64>,
    /// Acknowledged GPU samples per second over the run.
    gpu_samples_per_second: f64,
    /// Time from sending a batch to its acknowledgement.
    ack_latency_ms_p50: f64,
    ack_latency_ms_p99: f64,
    ack_latency_ms_max: f64,
    /// The same, for the batches whose acknowledgement was awaited while a /metrics
    /// scrape ran.
    acks_during_scrape: usize,
    ack_latency_ms_p99_during_scrape: Option<f64>,
    ack_latency_ms_max_during_scrape: Option<f64>,
    /// GET /metrics under the load: how many, the slowest, the last's time and size.
    scrapes: usize,
    scrape_ms_max: Option<f64>,
    scrape_ms: Option<f64>,
    scrape_bytes: Option<usize>,
    /// The text exposition's size per GPU (the last scrape's body over every GPU).
    exposition_bytes_per_gpu: Option<f64>,
    /// One batch message per GPU-sample, from every 10th agent's batches: protobuf, and
    /// as sent (gzipped as tonic does with --compression gzip), each with gRPC's 5-byte
    /// prefix.
    encoded_bytes_per_gpu_sample: f64,
    wire_bytes_per_gpu_sample: f64,
    /// Encoded over gzipped size.
    gzip_ratio: f64,
    /// The text exposition per GPU over the wire per GPU-sample (target: 50 or more).
    exposition_per_wire: Option<f64>,
    /// Every byte the load generator's connections sent (HTTP/2 frames and headers, the
    /// Hellos, pings) per GPU-sample sent, and every byte they received.
    transport_sent_bytes_per_gpu_sample: f64,
    transport_received_bytes: u64,
    /// Batches of 1, 5 and 10 snapshots of one simulated host, encoded and gzipped.
    gzip_by_batch_size: Vec<wire::BatchSize>,
    /// Whose CPU and memory the collector_* figures are: "external" (the process
    /// --collector-pid names or that listens on the gRPC port) or "this process"
    /// (collector and load generator together).
    collector_measured: Option<String>,
    collector_pid: Option<u32>,
    /// CPU seconds (user + system) the collector used during the run, over the run's
    /// length (cores), and per acknowledged GPU-sample.
    collector_cpu_seconds: Option<f64>,
    collector_cpu_cores: Option<f64>,
    collector_cpu_us_per_gpu_sample: Option<f64>,
    /// Resident memory: the highest read once a second during the run, and at the end.
    collector_rss_peak_mib: Option<f64>,
    collector_rss_final_mib: Option<f64>,
    /// The process's peak over its whole life (VmHWM), start-up included.
    collector_rss_lifetime_peak_mib: Option<f64>,
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

/// One acknowledgement: when its batch was sent and when the ack came.
#[derive(Debug, Clone, Copy)]
struct Acked {
    sent: Instant,
    acked: Instant,
}

/// What every simulated agent adds to while the run goes.
#[derive(Debug)]
struct Run {
    started: Instant,
    counts: Counts,
    acks: Mutex<Vec<Acked>>,
    /// Seconds from the start until each agent's stream was answered, and until its
    /// first acknowledgement.
    connected: Mutex<Vec<f64>>,
    first_acked: Mutex<Vec<f64>>,
    traffic: Arc<Traffic>,
    sizes: Tally,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

fn simulator(cli: &Cli, i: usize) -> anyhow::Result<Simulator> {
    let spec = format!(
        "gpus={},model={},scenario=training,seed={i}",
        cli.gpus, cli.model
    );
    Ok(Simulator::new(
        spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

type Opened = (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::CollectorMessage>,
);

/// Connects, counting the connection's bytes, and opens a stream with its Hello.
async fn open(
    cli: &Cli,
    url: &str,
    hello: v1::Hello,
    traffic: Arc<Traffic>,
) -> anyhow::Result<Opened> {
    let endpoint = Endpoint::from_shared(url.to_string())?;
    let connect = endpoint.connect_with_connector(tower::service_fn(move |uri: Uri| {
        let traffic = traffic.clone();
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(TokioIo::new(Counted::new(tcp, traffic)))
        }
    }));
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .context("no connection within 10 s")??;
    let mut client = IngestClient::new(channel);
    if cli.compression == Compression::Gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
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

/// A jittered wait in [wait/2, wait] that differs between agents and attempts
/// (splitmix64 of both), so agents refused together do not retry together.
fn jittered(wait: Duration, agent: usize, attempt: u32) -> Duration {
    let mut z = (agent as u64) << 32 ^ u64::from(attempt);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
    wait / 2 + (wait / 2).mul_f64(fraction)
}

/// Opens the agent's stream, retrying a failed connection with jittered backoff until
/// `until`, as gpulse-agent does.
async fn connect(
    cli: &Cli,
    url: &str,
    i: usize,
    hello: v1::Hello,
    until: Instant,
    run: &Run,
) -> anyhow::Result<Opened> {
    let mut wait = RETRY_FIRST;
    let mut attempt = 0;
    loop {
        match open(cli, url, hello.clone(), run.traffic.clone()).await {
            Ok(opened) => return Ok(opened),
            Err(_) if Instant::now() + wait < until => {
                run.counts.retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(jittered(wait, i, attempt)).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One simulated agent: a stream, a Hello, then a batch per interval until `until`.
async fn agent(
    cli: Arc<Cli>,
    url: String,
    i: usize,
    until: Instant,
    run: Arc<Run>,
) -> anyhow::Result<()> {
    let mut sim = simulator(&cli, i)?;
    let spread = cli.connect_spread.unwrap_or(cli.interval);
    tokio::time::sleep(spread.mul_f64(i as f64 / cli.agents.max(1) as f64)).await;
    let hello = gpulse_proto::hello(
        &identity(i),
        sim.inventory(),
        cli.interval.as_millis() as u64,
    );
    let (tx, mut inbound) = connect(&cli, &url, i, hello, until, &run).await?;
    lock(&run.connected).push(run.started.elapsed().as_secs_f64());
    let sent_at: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    // Acknowledgements are read beside the sending, as an agent does.
    let reader = {
        let (run, sent_at) = (run.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(m)) = inbound.message().await {
                match m.msg {
                    Some(collector_message::Msg::Ack(a)) => {
                        run.counts.acked.fetch_add(1, Ordering::Relaxed);
                        let acked = Instant::now();
                        if first {
                            first = false;
                            lock(&run.first_acked).push((acked - run.started).as_secs_f64());
                        }
                        if let Some(sent) = lock(&sent_at).remove(&a.seq) {
                            lock(&run.acks).push(Acked { sent, acked });
                        }
                    }
                    Some(collector_message::Msg::Reject(r)) => {
                        run.counts.rejected.fetch_add(1, Ordering::Relaxed);
                        lock(&sent_at).remove(&r.seq);
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
        let message = v1::AgentMessage {
            msg: Some(agent_message::Msg::Batch(v1::Batch {
                seq,
                snapshots: vec![v1::Snapshot::from(&snapshot)],
                agent: Some(v1::AgentStats::default()),
            })),
        };
        if i.is_multiple_of(SIZE_SAMPLE_EVERY) {
            let mut sizes = Sizes::of(&message);
            if cli.compression == Compression::None {
                sizes.gzipped = sizes.encoded;
            }
            run.sizes.add(sizes, u64::from(cli.gpus));
        }
        lock(&sent_at).insert(seq, Instant::now());
        tx.send(message)
            .await
            .context("the collector closed the stream")?;
        run.counts.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Give the last acknowledgements a moment, then hang up.
    let drain = Instant::now() + Duration::from_secs(5);
    while !lock(&sent_at).is_empty() && Instant::now() < drain {
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

/// One GET of `path` on `addr` (plain HTTP/1.0, so the body is not chunked): its time
/// and the body's size.
async fn timed_get(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<(f64, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach {addr} for /metrics"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    let status_ok = answer
        .split(|b| *b == b'\n')
        .next()
        .is_some_and(|line| line.starts_with(b"HTTP/1.") && line.windows(5).any(|w| w == b" 200 "));
    anyhow::ensure!(status_ok, "GET {path} on {addr} was not 200");
    Ok((ms, answer.len() - head_end))
}

/// One scrape of /metrics under the load: when it ran, how long, how big.
#[derive(Debug, Clone, Copy)]
struct Scrape {
    from: Instant,
    to: Instant,
    ms: f64,
    bytes: usize,
}

/// Scrapes every `scrape_interval` until `until`, or once at 80% of the run.
async fn scrape_during(cli: &Cli, addr: &str, until: Instant) -> anyhow::Result<Vec<Scrape>> {
    let started = Instant::now();
    let mut times: Vec<Instant> = if cli.scrape_interval.is_zero() {
        Vec::new()
    } else {
        (1..)
            .map(|k| started + cli.scrape_interval * k)
            .take_while(|t| *t < until)
            .collect()
    };
    if times.is_empty() {
        times.push(started + cli.duration.mul_f64(0.8));
    }
    let mut scrapes = Vec::new();
    for at in times {
        tokio::time::sleep_until(at.into()).await;
        let from = Instant::now();
        let (ms, bytes) = timed_get(addr, "/metrics", cli.token.as_deref()).await?;
        scrapes.push(Scrape {
            from,
            to: Instant::now(),
            ms,
            bytes,
        });
    }
    Ok(scrapes)
}

/// The collector process watched during the run.
#[derive(Debug)]
struct Watched {
    pid: u32,
    external: bool,
    cpu_at_start: Duration,
    peak_rss_mib: Arc<Mutex<f64>>,
    sampler: tokio::task::JoinHandle<()>,
}

/// Finds the collector's process and starts reading its memory once a second.
fn watch_collector(cli: &Cli, url: &str) -> Option<Watched> {
    let (pid, external) = match (&cli.collector, cli.collector_pid) {
        (None, _) => (std::process::id(), false),
        (Some(_), Some(pid)) => (pid, true),
        (Some(_), None) => {
            let port = url.parse::<Uri>().ok()?.port_u16()?;
            match process::listening_on(port) {
                Some(pid) => (pid, true),
                None => {
                    eprintln!(
                        "no process of this user listens on port {port}: the collector's CPU and memory are not reported (give --collector-pid)"
                    );
                    return None;
                }
            }
        }
    };
    let cpu_at_start = process::cpu_time(pid)?;
    let peak_rss_mib = Arc::new(Mutex::new(0.0f64));
    let peak = peak_rss_mib.clone();
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEMORY_EVERY);
        loop {
            tick.tick().await;
            let Some(m) = process::memory(pid) else {
                return;
            };
            let mut p = lock(&peak);
            *p = p.max(m.rss_mib);
        }
    });
    Some(Watched {
        pid,
        external,
        cpu_at_start,
        peak_rss_mib,
        sampler,
    })
}

/// The collector's figures at the end of the run.
#[derive(Debug, Default)]
struct CollectorUse {
    measured: Option<String>,
    pid: Option<u32>,
    cpu_seconds: Option<f64>,
    rss_peak_mib: Option<f64>,
    rss_final_mib: Option<f64>,
    rss_lifetime_peak_mib: Option<f64>,
}

fn collector_use(w: Option<Watched>) -> CollectorUse {
    let Some(w) = w else {
        return CollectorUse::default();
    };
    w.sampler.abort();
    let memory = process::memory(w.pid);
    let final_rss = memory.map(|m| m.rss_mib);
    let peak = lock(&w.peak_rss_mib).max(final_rss.unwrap_or(0.0));
    CollectorUse {
        measured: Some(if w.external {
            "external".into()
        } else {
            "this process".into()
        }),
        pid: Some(w.pid),
        cpu_seconds: process::cpu_time(w.pid).map(|t| (t - w.cpu_at_start).as_secs_f64()),
        rss_peak_mib: Some(peak),
        rss_final_mib: final_rss,
        rss_lifetime_peak_mib: memory.map(|m| m.hwm_mib),
    }
}

/// Ten consecutive snapshots of the first simulated host, one interval apart.
fn consecutive_snapshots(cli: &Cli) -> anyhow::Result<Vec<v1::Snapshot>> {
    let mut sim = simulator(cli, 0)?;
    let step = cli.interval.as_millis() as i64;
    let t0 = now_ms() - 10 * step;
    Ok((0..10)
        .map(|k| {
            let t = t0 + k * step;
            v1::Snapshot::from(&Snapshot {
                timestamp_unix_ms: t,
                gpus: sim.sample(t),
            })
        })
        .collect())
}

/// A collector in this process, on loopback ports and a temporary data directory.
async fn local_collector(
    cli: &Cli,
) -> anyhow::Result<(gpulse_collector::RunningCollector, tempfile::TempDir)> {
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
    Ok((c, dir))
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
            let (c, dir) = local_collector(&cli).await?;
            let urls = (
                format!("http://{}", c.grpc_addr),
                Some(c.http_addr.to_string()),
            );
            local = Some((c, dir));
            urls
        }
    };
    let gzip_by_batch_size = wire::by_batch_size(&consecutive_snapshots(&cli)?, cli.gpus);
    let watched = watch_collector(&cli, &url);
    let cli = Arc::new(cli);
    let run = Arc::new(Run {
        started: Instant::now(),
        counts: Counts::default(),
        acks: Mutex::default(),
        connected: Mutex::default(),
        first_acked: Mutex::default(),
        traffic: Arc::default(),
        sizes: Tally::default(),
    });
    let until = run.started + cli.duration;
    let mut tasks = Vec::new();
    for i in 0..cli.agents {
        let (cli, url, run) = (cli.clone(), url.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = agent(cli, url, i, until, run.clone()).await {
                run.counts.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("agent {i}: {e:#}");
            }
        }));
    }
    let scrapes = match &http {
        Some(addr) => scrape_during(&cli, addr, until).await?,
        None => Vec::new(),
    };
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = run.started.elapsed().as_secs_f64();
    let used = collector_use(watched);
    let summary = summarise(&cli, &run, elapsed, &scrapes, used, gzip_by_batch_size);
    if let Some((c, _dir)) = local {
        c.shutdown().await;
    }
    Ok(summary)
}

fn summarise(
    cli: &Cli,
    run: &Run,
    elapsed: f64,
    scrapes: &[Scrape],
    used: CollectorUse,
    gzip_by_batch_size: Vec<wire::BatchSize>,
) -> Summary {
    let acks = lock(&run.acks).clone();
    let ms = |a: &Acked| (a.acked - a.sent).as_secs_f64() * 1000.0;
    let mut lat: Vec<f64> = acks.iter().map(ms).collect();
    lat.sort_by(f64::total_cmp);
    let mut during: Vec<f64> = acks
        .iter()
        .filter(|a| scrapes.iter().any(|s| a.sent < s.to && a.acked > s.from))
        .map(ms)
        .collect();
    during.sort_by(f64::total_cmp);
    let acked = run.counts.acked.load(Ordering::Relaxed);
    let sent = run.counts.sent.load(Ordering::Relaxed);
    let gpus_total = cli.agents as f64 * f64::from(cli.gpus);
    let acked_samples = acked as f64 * f64::from(cli.gpus);
    let last_of = |v: &Mutex<Vec<f64>>| {
        let v = lock(v);
        (v.len() == cli.agents).then(|| v.iter().copied().fold(0.0, f64::max))
    };
    let sizes = &run.sizes;
    let sampled = sizes.gpu_samples.load(Ordering::Relaxed).max(1) as f64;
    let messages = sizes.messages.load(Ordering::Relaxed) as f64;
    let prefix = wire::GRPC_PREFIX_BYTES as f64 * messages;
    let encoded = (sizes.encoded.load(Ordering::Relaxed) as f64 + prefix) / sampled;
    let on_wire = (sizes.gzipped.load(Ordering::Relaxed) as f64 + prefix) / sampled;
    let last = scrapes.last();
    let exposition = last.map(|s| s.bytes as f64 / gpus_total);
    let cpu = used.cpu_seconds;
    Summary {
        agents: cli.agents,
        gpus_per_agent: cli.gpus,
        interval_seconds: cli.interval.as_secs_f64(),
        duration_seconds: elapsed,
        connect_spread_seconds: cli.connect_spread.unwrap_or(cli.interval).as_secs_f64(),
        compression: cli.compression,
        batches_sent: sent,
        batches_acked: acked,
        batches_rejected: run.counts.rejected.load(Ordering::Relaxed),
        streams_failed: run.counts.failed.load(Ordering::Relaxed),
        connect_retries: run.counts.retries.load(Ordering::Relaxed),
        all_connected_seconds: last_of(&run.connected),
        all_first_acked_seconds: last_of(&run.first_acked),
        gpu_samples_per_second: acked_samples / cli.duration.as_secs_f64(),
        ack_latency_ms_p50: percentile(&lat, 0.50),
        ack_latency_ms_p99: percentile(&lat, 0.99),
        ack_latency_ms_max: lat.last().copied().unwrap_or(0.0),
        acks_during_scrape: during.len(),
        ack_latency_ms_p99_during_scrape: (!during.is_empty()).then(|| percentile(&during, 0.99)),
        ack_latency_ms_max_during_scrape: during.last().copied(),
        scrapes: scrapes.len(),
        scrape_ms_max: scrapes.iter().map(|s| s.ms).reduce(f64::max),
        scrape_ms: last.map(|s| s.ms),
        scrape_bytes: last.map(|s| s.bytes),
        exposition_bytes_per_gpu: exposition,
        encoded_bytes_per_gpu_sample: encoded,
        wire_bytes_per_gpu_sample: on_wire,
        gzip_ratio: encoded / on_wire,
        exposition_per_wire: exposition.map(|e| e / on_wire),
        transport_sent_bytes_per_gpu_sample: run.traffic.sent.load(Ordering::Relaxed) as f64
            / (sent as f64 * f64::from(cli.gpus)).max(1.0),
        transport_received_bytes: run.traffic.received.load(Ordering::Relaxed),
        gzip_by_batch_size,
        collector_measured: used.measured,
        collector_pid: used.pid,
        collector_cpu_seconds: cpu,
        collector_cpu_cores: cpu.map(|c| c / elapsed),
        collector_cpu_us_per_gpu_sample: cpu
            .filter(|_| acked_samples > 0.0)
            .map(|c| c * 1e6 / acked_samples),
        collector_rss_peak_mib: used.rss_peak_mib,
        collector_rss_final_mib: used.rss_final_mib,
        collector_rss_lifetime_peak_mib: used.rss_lifetime_peak_mib,
        resident_mib: (cli.collector.is_none())
            .then(|| process::memory(std::process::id()).map(|m| m.rss_mib))
            .flatten(),
    }
}

fn print_text(s: &Summary) {
    println!(
        "{} agents x {} GPUs every {}s for {:.0}s ({:?}, first connections over {}s): sent {}, acked {}, refused {}, streams failed {} (connections retried {})",
        s.agents,
        s.gpus_per_agent,
        s.interval_seconds,
        s.duration_seconds,
        s.compression,
        s.connect_spread_seconds,
        s.batches_sent,
        s.batches_acked,
        s.batches_rejected,
        s.streams_failed,
        s.connect_retries
    );
    if let (Some(c), Some(a)) = (s.all_connected_seconds, s.all_first_acked_seconds) {
        println!("  every agent in after {c:.2} s, every first batch acknowledged after {a:.2} s");
    }
    println!(
        "  {:.0} GPU samples/s acknowledged; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        s.gpu_samples_per_second, s.ack_latency_ms_p50, s.ack_latency_ms_p99, s.ack_latency_ms_max
    );
    if let Some(p99) = s.ack_latency_ms_p99_during_scrape {
        println!(
            "  while /metrics was scraped: {} acks, p99 {p99:.2} ms",
            s.acks_during_scrape
        );
    }
    if let (Some(ms), Some(bytes)) = (s.scrape_ms, s.scrape_bytes) {
        println!(
            "  /metrics under load: {} scrapes, the last {ms:.0} ms and {bytes} bytes",
            s.scrapes
        );
    }
    println!(
        "  per GPU-sample: {:.0} B encoded, {:.0} B on the wire (gzip ratio {:.2}){}",
        s.encoded_bytes_per_gpu_sample,
        s.wire_bytes_per_gpu_sample,
        s.gzip_ratio,
        match (s.exposition_bytes_per_gpu, s.exposition_per_wire) {
            (Some(e), Some(r)) =>
                format!("; text exposition {e:.0} B per GPU, {r:.1} times the wire"),
            _ => String::new(),
        }
    );
    if let (Some(cores), Some(peak)) = (s.collector_cpu_cores, s.collector_rss_peak_mib) {
        println!(
            "  collector ({}): {cores:.2} cores, {:.1} µs per GPU-sample, resident peak {peak:.0} MiB, at the end {:.0} MiB",
            s.collector_measured.as_deref().unwrap_or(""),
            s.collector_cpu_us_per_gpu_sample.unwrap_or(0.0),
            s.collector_rss_final_mib.unwrap_or(0.0)
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let s = run(cli).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_text(&s);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_jittered_within_half_to_the_whole_wait() {
        let wait = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..100).map(|i| jittered(wait, i, 1)).collect();
        assert!(waits.iter().all(|w| *w >= wait / 2 && *w <= wait));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 90, "{}", distinct.len());
    }
}
