//! What both listeners (gRPC and HTTP) share beneath their protocols: a listen backlog
//! deep enough for a fleet that connects at once; the accept loop,
//! which backs off instead of spinning when the process runs out of file descriptors;
//! a bound on the connections each holds; and closing connections on which nothing is
//! sent or received for a while. Each of these is counted (docs/security.md).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use gpulse_exposition::names::{self, Def};

use crate::config::ListenerLimits;

/// The first wait after a failed accept; it doubles while accepts keep failing.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest wait between accepts while they keep failing: a released descriptor is
/// used within this long.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections the kernel queues for each listener until they are accepted. A fleet that
/// connects at once (the collector restarted; 10,000 agents within a second) overflows
/// the 128 that std and tokio ask for, and the kernel resets what is past it. Linux caps
/// the backlog at `net.core.somaxconn` (4096 by default since 5.4; raise it for more).
pub const LISTEN_BACKLOG: u32 = 4096;
/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// errno values (asm-generic/errno-base.h, the same on the BSDs): the process's (EMFILE)
/// or the system's (ENFILE) table of open files is full.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// The listeners, as the `listener` label names them.
pub const LISTENERS: [&str; 2] = ["grpc", "http"];

/// Why an accept failed, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// No file descriptor left (EMFILE, ENFILE): only closing connections helps.
    FdExhausted,
    Other,
}

impl AcceptFailure {
    pub const ALL: [AcceptFailure; 2] = [AcceptFailure::FdExhausted, AcceptFailure::Other];

    pub fn of(e: &io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(EMFILE | ENFILE) => AcceptFailure::FdExhausted,
            _ => AcceptFailure::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::FdExhausted => "fd_exhausted",
            AcceptFailure::Other => "other",
        }
    }
}

/// A failure that belongs to one connection that came and went before it was
/// accepted; the next accept is unaffected.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

fn opts(def: &Def) -> Opts {
    Opts::new(def.name, def.help)
}

/// The listeners' and HTTP handlers' counters.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    open: IntGaugeVec,
    refused: IntCounterVec,
    idle_closed: IntCounterVec,
    accept_errors: IntCounterVec,
    /// HTTP requests whose handler panicked.
    pub http_panics: IntCounter,
}

impl ListenerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ListenerMetrics> {
        let m = ListenerMetrics {
            open: IntGaugeVec::new(opts(&names::COLLECTOR_CONNECTIONS_OPEN), &["listener"])?,
            refused: IntCounterVec::new(
                opts(&names::COLLECTOR_CONNECTIONS_REFUSED),
                &["listener"],
            )?,
            idle_closed: IntCounterVec::new(
                opts(&names::COLLECTOR_IDLE_CONNECTIONS_CLOSED),
                &["listener"],
            )?,
            accept_errors: IntCounterVec::new(
                opts(&names::COLLECTOR_ACCEPT_ERRORS),
                &["listener", "reason"],
            )?,
            http_panics: IntCounter::with_opts(opts(&names::COLLECTOR_HTTP_PANICS))?,
        };
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.idle_closed.clone()))?;
        registry.register(Box::new(m.accept_errors.clone()))?;
        registry.register(Box::new(m.http_panics.clone()))?;
        // Every series exists from the start at 0, so rate() and alerts see the first one.
        for listener in LISTENERS {
            m.open.with_label_values(&[listener]);
            m.refused.with_label_values(&[listener]);
            m.idle_closed.with_label_values(&[listener]);
            for reason in AcceptFailure::ALL {
                m.accept_errors
                    .with_label_values(&[listener, reason.as_str()]);
            }
        }
        Ok(m)
    }
}

/// One listener's counters.
#[derive(Debug, Clone)]
struct Counters {
    open: IntGauge,
    refused: IntCounter,
    idle_closed: IntCounter,
    fd_exhausted: IntCounter,
    other_errors: IntCounter,
}

impl Counters {
    fn of(metrics: &ListenerMetrics, listener: &str) -> Counters {
        let error = |reason: AcceptFailure| {
            metrics
                .accept_errors
                .with_label_values(&[listener, reason.as_str()])
        };
        Counters {
            open: metrics.open.with_label_values(&[listener]),
            refused: metrics.refused.with_label_values(&[listener]),
            idle_closed: metrics.idle_closed.with_label_values(&[listener]),
            fd_exhausted: error(AcceptFailure::FdExhausted),
            other_errors: error(AcceptFailure::Other),
        }
    }
}

