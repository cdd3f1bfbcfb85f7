//! The fleet page's publisher: builds the fleet state at most once per [`TICK`] while
//! someone watches, and hands every viewer the same numbered deltas. A viewer that
//! connects (or reconnects) gets a full state, or the deltas it missed when they are
//! still kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use gpulse_exposition::HostSource;

use super::delta::Delta;
use super::state::{Builder, FleetState};
use crate::cost::pricing::Pricing;

/// How often the fleet is looked at while a page is open. Agents send a batch every
/// interval (5 s by default), so each batch reaches the page within a second.
pub const TICK: Duration = Duration::from_secs(1);
/// Deltas kept so that a page that reconnects within this many ticks catches up
/// without a full state.
pub const KEPT_DELTAS: usize = 60;
/// Deltas queued per viewer. A viewer that falls further behind (a stalled browser)
/// gets a full state instead, counted in `gpulse_collector_fleet_page_resyncs_total`.
pub const VIEWER_QUEUE: usize = 16;

/// One event of the stream, serialised once for every viewer.
#[derive(Debug)]
pub struct Update {
    pub seq: u64,
    /// `full` or `delta`: the SSE event name.
    pub kind: &'static str,
    pub json: Arc<str>,
}

/// The newest state and when it was built.
#[derive(Debug)]
struct Published {
    seq: u64,
    at_unix_ms: i64,
    built: Instant,
    state: Arc<FleetState>,
    /// Serialised on first demand: most ticks nobody connects.
    full: OnceLock<Arc<Update>>,
}

#[derive(Serialize)]
struct Stamped<'a, T> {
    seq: u64,
    at_unix_ms: i64,
    #[serde(flatten)]
    body: &'a T,
}

fn stamped<T: Serialize>(seq: u64, at_unix_ms: i64, body: &T) -> Arc<str> {
    serde_json::to_string(&Stamped {
        seq,
        at_unix_ms,
        body,
    })
    .unwrap_or_default()
    .into()
}

struct Inner {
    source: Arc<dyn HostSource>,
    pricing: Option<Arc<Pricing>>,
    /// Tells one collector process's event ids from another's, so that a page that
    /// reconnects to a restarted collector gets a full state.
    epoch: u64,
    builder: Mutex<Builder>,
    published: RwLock<(Arc<Published>, VecDeque<Arc<Update>>)>,
    tx: broadcast::Sender<Arc<Update>>,
    resyncs: prometheus::IntCounter,
    /// The collector's stop: ends the ticker and every page's stream, so that a
    /// graceful shutdown does not wait on streams that never end.
    stop: watch::Receiver<bool>,
}

/// Cheap to clone; every clone publishes to the same viewers.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.0.epoch)
            .field("viewers", &self.viewers())
            .finish()
    }
}

impl Hub {
    /// A hub over `source`, pricing GPUs with `pricing`, until `stop`; its counter is
    /// registered in `registry`.
    pub fn new(
        source: Arc<dyn HostSource>,
        pricing: Option<Arc<Pricing>>,
        registry: &prometheus::Registry,
        stop: watch::Receiver<bool>,
    ) -> Result<Hub, prometheus::Error> {
        let resyncs = prometheus::IntCounter::new(
            "gpulse_collector_fleet_page_resyncs_total",
            "Full states sent to fleet pages that fell more than the queue behind the live deltas.",
        )?;
        registry.register(Box::new(resyncs.clone()))?;
        let (tx, _) = broadcast::channel(VIEWER_QUEUE);
        let first = Arc::new(Published {
            seq: 0,
            at_unix_ms: 0,
            built: Instant::now() - TICK * 2,
            state: Arc::new(FleetState::default()),
            full: OnceLock::new(),
        });
        Ok(Hub(Arc::new(Inner {
            source,
            pricing,
            epoch: rand::random::<u64>(),
            builder: Mutex::new(Builder::default()),
            published: RwLock::new((first, VecDeque::new())),
            tx,
            resyncs,
            stop,
        })))
    }

    /// Pages connected now.
    pub fn viewers(&self) -> usize {
        self.0.tx.receiver_count()
    }

    /// The number of the newest update.
    pub fn seq(&self) -> u64 {
        self.published().0.seq
    }

    fn published(&self) -> (Arc<Published>, VecDeque<Arc<Update>>) {
        let p = self.0.published.read().unwrap_or_else(|p| p.into_inner());
        (p.0.clone(), p.1.clone())
    }

