//! The stream to the collector: sends the Hello, then every unacknowledged batch in
//! order, reconnecting with jittered exponential backoff and replaying what the
//! collector has not acknowledged. Delivery is at-least-once; the collector dedups.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

use gpulse_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::link::LinkError;
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

/// How the messages of the stream are compressed (the `compression` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip every message (gRPC's `grpc-encoding: gzip`). A collector that does not
    /// accept it (older than gzip support) gets the stream uncompressed instead.
    Gzip,
    /// Send every message uncompressed.
    None,
}

/// Default `compression`: gzip makes an 8-GPU host's batch 4.5 times smaller (780 to 173
/// bytes per GPU-sample) for 7.6 µs of CPU per GPU-sample (docs/benchmarks.md, "Wire,
/// connections and start-up").
pub const DEFAULT_COMPRESSION: Compression = Compression::Gzip;

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
    /// How the stream is compressed; see [`Compression`].
    pub compression: Compression,
}

enum End {
    Stopped,
    /// The Hello changed (GPUs appeared): reconnect at once to announce them.
    HelloChanged,
    /// The collector refused the stream because it cannot read gzip: reconnect at once,
    /// uncompressed.
    RefusedGzip,
    /// The attempt failed or the stream ended.
    Lost {
        /// The collector acknowledged the Hello: this was a connection, now lost.
        connected: bool,
        kind: LinkError,
        error: String,
    },
}

impl End {
    fn refused_gzip(&self) -> bool {
        matches!(self, End::RefusedGzip)
    }
}

/// The collector one session talks to, and whether the stream is compressed.
struct Link<'a> {
    collector: &'a str,
    compress: bool,
}

/// Whether `status` refuses the stream because the server cannot read gzip: gRPC answers
/// a `grpc-encoding` it does not accept with UNIMPLEMENTED and lists the encodings it
/// does accept in `grpc-accept-encoding` (tonic: "Content is compressed with `gzip`
/// which isn't supported", with `grpc-accept-encoding: identity`).
pub fn refuses_gzip(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unimplemented {
        return false;
    }
    match status
        .metadata()
        .get("grpc-accept-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some(accepted) => !accepted.split(',').any(|e| e.trim() == "gzip"),
        None => status.message().contains("compressed with"),
    }
}

type Opened = (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Response<tonic::Streaming<v1::CollectorMessage>>,
);

