//! Prometheus remote write 1.0: the collector pushes the series it serves on /metrics
//! to one or more receivers (Mimir, Thanos Receive, Cortex, VictoriaMetrics,
//! Prometheus), so scraping it becomes optional. docs/remote-write.md is the guide.
//!
//! Every `interval`, one snapshot of every series is taken through the same series
//! writer /metrics uses and added to each endpoint's bounded queue; a sender per
//! endpoint posts it in batches, one request at a time, oldest first, retrying 5xx,
//! 429 and silence with backoff and giving up on other 4xx. What is given up is
//! counted in the endpoint's self-metrics.

pub mod client;
pub mod config;
pub mod queue;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use gpulse_exposition::names::{self, Def};

pub use client::{Client, ClientError, Outcome};
pub use config::RemoteWriteConfig;
use queue::Queue;
use wire::{Snapshot, SnapshotBuilder};

use crate::http::Scrape;

/// Why remote write could not start, naming the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("remote_write[{index}] ({label}): {source}")]
    Client {
        index: usize,
        label: String,
        source: ClientError,
    },
    #[error("cannot register remote-write metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why samples were given up: the values of the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full; the oldest samples made room for new ones.
    QueueFull,
    /// The receiver refused them with a 4xx other than 429.
    Rejected,
    /// They were queued or in flight when the collector stopped.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The self-metrics of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub retried: IntCounter,
    dropped: [IntCounter; 3],
    pub queue: IntGauge,
    pub capacity: IntGauge,
    pub last_success: Gauge,
}

impl EndpointMetrics {
    pub fn dropped(&self, reason: DropReason) -> &IntCounter {
        &self.dropped[reason as usize]
    }
}

fn opts(def: &Def) -> Opts {
    Opts::new(def.name, def.help)
}

/// Registers the remote-write families; only done when an endpoint is configured,
/// so a collector without remote write exposes none of them.
fn register(registry: &Registry, labels: &[String]) -> prometheus::Result<Vec<EndpointMetrics>> {
    let counter = |def: &Def, extra: &[&str]| -> prometheus::Result<IntCounterVec> {
        let mut l = vec!["endpoint"];
        l.extend_from_slice(extra);
        let v = IntCounterVec::new(opts(def), &l)?;
        registry.register(Box::new(v.clone()))?;
        Ok(v)
    };
    let gauge = |def: &Def| -> prometheus::Result<IntGaugeVec> {
        let v = IntGaugeVec::new(opts(def), &["endpoint"])?;
        registry.register(Box::new(v.clone()))?;
        Ok(v)
    };
    let sent = counter(&names::REMOTE_WRITE_SAMPLES_SENT, &[])?;
    let failed = counter(&names::REMOTE_WRITE_SAMPLES_FAILED, &[])?;
    let retried = counter(&names::REMOTE_WRITE_SAMPLES_RETRIED, &[])?;
    let dropped = counter(&names::REMOTE_WRITE_SAMPLES_DROPPED, &["reason"])?;
    let queue = gauge(&names::REMOTE_WRITE_QUEUE_SAMPLES)?;
    let capacity = gauge(&names::REMOTE_WRITE_QUEUE_CAPACITY)?;
    let last_success = GaugeVec::new(opts(&names::REMOTE_WRITE_LAST_SUCCESS), &["endpoint"])?;
    registry.register(Box::new(last_success.clone()))?;
    // Every child exists from the start at 0, so rate() and alerts see the first event.
    Ok(labels
        .iter()
        .map(|l| EndpointMetrics {
            sent: sent.with_label_values(&[l]),
            failed: failed.with_label_values(&[l]),
            retried: retried.with_label_values(&[l]),
            dropped: DropReason::ALL.map(|r| dropped.with_label_values(&[l.as_str(), r.as_str()])),
            queue: queue.with_label_values(&[l]),
            capacity: capacity.with_label_values(&[l]),
            last_success: last_success.with_label_values(&[l]),
        })
        .collect())
}

