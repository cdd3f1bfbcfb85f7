//! The gRPC ingest service: one bidirectional stream per agent. Every message is
//! validated; good batches are applied and acknowledged, bad ones are refused with a
//! reason the agent can log, and nothing stored is changed by a refused message.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use gpulse_gpu::Snapshot;
use gpulse_proto::v1::{self, agent_message, collector_message};

use crate::auth::AgentCredential;
use crate::cost::Cost;
use crate::cost::store::{BatchId, Durable, LedgerHost};
use crate::delivery::Verdict;
use crate::fleet::{Applied, ApplyError, Fleet, Session};
use crate::metrics::SelfMetrics;
use crate::validate::{RejectKind, Rejection, Walked};

/// Responses queued per stream before the handler waits for the agent to read them.
const OUTBOUND_QUEUE: usize = 64;

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `gpulse.v1.Ingest` service.
#[derive(Debug, Clone)]
pub struct IngestService {
    fleet: Arc<Fleet>,
    metrics: SelfMetrics,
    hello_timeout: Duration,
    stop: watch::Receiver<bool>,
    cost: Option<Cost>,
}

/// What to answer a message with: now, or once the ledger has committed its batch and
/// said whether it was new; only then is a new batch applied to the fleet and counted.
enum Reply {
    Now(Result<v1::CollectorMessage, Status>),
    WhenDurable {
        seq: u64,
        durable: Durable,
        snapshots: Vec<Snapshot>,
        agent_stats: Option<gpulse_exposition::AgentStats>,
    },
}

/// An agent's delivery counters, from the wire to the fleet's view.
pub(crate) fn agent_stats(a: v1::AgentStats) -> gpulse_exposition::AgentStats {
    gpulse_exposition::AgentStats {
        batches_dropped: a.batches_dropped,
        batches_rejected: a.batches_rejected,
        spool_errors: a.spool_errors,
        buffered_batches: a.buffered_batches,
        spool_bytes: a.spool_bytes,
    }
}

fn ack(seq: u64) -> v1::CollectorMessage {
    v1::CollectorMessage {
        msg: Some(collector_message::Msg::Ack(v1::Ack { seq })),
    }
}

impl IngestService {
    /// `stop` turning true ends every open stream, so a graceful shutdown does not wait
    /// on streams that would otherwise never finish.
    pub fn new(
        fleet: Arc<Fleet>,
        metrics: SelfMetrics,
        hello_timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        IngestService {
            fleet,
            metrics,
            hello_timeout,
            stop,
            cost: None,
        }
    }

    /// Keeps the cost ledger too: a batch is acknowledged only once its ledger rows are
    /// committed.
    pub fn with_ledger(mut self, cost: Cost) -> Self {
        self.cost = Some(cost);
        self
    }

    fn refuse(&self, r: &Rejection) -> Status {
        self.metrics.reject(r.kind);
        let code = match r.kind {
            RejectKind::AgentIdConflict => tonic::Code::AlreadyExists,
            RejectKind::TooManyAgents | RejectKind::Oversized => tonic::Code::ResourceExhausted,
            RejectKind::NoHello | RejectKind::DuplicateHello => tonic::Code::FailedPrecondition,
            RejectKind::HelloTimeout => tonic::Code::DeadlineExceeded,
            RejectKind::Unauthenticated => tonic::Code::Unauthenticated,
            RejectKind::CredentialMismatch => tonic::Code::PermissionDenied,
            _ => tonic::Code::InvalidArgument,
        };
        Status::new(code, format!("{} ({})", r.message, r.kind.as_str()))
    }

    /// Counts a transport-level failure of the inbound stream (decode error, oversized)
    /// and returns the status to send back; `None` when the agent simply went away.
    fn count_stream_error(&self, status: &Status) -> Option<Status> {
        let kind = match status.code() {
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => RejectKind::Oversized,
            tonic::Code::Internal | tonic::Code::InvalidArgument | tonic::Code::DataLoss => {
                RejectKind::Malformed
            }
            // Cancelled, Unknown (connection reset) and the like: the agent went away.
            _ => return None,
        };
        Some(self.refuse(&Rejection::new(
            kind,
            format!(
                "{} (limit: limits.max_message_bytes; send smaller batches)",
                status.message()
            ),
        )))
    }