    /// The event id of an update: this process's epoch and the sequence number.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{:x}-{seq}", self.0.epoch)
    }

    /// The sequence number an event id names, when it is one of this process's.
    pub fn parse_event_id(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.split_once('-')?;
        (u64::from_str_radix(epoch, 16).ok()? == self.0.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }

    /// Looks at the fleet now and publishes what changed. Blocking: it takes the
    /// fleet's read lock and runs the diagnosis rules on hosts with new readings.
    pub fn refresh(&self) {
        let mut builder = self.0.builder.lock().unwrap_or_else(|p| p.into_inner());
        let state = Arc::new(builder.build(self.0.source.as_ref(), self.0.pricing.as_deref()));
        let at_unix_ms = crate::ingest::now_unix_ms();
        let update = {
            let mut p = self.0.published.write().unwrap_or_else(|p| p.into_inner());
            let seq = p.0.seq + 1;
            let delta = Delta::between(&p.0.state, &state);
            let update = Arc::new(Update {
                seq,
                kind: "delta",
                json: stamped(seq, at_unix_ms, &delta),
            });
            p.0 = Arc::new(Published {
                seq,
                at_unix_ms,
                built: Instant::now(),
                state,
                full: OnceLock::new(),
            });
            p.1.push_back(update.clone());
            while p.1.len() > KEPT_DELTAS {
                p.1.pop_front();
            }
            update
        };
        // Stored before it is sent: a viewer that subscribed before this send sees it
        // here, one that read the store after it has it there (see `Viewer::start`).
        let _ = self.0.tx.send(update);
    }

    /// The newest full state; rebuilt first when older than a tick (nobody watched).
    pub fn full_fresh(&self) -> Arc<Update> {
        if self.published().0.built.elapsed() >= TICK {
            self.refresh();
        }
        self.full(&self.published().0)
    }

    fn full(&self, p: &Published) -> Arc<Update> {
        p.full
            .get_or_init(|| {
                Arc::new(Update {
                    seq: p.seq,
                    kind: "full",
                    json: stamped(p.seq, p.at_unix_ms, p.state.as_ref()),
                })
            })
            .clone()
    }

    /// Refreshes every tick while a page is open, until the collector stops.
    pub fn run(self) -> tokio::task::JoinHandle<()> {
        let mut stop = self.0.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if self.viewers() == 0 {
                    continue;
                }
                let hub = self.clone();
                if tokio::task::spawn_blocking(move || hub.refresh())
                    .await
                    .is_err()
                {
                    tracing::error!("building the fleet page's state failed; pages stop updating");
                    break;
                }
            }
        })
    }

    /// A new viewer: what it must be sent first, then the live updates.
    pub fn viewer(&self, resume_after: Option<u64>) -> Viewer {
        let rx = self.0.tx.subscribe();
        let (newest, kept) = self.published();
        let missed: Option<Vec<Arc<Update>>> = resume_after.and_then(|after| {
            let next = kept.iter().position(|u| u.seq == after + 1);
            match next {
                Some(i) => Some(kept.iter().skip(i).cloned().collect()),
                // Already current: nothing to send until the next change.
                None if after == newest.seq => Some(Vec::new()),
                None => None,
            }
        });
        let first = missed.unwrap_or_else(|| vec![self.full(&newest)]);
        Viewer {
            hub: self.clone(),
            stop: self.0.stop.clone(),
            last_seq: first.last().map_or(newest.seq, |u| u.seq),
            queue: first.into(),
            rx,
        }
    }
}

/// One page's stream: the queued first events, then every newer update in order.
#[derive(Debug)]
pub struct Viewer {
    hub: Hub,
    rx: broadcast::Receiver<Arc<Update>>,
    queue: VecDeque<Arc<Update>>,
    last_seq: u64,
    stop: watch::Receiver<bool>,
}

impl Viewer {
    /// The next update to send; `None` once the collector stops.
    pub async fn next(&mut self) -> Option<Arc<Update>> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            if let Some(u) = self.queue.pop_front() {
                return Some(u);
            }
            let received = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            match received {
                Ok(u) if u.seq <= self.last_seq => continue,
                Ok(u) => {
                    self.last_seq = u.seq;
                    return Some(u);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a fleet page fell behind; sending it a full state");
                    self.hub.0.resyncs.inc();
                    let full = self.hub.full(&self.hub.published().0);
                    self.last_seq = full.seq;
                    self.queue.push_back(full);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
