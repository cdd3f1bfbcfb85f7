//! gpulse-collector: receives agent streams and serves the fleet to Prometheus.
//!
//! It validates and deduplicates what agents send ([`ingest`], [`validate`]), keeps
//! the latest state of every host ([`fleet`]), keeps a cost ledger per GPU per hour in
//! an embedded store and reports on it ([`cost`]), and serves /metrics, /healthz,
//! /readyz, the report API and page ([`http`]), and the live fleet page ([`live`]). Agents and scrapers authenticate with
//! bearer tokens or client certificates ([`auth`]); both listeners can serve TLS
//! ([`tls`]). It can also push the same series to remote-write receivers
//! ([`remote_write`]). [`start`] binds and runs everything;
//! the `gpulse-collector` binary is a thin command line over it.
//!
//! It does not read GPUs (it links no NVML code) and keeps no telemetry history: the
//! Prometheus server that scrapes it does. The ledger is the only history it keeps.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cost;
pub mod delivery;
pub mod findings;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod live;
pub mod metrics;
#[cfg(test)]
mod mutation_tests;
pub mod remote_write;
pub mod scrape_cache;
pub mod tls;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tracing::{error, info};

use gpulse_proto::v1::ingest_server::IngestServer;

use crate::auth::{AgentTokens, BearerToken, GrpcAuth};
use crate::config::{CollectorConfig, ConfigError};
use crate::cost::metrics::CostSeries;
use crate::cost::{Cost, CostError};
use crate::fleet::Fleet;
use crate::listener::ListenerMetrics;
use crate::metrics::SelfMetrics;
use crate::tls::{ServerTls, TlsError};
use crate::validate::RejectKind;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for {what} on {addr}: {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot create the data directory {path}: {source}; set --data-dir to a writable directory"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Token(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error(transparent)]
    RemoteWrite(#[from] remote_write::RemoteWriteError),
}

/// The example configuration file, generated from the defaults.
pub fn example_config() -> String {
    let body = toml::to_string_pretty(&CollectorConfig::default()).expect("the defaults serialise");
    format!(
        "# gpulse-collector configuration: every setting with its default.\n\
         # Generated from the code's defaults; see README.md for what each one means.\n\
         # Unset by default: auth_token_file = \"/etc/gpulse/token\", agent_tokens_file = \"/etc/gpulse/agent-tokens\",\n\
         # tls_cert_file = \"/etc/gpulse/tls/tls.crt\", tls_key_file = \"/etc/gpulse/tls/tls.key\",\n\
         # tls_client_ca_file = \"/etc/gpulse/tls/ca.crt\", pricing_file = \"/etc/gpulse/prices.toml\",\n\
         # [ledger] url = \"postgres://gpulse@db.example:5432/gpulse?sslmode=require\" (else SQLite under data_dir)\n\
         # Remote write (docs/remote-write.md), none by default; one table per receiver:\n\
         # [[remote_write]]\n\
         # url = \"https://mimir.example.com/api/v1/push\"\n\
         # name = \"mimir\"\n\
         # bearer_token_file = \"/etc/gpulse/mimir-token\"\n\
         # interval = \"{interval}\"\n\
         # queue_capacity = {capacity}\n\
         # max_samples_per_send = {per_send}\n\
         # max_concurrent_requests = {concurrent}\n\
         # timeout = \"{timeout}\"\n\
         # Labels added to every pushed series; default: collector = this host's name.\n\
         # external_labels = {{ collector = \"gpulse-eu-1\" }}\n\n{body}",
        interval = humantime::format_duration(remote_write::config::DEFAULT_INTERVAL),
        capacity = remote_write::config::DEFAULT_QUEUE_CAPACITY,
        per_send = remote_write::config::DEFAULT_MAX_SAMPLES_PER_SEND,
        concurrent = remote_write::config::DEFAULT_MAX_CONCURRENT_REQUESTS,
        timeout = humantime::format_duration(remote_write::config::DEFAULT_TIMEOUT),
    )
}

/// A running collector. Dropping it does not stop it; call [`RunningCollector::shutdown`].
#[derive(Debug)]
pub struct RunningCollector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub registry: Registry,
    pub metrics: SelfMetrics,
    pub scrape: http::Scrape,
    /// Prices and the cost ledger.
    pub cost: Cost,
    /// The certificate both listeners serve, when TLS is on.
    pub tls: Option<ServerTls>,
    /// The remote-write endpoints, in configuration order.
    pub remote_write: Vec<Arc<remote_write::Endpoint>>,
    /// What feeds the fleet page's viewers.
    pub fleet_page: live::hub::Hub,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningCollector {
    /// What /metrics serves now.
    pub fn render_metrics(&self) -> String {
        self.scrape.render()
    }

    /// Stops accepting, closes agent streams and waits for the servers to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    listener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Validates the configuration, binds both listeners and starts serving.
pub async fn start(config: CollectorConfig) -> Result<RunningCollector, StartError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let token = config
        .auth_token_file
        .as_deref()
        .map(BearerToken::from_file)
        .transpose()
        .map_err(StartError::Token)?;
    let agent_tokens = config
        .agent_tokens_file
        .as_deref()
        .map(AgentTokens::from_file)
        .transpose()
        .map_err(StartError::Token)?;
    if let (Some(shared), Some(agents)) = (&token, &agent_tokens)
        && agents.contains(shared)
    {
        return Err(StartError::Token(
            "agent_tokens_file holds the shared auth_token_file token, which admits any agent id: \
             give that agent a token of its own"
                .into(),
        ));
    }
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(ServerTls::from_files(
            cert,
            key,
            config.tls_client_ca_file.as_deref(),
        )?),
        _ => None,
    };
    let grpc_tls = tls
        .as_ref()
        .map(|t| t.server_config(t.mutual(), &[b"h2"]))
        .transpose()?;
    let http_tls = tls
        .as_ref()
        .map(|t| t.server_config(config.http_mutual_tls(), &[b"http/1.1"]))
        .transpose()?;

    let cost = Cost::start(&config)?;
    let registry = Registry::new();
    let metrics = SelfMetrics::new(&registry)?;
    let listener_metrics = ListenerMetrics::new(&registry)?;
    let fleet = Fleet::with_findings_readings(config.limits.clone(), config.findings_readings);
    let scrape = http::Scrape {
        fleet: fleet.clone(),
        options: gpulse_exposition::ExpositionOptions {
            nvlink_per_link: config.nvlink_per_link,
            per_process: config.process_series,
            dcgm: config.dcgm_compat,
        },
        registry: registry.clone(),
        cost: Some(CostSeries::new(
            cost.pricing.clone(),
            cost.store.totals().clone(),
        )),
    };

    let grpc_listener = bind("agents (gRPC)", config.grpc_listen).await?;
    let http_listener = bind("HTTP", config.http_listen).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "agents (gRPC)",
            addr: config.grpc_listen,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source,
        })?;

    let (stop, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    let service = ingest::IngestService::new(
        fleet.clone(),
        metrics.clone(),
        config.hello_timeout,
        stop_rx.clone(),
    )
    .with_ledger(cost.clone());
    // gzip from agents that send it, plain from older ones; the answers are compressed
    // only for a client that asks. The message limit applies to the decompressed size.
    let server = IngestServer::new(service)
        .max_decoding_message_size(config.limits.max_message_bytes)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let auth = GrpcAuth {
        shared: token.clone(),
        agents: agent_tokens,
        metrics: metrics.clone(),
    };
    let interceptor = move |req| auth.check(req);
    // Pings keep a healthy but quiet agent's connection from looking idle, and close
    // one whose peer stopped answering.
    let keepalive = config.listeners.keepalive();
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .add_service(InterceptedService::new(server, interceptor));
    let grpc_stop = stop_rx.clone();
    let (grpc_acceptor, grpc_connections) = listener::accept(
        "grpc",
        grpc_listener,
        &config.listeners,
        &listener_metrics,
        stop_rx.clone(),
    );
    tasks.push(grpc_acceptor);
    match grpc_tls {
        None => tasks.push(tokio::spawn(async move {
            let incoming = ReceiverStream::new(grpc_connections)
                .map(|(conn, _)| Ok::<_, std::io::Error>(conn));
            if let Err(e) = grpc
                .serve_with_incoming_shutdown(incoming, stopped(grpc_stop))
                .await
            {
                error!(error = %e, "gRPC server failed; agents cannot deliver data");
            }
        })),
        Some(server_config) => {
            let refused = metrics.clone();
            let (handshakes, accepted) = tls::accept(
                "gRPC",
                grpc_connections,
                server_config,
                move || refused.reject(RejectKind::Unauthenticated),
                stop_rx.clone(),
            );
            tasks.push(handshakes);
            tasks.push(tokio::spawn(async move {
                let incoming =
                    ReceiverStream::new(accepted).map(|(tls, _)| Ok::<_, std::io::Error>(tls));
                if let Err(e) = grpc
                    .serve_with_incoming_shutdown(incoming, stopped(grpc_stop))
                    .await
                {
                    error!(error = %e, "gRPC server failed; agents cannot deliver data");
                }
            }));
        }
    }

    // A required client certificate authenticates a scraper; no token is asked for.
    let http_token = if config.http_mutual_tls() {
        None
    } else {
        token
    };
    let fleet_page = live::hub::Hub::new(
        fleet.clone(),
        Some(cost.pricing.clone()),
        &registry,
        stop_rx.clone(),
    )?;
    tasks.push(fleet_page.clone().run());
    let app = http::router(
        http::HttpState {
            scrape: scrape.clone(),
            ready: ready.clone(),
            token: http_token.clone(),
            ledger: Some(cost.store.source().clone()),
            ledger_writer: Some(cost.store.clone()),
            panics: listener_metrics.http_panics.clone(),
            scrape_cache: scrape_cache::ScrapeCache::new(config.metrics_cache),
        },
        live::router(live::FleetPage {
            hub: fleet_page.clone(),
            source: fleet.clone(),
            access: live::access::Access::new(http_token, http_tls.is_some()),
        }),
    );
    let http_stop = stop_rx.clone();
    let (http_acceptor, http_connections) = listener::accept(
        "http",
        http_listener,
        &config.listeners,
        &listener_metrics,
        stop_rx.clone(),
    );
    tasks.push(http_acceptor);
    let header_read_timeout = config.listeners.header_read_timeout;
    match http_tls {
        None => tasks.push(tokio::spawn(listener::serve_http(
            http_connections,
            app,
            header_read_timeout,
            keepalive,
            http_stop,
        ))),
        Some(server_config) => {
            let (handshakes, accepted) = tls::accept(
                "HTTP",
                http_connections,
                server_config,
                || {},
                stop_rx.clone(),
            );
            tasks.push(handshakes);
            tasks.push(tokio::spawn(listener::serve_http(
                accepted,
                app,
                header_read_timeout,
                keepalive,
                http_stop,
            )));
        }
    }

    if let Some(tls) = tls.clone() {
        let mut reload_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(tls::RELOAD_CHECK);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = async { reload_stop.wait_for(|s| *s).await.is_ok() } => break,
                }
                let check = tls.clone();
                match tokio::task::spawn_blocking(move || check.reload_if_changed()).await {
                    Ok(Ok(true)) => info!("serving the renewed TLS certificate to new connections"),
                    Ok(Ok(false)) | Err(_) => {}
                    Ok(Err(e)) => {
                        error!(error = %e, "cannot use the changed TLS certificate; still serving the previous one");
                    }
                }
            }
        }));
    }

    let expiry = config.agent_expiry;
    let expiry_fleet = fleet.clone();
    let expiry_metrics = metrics.clone();
    let mut expiry_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        // Check often enough that series go within a tenth of the expiry, at most every 5 s.
        let period = (expiry / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = expiry_stop.wait_for(|s| *s) => break,
            }
            let gone = expiry_fleet.expire(ingest::now_unix_ms(), expiry.as_millis() as i64);
            if !gone.is_empty() {
                info!(agents = ?gone, "expired agents that stayed away longer than {:?}", expiry);
                expiry_metrics.agents_expired.inc_by(gone.len() as u64);
                let (connected, known) = expiry_fleet.agent_counts();
                expiry_metrics.agents_connected.set(connected as i64);
                expiry_metrics.agents_known.set(known as i64);
            }
        }
    }));

    let (remote_write, pushers) = if config.remote_write.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        remote_write::start(
            &config.remote_write,
            config.external_labels(),
            scrape.clone(),
            &registry,
            stop_rx.clone(),
        )?
    };
    tasks.extend(pushers);

    ready.store(true, Ordering::Release);
    info!(grpc = %grpc_addr, http = %http_addr, tls = tls.is_some(), mutual_tls = config.mutual_tls(), "collector serving");
    Ok(RunningCollector {
        grpc_addr,
        http_addr,
        fleet,
        registry,
        metrics,
        scrape,
        cost,
        tls,
        remote_write,
        fleet_page,
        stop,
        tasks,
    })
}