    async fn accept_hello(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
        credential: Option<&AgentCredential>,
    ) -> Result<(Session, Option<Arc<LedgerHost>>), Status> {
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                self.refuse(&Rejection::new(
                    RejectKind::HelloTimeout,
                    format!(
                        "no Hello within {:?} of opening the stream",
                        self.hello_timeout
                    ),
                ))
            })?
            .map_err(|s| self.count_stream_error(&s).unwrap_or(s))?;
        let Some(message) = first else {
            return Err(Status::cancelled("stream closed before its Hello"));
        };
        self.metrics
            .received_bytes
            .inc_by(message.encoded_len() as u64);
        let Some(agent_message::Msg::Hello(hello)) = message.msg else {
            return Err(self.refuse(&Rejection::new(
                RejectKind::NoHello,
                "a stream must open with a Hello before any Batch",
            )));
        };
        let interval_ms = hello.interval_ms;
        let (identity, inventory) = gpulse_proto::identity_from_hello(hello);
        let agent_id = identity.agent_id.clone();
        if let Some(Err(message)) = credential.map(|c| c.admits(&agent_id)) {
            warn!(agent = %agent_id, "refused an agent's Hello: {message}");
            return Err(self.refuse(&Rejection::new(RejectKind::CredentialMismatch, message)));
        }
        let gpus = inventory.len();
        let ledger = self
            .cost
            .as_ref()
            .map(|c| Arc::new(c.ledger_host(&identity, &inventory, interval_ms)));
        let session = self
            .fleet
            .connect(identity, inventory, now_unix_ms())
            .map_err(|r| {
                warn!(agent = %agent_id, reason = r.kind.as_str(), "refused an agent's Hello: {}", r.message);
                self.refuse(&r)
            })?;
        if let Some(l) = &ledger {
            let unpriced = l.gpus.values().filter(|g| g.terms.price.is_none()).count();
            if unpriced > 0 {
                info!(agent = %agent_id, unpriced, "GPUs with no price: their time is reported as unpriced; add a catalogue entry (pricing_file) or bare_metal settings");
            }
        }
        info!(agent = %agent_id, gpus, "agent connected");
        self.update_agent_gauges();
        Ok((session, ledger))
    }

    /// Counts a batch applied (committed, when there is a ledger) and keeps what the
    /// agent says of its own delivery.
    fn count_new(
        &self,
        session: &Session,
        gpu_samples: usize,
        agent_stats: Option<gpulse_exposition::AgentStats>,
    ) {
        if let Some(stats) = agent_stats {
            self.fleet.set_agent_stats(session, stats);
        }
        self.metrics.batches_received.inc();
        self.metrics.gpu_samples_received.inc_by(gpu_samples as u64);
    }

    /// The reply to a committed batch: a new one is applied to the fleet and counted
    /// now, in the order the agent sent it.
    fn committed(
        &self,
        session: &Session,
        seq: u64,
        verdict: Verdict,
        snapshots: Vec<Snapshot>,
        agent_stats: Option<gpulse_exposition::AgentStats>,
    ) -> v1::CollectorMessage {
        match verdict {
            Verdict::New => {
                let gpu_samples = snapshots.iter().map(|s| s.gpus.len()).sum();
                // The ledger holds it either way; a stream replaced meanwhile only misses
                // one reading in the live view.
                if let Err(e) = self.fleet.apply_new(session, seq, snapshots) {
                    debug!(agent = %session.agent_id, seq, "committed batch not shown: {e}");
                }
                self.count_new(session, gpu_samples, agent_stats);
            }
            Verdict::Duplicate => self.metrics.duplicate_batches.inc(),
        }
        ack(seq)
    }

    fn update_agent_gauges(&self) {
        let (connected, known) = self.fleet.agent_counts();
        self.metrics.agents_connected.set(connected as i64);
        self.metrics.agents_known.set(known as i64);
    }

    /// Handles one message after the Hello. `Reply::Now(Err)` ends the stream with that status.
    async fn handle(
        &self,
        session: &Session,
        ledger: Option<&Arc<LedgerHost>>,
        message: v1::AgentMessage,
    ) -> Reply {
        self.metrics
            .received_bytes
            .inc_by(message.encoded_len() as u64);
        let batch = match message.msg {
            Some(agent_message::Msg::Batch(b)) => b,
            Some(agent_message::Msg::Hello(_)) => {
                return Reply::Now(Err(self.refuse(&Rejection::new(
                    RejectKind::DuplicateHello,
                    "a second Hello on the same stream; open a new stream to re-identify",
                ))));
            }
            None => {
                return Reply::Now(Err(self.refuse(&Rejection::new(
                    RejectKind::Malformed,
                    "an AgentMessage with neither Hello nor Batch",
                ))));
            }
        };
        let seq = batch.seq;
        let agent_stats = batch.agent.map(agent_stats);
        let reject = |r: Rejection| {
            self.metrics.reject(r.kind);
            debug!(agent = %session.agent_id, seq, reason = r.kind.as_str(), "refused a batch: {}", r.message);
            Reply::Now(Ok(v1::CollectorMessage {
                msg: Some(collector_message::Msg::Reject(v1::Reject {
                    seq,
                    reason: r.kind.as_str().to_string(),
                    message: r.message,
                })),
            }))
        };
        let snapshots = match Walked::from_wire(batch.snapshots, self.fleet.limits()) {
            Ok(s) => s,
            Err(r) => return reject(r),
        };
        let now = now_unix_ms();
        let (Some(host), Some(cost)) = (ledger, &self.cost) else {
            // No ledger: the fleet's own marks decide, by the same rule.
            return match self.fleet.apply(session, seq, snapshots, now) {
                Ok(Applied::New { gpu_samples }) => {
                    self.count_new(session, gpu_samples, agent_stats);
                    Reply::Now(Ok(ack(seq)))
                }
                Ok(Applied::Duplicate) => {
                    self.metrics.duplicate_batches.inc();
                    Reply::Now(Ok(ack(seq)))
                }
                Err(ApplyError::Rejected(r)) => reject(r),
                Err(e @ ApplyError::Superseded(_)) => {
                    Reply::Now(Err(Status::aborted(e.to_string())))
                }
            };
        };
        // Checked whole first, new or not: the ledger then decides, in the transaction
        // that commits it, whether it is new.
        match self.fleet.check(session, seq, &snapshots, now) {
            Ok(()) => {}
            Err(ApplyError::Rejected(r)) => return reject(r),
            Err(e @ ApplyError::Superseded(_)) => {
                return Reply::Now(Err(Status::aborted(e.to_string())));
            }
        }
        let batch = BatchId {
            boot_id: session.boot_id.clone(),
            seq,
        };
        let snapshots = snapshots.into_snapshots();
        match cost
            .store
            .apply_batch(host.clone(), batch, snapshots.clone())
            .await
        {
            Ok(durable) => Reply::WhenDurable {
                seq,
                durable,
                snapshots,
                agent_stats,
            },
            Err(e) => Reply::Now(Err(Status::unavailable(e.to_string()))),
        }
    }
}