/// Opens the stream on `channel` with the Hello as its first message.
async fn open_stream(
    channel: Channel,
    hello: v1::Hello,
    auth: Option<&AsciiMetadataValue>,
    compress: bool,
) -> Result<Opened, tonic::Status> {
    let mut client = IngestClient::new(channel);
    if compress {
        // Only what the agent sends: the collector's answers are acknowledgements of a
        // dozen bytes, which gzip's header and trailer alone would double.
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let opening = v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    };
    tx.try_send(opening)
        .map_err(|_| tonic::Status::internal("the send queue refused the Hello"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(auth) = auth {
        request.metadata_mut().insert("authorization", auth.clone());
    }
    let response = client.stream(request).await?;
    Ok((tx, response))
}

/// While the reconnect wait is shorter than this, every failed attempt is logged; past
/// it, one line per [`LOG_EVERY`] (or when the reason changes).
const LOG_EACH_ATTEMPT_BELOW: Duration = Duration::from_secs(5);
/// The steady cadence of "still cannot reach the collector" lines.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Attempts since the last connection, and when the last line about them was logged.
#[derive(Debug)]
struct Outage {
    attempts: u64,
    last_success: Option<tokio::time::Instant>,
    last_logged: Option<(tokio::time::Instant, LinkError)>,
}

impl Outage {
    /// Whether this failed attempt gets a log line.
    fn should_log(&mut self, kind: LinkError, delay: Duration, now: tokio::time::Instant) -> bool {
        let due = match self.last_logged {
            None => true,
            Some((at, last)) => {
                last != kind || delay < LOG_EACH_ATTEMPT_BELOW || now - at >= LOG_EVERY
            }
        };
        if due {
            self.last_logged = Some((now, kind));
        }
        due
    }
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
    let mut outage = Outage {
        attempts: 0,
        last_success: None,
        last_logged: None,
    };
    let mut which = 0usize;
    // Collectors that refused a gzip-compressed stream: they get it uncompressed from
    // then on, for as long as this agent runs.
    let mut uncompressed = vec![false; config.collectors.len()];
    loop {
        if *stop.borrow() {
            return;
        }
        let current = hello.borrow_and_update().clone();
        which %= config.collectors.len();
        let collector = config.collectors[which].as_str();
        let link = Link {
            collector,
            compress: config.compression == Compression::Gzip && !uncompressed[which],
        };
        let end = session(&shared, &config, &link, current, &mut hello, &mut stop).await;
        if link.compress && end.refused_gzip() {
            uncompressed[which] = true;
            warn!(%collector, "the collector does not accept gzip-compressed streams (it is older than gzip support); streaming to it uncompressed from now on");
            continue;
        }
        match end {
            End::Stopped => return,
            End::HelloChanged | End::RefusedGzip => continue,
            End::Lost {
                connected,
                kind,
                error,
            } => {
                shared.metrics.set_link_error(Some(kind));
                let now = tokio::time::Instant::now();
                if connected {
                    backoff.reset();
                    outage.attempts = 0;
                    outage.last_success = Some(now);
                    outage.last_logged = None;
                }
                outage.attempts += 1;
                let delay = backoff.next_delay();
                // Fail over: the next attempt goes to the next collector in the list.
                which = (which + 1) % config.collectors.len();
                let next = config.collectors[which].as_str();
                let reason = kind.as_str();
                let advice = kind.advice();
                if connected {
                    warn!(%collector, reason, %error, retry_in = ?delay, next, "lost the collector: {advice}; buffering and retrying");
                } else if outage.should_log(kind, delay, now) {
                    let attempts = outage.attempts;
                    let since_success = match outage.last_success {
                        Some(at) => {
                            humantime::format_duration(Duration::from_secs((now - at).as_secs()))
                                .to_string()
                        }
                        None => "never since start".to_string(),
                    };
                    warn!(%collector, reason, %error, attempts, last_success = %since_success, retry_in = ?delay, next, "cannot reach the collector: {advice}; buffering and retrying");
                } else {
                    debug!(%collector, reason, %error, retry_in = ?delay, next, "collector still unreachable");
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
    link: &Link<'_>,
    hello: v1::Hello,
    hello_rx: &mut watch::Receiver<v1::Hello>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let collector = link.collector;
    let https = collector.starts_with("https://");
    let lost = |connected, kind, error: String| End::Lost {
        connected,
        kind,
        error,
    };
    let auth: Option<AsciiMetadataValue> = match &config.auth_token {
        Some(token) => match MetadataValue::try_from(format!("Bearer {token}")) {
            Ok(v) => Some(v),
            Err(_) => {
                return lost(
                    false,
                    LinkError::Unauthenticated,
                    "the auth token is not a valid header value".into(),
                );
            }
        },
        None => None,
    };
    let endpoint = match crate::tls::endpoint(collector, config.tls.as_ref()) {
        Ok(e) => e.connect_timeout(config.connect_timeout).tcp_nodelay(true),
        Err(e) => return lost(false, LinkError::Other, e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.connects.with_label_values(&["error"]).inc();
            return lost(
                false,
                LinkError::of_transport(&e, https),
                crate::link::chain(&e),
            );
        }
    };
    let agent_id = hello.agent_id.clone();
    let (tx, response) = match open_stream(channel, hello, auth.as_ref(), link.compress).await {
        Ok(opened) => opened,
        Err(status) if link.compress && refuses_gzip(&status) => return End::RefusedGzip,
        Err(status) => {
            shared.metrics.connects.with_label_values(&["error"]).inc();
            let kind = LinkError::of_status(&status, https, false);
            if kind == LinkError::Rejected {
                error!(agent = %agent_id, code = ?status.code(), "the collector refused this agent: {}", status.message());
            }
            return lost(false, kind, status_text(&status));
        }
    };
    // The collector answers the stream's headers only once it has accepted the Hello
    // (collector/src/ingest.rs awaits it before responding): gRPC headers are the
    // acknowledgement. Anything else (an HTTP server's 404) is not a collector.
    let grpc = response
        .metadata()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        shared.metrics.connects.with_label_values(&["error"]).inc();
        return lost(
            false,
            LinkError::NotGrpc,
            "the answer is not gRPC (no application/grpc content type)".into(),
        );
    }
    let mut inbound = response.into_inner();
    shared.metrics.connects.with_label_values(&["ok"]).inc();
    shared.metrics.set_link_error(None);
    info!(%collector, "connected; the collector accepted the Hello; replaying unacknowledged batches");

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
                        shared.ack(a.seq);
                    }
                    collector_message::Msg::Reject(r) => {
                        error!(seq = r.seq, reason = %r.reason, "the collector refused a batch; it is dropped: {}", r.message);
                        shared.reject(r.seq);
                    }
                    collector_message::Msg::Settings(s) => {
                        debug!(interval_ms = s.interval_ms, "settings from the collector (not applied by this version)");
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) => return lost(true, LinkError::StreamLost, "the collector closed the stream".into()),
                Err(status) => return lost(true, LinkError::of_status(&status, https, true), status_text(&status)),
            },
            permit = tx.reserve(), if has_next => match (permit, shared.next_after(last_sent)) {
                (Ok(permit), Some(batch)) => {
                    last_sent = Some(batch.seq);
                    permit.send(v1::AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) });
                    shared.metrics.batches_sent.inc();
                }
                // Only this task removes batches past `last_sent`; drop the permit and look again.
                (Ok(_), None) => {}
                (Err(_), _) => return lost(true, LinkError::StreamLost, "the send queue closed".into()),
            },
            _ = shared.wake.notified(), if !has_next => {}
        }
    }
}

/// A status with its code and the causes behind it.
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!(
            "{:?}: {}: {}",
            status.code(),
            status.message(),
            crate::link::chain(source)
        ),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_are_logged_each_while_the_wait_is_short_then_once_a_minute() {
        let mut outage = Outage {
            attempts: 0,
            last_success: None,
            last_logged: None,
        };
        let short = LOG_EACH_ATTEMPT_BELOW / 2;
        let long = LOG_EACH_ATTEMPT_BELOW * 2;
        let start = tokio::time::Instant::now();
        let refused = LinkError::Refused;
        assert!(outage.should_log(refused, short, start));
        assert!(outage.should_log(refused, short, start + short));
        // The wait has grown: quiet until a minute has passed since the last line...
        let t = start + short + long;
        assert!(!outage.should_log(refused, long, t));
        assert!(!outage.should_log(refused, long, start + short + LOG_EVERY / 2));
        assert!(outage.should_log(refused, long, start + short + LOG_EVERY));
        // ...unless the reason changes.
        let at = start + short + LOG_EVERY + long;
        assert!(outage.should_log(LinkError::Dns, long, at));
        assert!(!outage.should_log(LinkError::Dns, long, at + long));
    }
}