/// One receiver: its queue, its client, its counters.
#[derive(Debug)]
pub struct Endpoint {
    /// The `endpoint` label: configured name or position, never the URL.
    pub label: String,
    queue: Mutex<Queue>,
    more: Notify,
    max_samples_per_send: usize,
    max_concurrent_requests: usize,
    client: Client,
    pub metrics: EndpointMetrics,
}

impl Endpoint {
    /// Adds a snapshot, dropping (and counting) the oldest samples beyond capacity.
    pub fn push(&self, snapshot: Arc<Snapshot>) {
        let (dropped, len) = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            (q.push(snapshot), q.len())
        };
        self.metrics.queue.set(len as i64);
        if dropped > 0 {
            self.metrics
                .dropped(DropReason::QueueFull)
                .inc_by(dropped as u64);
            warn!(endpoint = %self.label, dropped, "remote-write queue full: dropped the oldest samples");
        }
        self.more.notify_one();
    }

    /// Up to `max_concurrent_requests` batches, all from the oldest snapshot: they
    /// share one timestamp and no series, so they can be in flight together without
    /// putting any series out of time order.
    fn take(&self) -> Vec<Vec<wire::Pending>> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut batches = Vec::new();
        while batches.len() < self.max_concurrent_requests {
            let batch = q.take_one_snapshot(self.max_samples_per_send);
            let Some(at) = batch.first().map(|p| p.timestamp_ms) else {
                break;
            };
            batches.push(batch);
            if !q.front_is_at(at) {
                break;
            }
        }
        self.metrics.queue.set(q.len() as i64);
        batches
    }

    fn clear(&self) -> usize {
        let n = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.metrics.queue.set(0);
        n
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The endpoints, in configuration order, and the tasks that feed and send them.
pub type Started = (Vec<Arc<Endpoint>>, Vec<JoinHandle<()>>);

/// Builds every endpoint's client and starts its sender, and one snapshot task per
/// distinct interval. The tasks end when `stop` turns true.
pub fn start(
    configs: &[RemoteWriteConfig],
    external_labels: Vec<(String, String)>,
    scrape: Scrape,
    registry: &Registry,
    stop: watch::Receiver<bool>,
) -> Result<Started, RemoteWriteError> {
    let labels: Vec<String> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| c.label(i))
        .collect();
    let mut endpoints = Vec::new();
    for (index, c) in configs.iter().enumerate() {
        let client = Client::new(c).map_err(|source| RemoteWriteError::Client {
            index,
            label: labels[index].clone(),
            source,
        })?;
        endpoints.push(client);
    }
    let metrics = register(registry, &labels)?;
    let endpoints: Vec<Arc<Endpoint>> = endpoints
        .into_iter()
        .zip(metrics)
        .zip(configs.iter().zip(labels))
        .map(|((client, metrics), (c, label))| {
            metrics.capacity.set(c.queue_capacity as i64);
            Arc::new(Endpoint {
                label,
                queue: Mutex::new(Queue::new(c.queue_capacity)),
                more: Notify::new(),
                max_samples_per_send: c.max_samples_per_send,
                max_concurrent_requests: c.max_concurrent_requests,
                client,
                metrics,
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for e in &endpoints {
        tasks.push(tokio::spawn(send_loop(e.clone(), stop.clone())));
    }
    let mut by_interval: BTreeMap<Duration, Vec<Arc<Endpoint>>> = BTreeMap::new();
    for (c, e) in configs.iter().zip(&endpoints) {
        by_interval.entry(c.interval).or_default().push(e.clone());
    }
    for (interval, group) in by_interval {
        tasks.push(tokio::spawn(snapshot_loop(
            interval,
            group,
            SnapshotBuilder::with_external_labels(external_labels.clone()),
            scrape.clone(),
            stop.clone(),
        )));
    }
    info!(endpoints = ?endpoints.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(), "remote write started");
    Ok((endpoints, tasks))
}

/// Takes a snapshot of every series each `interval` and queues it at each endpoint.
async fn snapshot_loop(
    interval: Duration,
    endpoints: Vec<Arc<Endpoint>>,
    builder: SnapshotBuilder,
    scrape: Scrape,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut builder = Some(builder);
    let mut last_ms = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let Some(mut b) = builder.take() else { break };
        let scrape = scrape.clone();
        // Walking a large fleet takes milliseconds of CPU: off the async workers.
        let taken = tokio::task::spawn_blocking(move || {
            // Every sample of a push shares one timestamp, later than the last push's,
            // so each series' samples stay in time order even if the clock steps back.
            let at = now_ms().max(last_ms + 1);
            scrape.write_samples(&mut b);
            let snapshot = b.finish(at);
            (b, snapshot)
        })
        .await;
        let Ok((b, snapshot)) = taken else { break };
        builder = Some(b);
        last_ms = snapshot.timestamp_ms;
        debug!(
            samples = snapshot.samples.len(),
            "remote-write snapshot taken"
        );
        let snapshot = Arc::new(snapshot);
        for e in &endpoints {
            e.push(snapshot.clone());
        }
    }
}

/// Posts an endpoint's queue, oldest snapshot first: the requests of one snapshot
/// in flight together (up to `max_concurrent_requests`), the next snapshot only once
/// they are all delivered or given up.
async fn send_loop(e: Arc<Endpoint>, mut stop: watch::Receiver<bool>) {
    loop {
        let batches = e.take();
        if batches.is_empty() {
            tokio::select! {
                _ = e.more.notified() => continue,
                _ = stopped(&mut stop) => break,
            }
        }
        let outcomes =
            futures::future::join_all(batches.into_iter().map(|b| deliver(&e, b, stop.clone())))
                .await;
        if outcomes.contains(&Delivery::Stopped) {
            break;
        }
    }
    let left = e.clear();
    if left > 0 {
        e.metrics.dropped(DropReason::Shutdown).inc_by(left as u64);
        warn!(endpoint = %e.label, samples = left, "remote-write samples still queued at shutdown are dropped");
    }
}

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Accepted, or refused for good (counted either way).
    Done,
    /// The collector is stopping; the batch was counted as dropped.
    Stopped,
}

/// Sends one batch, retrying 5xx, 429 and no answer with backoff until it is accepted,
/// refused for good, or the collector stops.
async fn deliver(
    e: &Endpoint,
    batch: Vec<wire::Pending>,
    mut stop: watch::Receiver<bool>,
) -> Delivery {
    let n = batch.len() as u64;
    let body = Bytes::from(wire::encode(&batch));
    drop(batch);
    let mut attempt: u32 = 0;
    loop {
        match e.client.send(body.clone()).await {
            Outcome::Sent => {
                e.metrics.sent.inc_by(n);
                e.metrics.last_success.set(now_ms() as f64 / 1000.0);
                if attempt > 0 {
                    info!(endpoint = %e.label, attempts = attempt + 1, "remote write delivered after retrying");
                }
                return Delivery::Done;
            }
            Outcome::Rejected { status, why } => {
                e.metrics.failed.inc_by(n);
                e.metrics.dropped(DropReason::Rejected).inc_by(n);
                warn!(endpoint = %e.label, status, samples = n, answer = %why,
                    "remote-write receiver refused samples; they are dropped, not resent");
                return Delivery::Done;
            }
            Outcome::Retry { after, why } => {
                e.metrics.failed.inc_by(n);
                // One line when trouble starts, then one per 20 attempts: the
                // counters carry the rest.
                if attempt.is_multiple_of(20) {
                    warn!(endpoint = %e.label, attempt, samples = n, error = %why,
                        "remote write failed; retrying with backoff");
                }
                let wait = after.unwrap_or_else(|| client::backoff(attempt, rand::random::<f64>()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => {
                        e.metrics.dropped(DropReason::Shutdown).inc_by(n);
                        return Delivery::Stopped;
                    }
                }
                e.metrics.retried.inc_by(n);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}
