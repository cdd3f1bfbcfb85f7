//! The stream to the collector: sends the Hello, then every unacknowledged batch in
//! order, reconnecting with jittered exponential backoff and replaying what the
//! collector has not acknowledged. Delivery is at-least-once; the collector dedups.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};

use gpulse_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::local::AgentMetrics;

/// Messages queued for the wire before the sender waits for HTTP/2 flow control.
const SEND_QUEUE: usize = 32;

/// What the sampler and the uplink share.
#[derive(Debug)]
pub struct Shared {
    pub buffer: Mutex<Buffer>,
    /// Wakes the uplink when a batch is added.
    pub wake: Notify,
    pub metrics: AgentMetrics,
    /// Whether this outage's first drop was logged; later drops are only counted.
    drop_logged: std::sync::atomic::AtomicBool,
    /// Whether the last spool write failed (logged once until it recovers).
    spool_failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(capacity: usize, metrics: AgentMetrics) -> Shared {
        Shared::with_buffer(Buffer::new(capacity), metrics)
    }

    /// Shares a buffer made elsewhere (e.g. one backed by a disk spool).
    pub fn with_buffer(buffer: Buffer, metrics: AgentMetrics) -> Shared {
        metrics.buffered_batches.set(buffer.len() as i64);
        metrics.spool_bytes.set(buffer.spool_bytes() as i64);
        Shared {
            buffer: Mutex::new(buffer),
            wake: Notify::new(),
            metrics,
            drop_logged: std::sync::atomic::AtomicBool::new(false),
            spool_failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch for delivery; when the buffer is full the oldest is dropped and
    /// counted. With a spool this writes to disk: call it off the async runtime.
    pub fn enqueue(&self, batch: v1::Batch) {
        let (pushed, len, spool_bytes) = {
            let mut b = self.buffer();
            let pushed = b.push(batch);
            (pushed, b.len(), b.spool_bytes())
        };
        if !pushed.dropped.is_empty() {
            self.metrics
                .batches_dropped
                .inc_by(pushed.dropped.len() as u64);
            if !self.drop_logged.swap(true, Ordering::Relaxed) {
                warn!(
                    oldest = pushed.dropped[0],
                    "unacknowledged batches dropped: the buffer is full (max_buffered_batches, spool_max_bytes); \
                     the collector is away too long. Further drops in this outage are only counted"
                );
            }
        }
        match pushed.spool_error {
            Some(e) => {
                self.metrics.spool_errors.inc();
                if !self.spool_failing.swap(true, Ordering::Relaxed) {
                    error!(error = %e, "cannot write the spool; batches are kept in memory only until it recovers");
                }
            }
            None => {
                if self.spool_failing.swap(false, Ordering::Relaxed) {
                    info!("the spool is written again");
                }
            }
        }
        self.metrics.buffered_batches.set(len as i64);
        self.metrics.spool_bytes.set(spool_bytes as i64);
        self.wake.notify_one();
    }

    fn has_after(&self, after: Option<u64>) -> bool {
        self.buffer().first_after(after).is_some()
    }

    /// The next batch to send. One the spool cannot read back is dropped and counted:
    /// resending cannot repair it.
    fn next_after(&self, after: Option<u64>) -> Option<v1::Batch> {
        let mut b = self.buffer();
        loop {
            match b.next_after(after) {
                Ok(next) => return next,
                Err(e) => {
                    self.metrics.spool_errors.inc();
                    self.metrics.batches_dropped.inc();
                    error!(error = %e, "a spooled batch cannot be read back; it is dropped");
                    match b.first_after(after) {
                        Some(seq) => {
                            b.remove(seq);
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    fn ack(&self, seq: u64) {
        let (removed, len, spool_bytes) = {
            let mut b = self.buffer();
            let removed = b.ack(seq);
            (removed, b.len(), b.spool_bytes())
        };
        match removed {
            Ok(n) => self.metrics.batches_acked.inc_by(n as u64),
            Err(e) => {
                self.metrics.spool_errors.inc();
                warn!(error = %e, seq, "cannot record an acknowledgement in the spool; those batches may be sent again after a restart (the collector ignores them)");
            }
        }
        self.drop_logged.store(false, Ordering::Relaxed);
        self.metrics.buffered_batches.set(len as i64);
        self.metrics.spool_bytes.set(spool_bytes as i64);
    }

    fn reject(&self, seq: u64) {
        let (removed, len) = {
            let mut b = self.buffer();
            (b.remove(seq), b.len())
        };
        if removed {
            self.metrics.batches_rejected.inc();
        }
        self.metrics.buffered_batches.set(len as i64);
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Collector URLs, the primary first: after a connection fails or is lost, the next
    /// is tried, round the list; the agent stays with whichever accepts it.
    pub collectors: Vec<String>,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub auth_token: Option<String>,
    /// TLS towards an `https://` collector.
    pub tls: Option<crate::tls::ClientTls>,
    pub jitter_seed: u64,
}

enum End {
    Stopped,
    /// The Hello changed (GPUs appeared): reconnect at once to announce them.
    HelloChanged,
    /// The stream ended; whether it got as far as an acknowledgement.
    Lost {
        acked: bool,
        error: String,
    },
}

/// Runs until `stop` turns true.
pub async fn run(
    shared: Arc<Shared>,
    config: UplinkConfig,
    mut hello: watch::Receiver<v1::Hello>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(
        config.backoff_initial,
        config.backoff_max,
        config.jitter_seed,
    );
    let mut failures = 0u32;
    let mut which = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let current = hello.borrow_and_update().clone();
        let collector = config.collectors[which % config.collectors.len()].as_str();
        match session(&shared, &config, collector, current, &mut hello, &mut stop).await {
            End::Stopped => return,
            End::HelloChanged => continue,
            End::Lost { acked, error } => {
                shared.metrics.connected.set(0);
                if acked {
                    backoff.reset();
                    failures = 0;
                }
                failures += 1;
                let delay = backoff.next_delay();
                // Fail over: the next attempt goes to the next collector in the list.
                which = (which + 1) % config.collectors.len();
                let next = config.collectors[which].as_str();
                if failures == 1 {
                    warn!(%collector, %error, retry_in = ?delay, next, "lost the collector; buffering and retrying");
                } else {
                    debug!(%collector, %error, retry_in = ?delay, next, "collector still unreachable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
                }
            }
        }
    }
}

async fn session(
    shared: &Shared,
    config: &UplinkConfig,
    collector: &str,
    hello: v1::Hello,
    hello_rx: &mut watch::Receiver<v1::Hello>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let lost = |acked, error: String| End::Lost { acked, error };
    let endpoint = match crate::tls::endpoint(collector, config.tls.as_ref()) {
        Ok(e) => e.connect_timeout(config.connect_timeout).tcp_nodelay(true),
        Err(e) => return lost(false, e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.connects.with_label_values(&["error"]).inc();
            return lost(false, format!("connect: {e}"));
        }
    };
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let agent_id = hello.agent_id.clone();
    let opening = v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    };
    if tx.send(opening).await.is_err() {
        return lost(false, "stream closed before the Hello".into());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.auth_token {
        match format!("Bearer {token}").parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => return lost(false, "the auth token is not a valid header value".into()),
        }
    }
    let mut inbound = match client.stream(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            shared.metrics.connects.with_label_values(&["error"]).inc();
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::AlreadyExists
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) {
                error!(agent = %agent_id, code = ?status.code(), "the collector refused this agent: {}", status.message());
            }
            return lost(false, format!("{:?}: {}", status.code(), status.message()));
        }
    };
    shared.metrics.connects.with_label_values(&["ok"]).inc();
    shared.metrics.connected.set(1);
    info!(%collector, "connected; replaying unacknowledged batches");

    let mut acked = false;
    let mut last_sent: Option<u64> = None;
    loop {
        // Cloned only when it is sent: most wake-ups are acknowledgements.
        let has_next = shared.has_after(last_sent);
        tokio::select! {
            biased;
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return End::Stopped,
            _ = hello_rx.changed() => return End::HelloChanged,
            reply = inbound.message() => match reply {
                Ok(Some(v1::CollectorMessage { msg: Some(m) })) => match m {
                    collector_message::Msg::Ack(a) => {
                        acked = true;
                        shared.ack(a.seq);
                    }
                    collector_message::Msg::Reject(r) => {
                        acked = true;
                        error!(seq = r.seq, reason = %r.reason, "the collector refused a batch; it is dropped: {}", r.message);
                        shared.reject(r.seq);
                    }
                    collector_message::Msg::Settings(s) => {
                        debug!(interval_ms = s.interval_ms, "settings from the collector (not applied by this version)");
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) => return lost(acked, "the collector closed the stream".into()),
                Err(status) => return lost(acked, format!("{:?}: {}", status.code(), status.message())),
            },
            permit = tx.reserve(), if has_next => match (permit, shared.next_after(last_sent)) {
                (Ok(permit), Some(batch)) => {
                    last_sent = Some(batch.seq);
                    permit.send(v1::AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) });
                    shared.metrics.batches_sent.inc();
                }
                // Only this task removes batches past `last_sent`; drop the permit and look again.
                (Ok(_), None) => {}
                (Err(_), _) => return lost(acked, "the send queue closed".into()),
            },
            _ = shared.wake.notified(), if !has_next => {}
        }
    }
}