/// Sends replies to the agent in the order their messages came, each once it is ready:
/// an acknowledgement waits for its batch's ledger commit, while later batches are
/// already being read and queued for the same commit.
async fn forward_replies(
    mut replies: mpsc::Receiver<Reply>,
    tx: mpsc::Sender<Result<v1::CollectorMessage, Status>>,
    service: IngestService,
    session: Session,
) {
    while let Some(reply) = replies.recv().await {
        let message = match reply {
            Reply::Now(m) => m,
            Reply::WhenDurable {
                seq,
                durable,
                snapshots,
                agent_stats,
            } => match durable.await {
                Ok(Ok(verdict)) => {
                    Ok(service.committed(&session, seq, verdict, snapshots, agent_stats))
                }
                Ok(Err(e)) => {
                    warn!(agent = %session.agent_id, seq, "batch not acknowledged: {e}");
                    Err(Status::unavailable(e.to_string()))
                }
                Err(_) => Err(Status::unavailable(
                    "the collector is shutting down; reconnect and replay unacknowledged batches",
                )),
            },
        };
        let end = message.is_err();
        if tx.send(message).await.is_err() || end {
            break;
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::ingest_server::Ingest for IngestService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let credential = request.extensions().get::<AgentCredential>().cloned();
        let mut inbound = request.into_inner();
        let (session, ledger) = self.accept_hello(&mut inbound, credential.as_ref()).await?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (replies, pending) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(forward_replies(pending, tx, self.clone(), session.clone()));
        let service = self.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => Some(next),
                    _ = async { stop.wait_for(|s| *s).await.is_ok() } => None,
                };
                let Some(next) = next else {
                    let _ = replies
                        .send(Reply::Now(Err(Status::unavailable(
                            "the collector is shutting down; reconnect and replay unacknowledged batches",
                        ))))
                        .await;
                    break;
                };
                match next {
                    Ok(Some(message)) => {
                        let reply = service.handle(&session, ledger.as_ref(), message).await;
                        let end = matches!(reply, Reply::Now(Err(_)));
                        if replies.send(reply).await.is_err() || end {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if let Some(reply) = service.count_stream_error(&status) {
                            let _ = replies.send(Reply::Now(Err(reply))).await;
                        }
                        debug!(agent = %session.agent_id, %status, "agent stream ended with an error");
                        break;
                    }
                }
            }
            let evicted = service.fleet.disconnect(&session, now_unix_ms());
            if !evicted.is_empty() {
                info!(agents = ?evicted, "forgot departed agents before their expiry: more than limits.max_agents were remembered");
                service.metrics.agents_evicted.inc_by(evicted.len() as u64);
            }
            service.update_agent_gauges();
            info!(agent = %session.agent_id, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