/// Binds `addr` as `TcpListener::bind` does (SO_REUSEADDR), with a backlog of
/// [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` (named `name`: grpc or http) until `stop` turns
/// true. Past `limits.max_connections` open, a new connection is closed on arrival; a
/// failed accept is retried after a wait that doubles from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`], so a process out of descriptors keeps serving the
/// connections it has instead of spinning. Accepted connections come out of the
/// returned queue, each closed once idle for `limits.idle_timeout`.
pub fn accept(
    name: &'static str,
    listener: TcpListener,
    limits: &ListenerLimits,
    metrics: &ListenerMetrics,
    mut stop: watch::Receiver<bool>,
) -> (
    JoinHandle<()>,
    mpsc::Receiver<(Guarded<TcpStream>, SocketAddr)>,
) {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let idle = limits.idle_timeout;
    let counters = Counters::of(metrics, name);
    let task = tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    a
                }
                Err(e) if is_connection_error(&e) => {
                    debug!(listener = name, error = %e, "a connection went before it was accepted");
                    continue;
                }
                Err(e) => {
                    match AcceptFailure::of(&e) {
                        AcceptFailure::FdExhausted => counters.fd_exhausted.inc(),
                        AcceptFailure::Other => counters.other_errors.inc(),
                    }
                    warn!(listener = name, error = %e, retry_in = ?backoff,
                        "cannot accept a connection; open connections are still served (raise LimitNOFILE if the process is out of file descriptors)");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                counters.refused.inc();
                debug!(listener = name, %peer, "closed a connection: max_connections are open");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Guarded::new(tcp, peer, slot, idle, &counters);
            if tx.send((conn, peer)).await.is_err() {
                return;
            }
        }
    });
    (task, rx)
}

/// A connection that holds one of its listener's slots while open and fails its reads
/// and writes once nothing has moved either way for the idle timeout, which makes the
/// server close it.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    peer: SocketAddr,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: bool,
    idle_closed: IntCounter,
    open: IntGauge,
    _slot: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    fn new(
        inner: S,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        idle: Duration,
        counters: &Counters,
    ) -> Guarded<S> {
        counters.open.inc();
        Guarded {
            inner,
            peer,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            timed_out: false,
            idle_closed: counters.idle_closed.clone(),
            open: counters.open.clone(),
            _slot: slot,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Called when the inner stream has nothing to give or take: an error once the
    /// deadline has passed, else `Pending` with the deadline's wake-up registered.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.deadline.as_mut().poll(cx));
        if !self.timed_out {
            self.timed_out = true;
            self.idle_closed.inc();
            debug!(peer = %self.peer, idle = ?self.idle, "closing an idle connection");
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing sent or received for {:?}", self.idle),
        ))
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            // A client that stops reading what it asked for is idle too.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Serves HTTP on the connections `queue` gives until `stop` turns true, then lets open
/// requests finish. HTTP/1.1, and HTTP/2 for a client that opens with its preface (a
/// gRPC client sent to the wrong port then learns it is not gRPC). An HTTP/1.1
/// request's head must arrive in full within `header_read_timeout` of the connection
/// opening or of the previous answer, so a client that trickles its headers, or keeps
/// a connection idle between requests, is closed after it. HTTP/2 connections are
/// pinged every `keepalive`.
pub async fn serve_http<Io>(
    mut queue: mpsc::Receiver<(Io, SocketAddr)>,
    app: axum::Router,
    header_read_timeout: Duration,
    keepalive: Duration,
    stop: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive);
    let builder = Arc::new(builder);
    let mut open = tokio::task::JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            next = queue.recv() => match next {
                Some((io, peer)) => {
                    let builder = builder.clone();
                    let app = app.clone();
                    let mut stop = stop.clone();
                    open.spawn(async move {
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let conn = builder.serve_connection(TokioIo::new(io), service);
                        let mut conn = std::pin::pin!(conn);
                        tokio::select! {
                            ended = conn.as_mut() => {
                                if let Err(e) = ended {
                                    debug!(%peer, error = %e, "an HTTP connection ended");
                                }
                                return;
                            }
                            _ = async { stop.wait_for(|s| *s).await.is_ok() } => {}
                        }
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    });
                }
                None => break,
            },
            Some(_) = open.join_next(), if !open.is_empty() => {}
            _ = async { stopping.wait_for(|s| *s).await.is_ok() } => break,
        }
    }
    while open.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_wait_in_the_backlog_until_they_are_accepted() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel caps the backlog at somaxconn; 1,000 is well past the 128 of
        // TcpListener::bind, and within the cap on any kernel since 5.4.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let n = 1000.min(somaxconn);
        // Nothing accepts yet: each connection completes only if the backlog holds it.
        let mut waiting = Vec::new();
        for _ in 0..n {
            let c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                .await
                .expect("the backlog holds the connection")
                .unwrap();
            waiting.push(c);
        }
        for _ in 0..n {
            listener.accept().await.unwrap();
        }
    }

    #[test]
    fn running_out_of_descriptors_is_told_from_other_accept_failures() {
        for (errno, failure) in [
            (EMFILE, AcceptFailure::FdExhausted),
            (ENFILE, AcceptFailure::FdExhausted),
            // ENOBUFS, ENOMEM: memory, not descriptors.
            (105, AcceptFailure::Other),
            (12, AcceptFailure::Other),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(AcceptFailure::of(&e), failure, "{e}");
        }
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_connection_error(&aborted));
        assert!(!is_connection_error(&io::Error::from_raw_os_error(EMFILE)));
    }
}
