//! Remote write against real receivers (VictoriaMetrics and Prometheus, started by the
//! tests): what a collector with simulated agents pushes is what its /metrics serves,
//! and a receiver outage loses nothing within the queue's bound.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use gpulse_collector::RunningCollector;
use gpulse_collector::config::CollectorConfig;
use gpulse_collector::remote_write::{DropReason, RemoteWriteConfig};
use gpulse_exposition::dcgm::DcgmCompat;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostFacts, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message};

use support::{Receiver, Series, eventually, parse_exposition};

/// The external label every pushed series carries (and served series do not).
const EXTERNAL: (&str, &str) = ("collector", "rw-test");

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn identity(agent_id: &str) -> HostIdentity {
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
            machine_id: format!("machine-{agent_id}"),
            ..HostFacts::default()
        },
        labels: Default::default(),
        gpu_backend_error: String::new(),
    }
}

async fn start(rw: RemoteWriteConfig, dcgm: DcgmCompat) -> RunningCollector {
    start_as(EXTERNAL.1, rw, dcgm).await
}

/// A collector whose pushed series carry `collector="<name>"`.
async fn start_as(name: &str, rw: RemoteWriteConfig, dcgm: DcgmCompat) -> RunningCollector {
    let dir = tempfile::tempdir().unwrap().keep();
    gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        dcgm_compat: dcgm,
        remote_write: vec![rw],
        external_labels: Some([(EXTERNAL.0.to_string(), name.to_string())].into()),
        ..CollectorConfig::default()
    })
    .await
    .unwrap()
}

/// Connects a simulated agent with `spec`'s GPUs and delivers one batch of readings;
/// the stream stays open (the agent is up) until the sender is dropped.
async fn agent(c: &RunningCollector, id: &str, spec: &str) -> mpsc::Sender<v1::AgentMessage> {
    let mut sim = Simulator::new(spec.parse().unwrap());
    let identity = identity(id);
    let (tx, mut answers) =
        support::open_agent_stream(c.grpc_addr, &identity, sim.inventory()).await;
    let t = now_ms();
    let snapshot = v1::Snapshot::from(&Snapshot {
        timestamp_unix_ms: t,
        gpus: sim.sample(t),
    });
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq: 1,
            snapshots: vec![snapshot],
            agent: None,
        })),
    })
    .await
    .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .unwrap()
        .unwrap();
    assert!(ack.is_some(), "the collector acknowledges the batch");
    tokio::spawn(async move { while let Ok(Some(_)) = answers.message().await {} });
    tx
}

/// GPU series (gpulse's and DCGM's) on the collector's /metrics now.
fn served_gpu_series(c: &RunningCollector) -> Vec<(Series, f64)> {
    parse_exposition(&c.render_metrics())
        .into_iter()
        .filter(|(s, _)| {
            let n = &s["__name__"];
            n.starts_with("gpulse_gpu_") || n.starts_with("DCGM_FI_")
        })
        .collect()
}

fn config(receiver: &Receiver) -> RemoteWriteConfig {
    RemoteWriteConfig {
        name: Some("test".into()),
        interval: Duration::from_secs(1),
        ..RemoteWriteConfig::new(receiver.write_url())
    }
}

/// Every GPU series the collector serves arrives at `receiver` with the served value.
async fn every_served_gpu_series_arrives(receiver: Receiver) {
    let c = start(config(&receiver), DcgmCompat::Also).await;
    let _agents = [
        agent(
            &c,
            "node-a",
            "gpus=8,model=h100-sxm,scenario=thermal,seed=1",
        )
        .await,
        agent(&c, "node-b", "gpus=8,model=a100,scenario=training,seed=2").await,
        agent(
            &c,
            "node-c",
            "gpus=2,model=l4,scenario=nvlink-errors,seed=3",
        )
        .await,
    ];
    // The readings do not change after the one batch: /metrics is the reference.
    let served = served_gpu_series(&c);
    let gpus: std::collections::BTreeSet<(String, String)> = served
        .iter()
        .filter(|(s, _)| s["__name__"] == "gpulse_gpu_info")
        .map(|(s, _)| (s["host"].clone(), s["gpu"].clone()))
        .collect();
    assert_eq!(gpus.len(), 18, "every GPU is served");
    let query = "{__name__=~\"gpulse_gpu_.+|DCGM_FI_.+\"}";
    let stored = eventually(
        "every GPU series at the receiver",
        Duration::from_secs(60),
        || {
            let got = receiver.query(query);
            (got.len() >= served.len()).then_some(got)
        },
    )
    .await;
    let stored: std::collections::BTreeMap<Series, f64> = stored.into_iter().collect();
    for (series, value) in &served {
        let mut series = series.clone();
        series.insert(EXTERNAL.0.to_string(), EXTERNAL.1.to_string());
        let got = stored
            .get(&series)
            .unwrap_or_else(|| panic!("{:?} has no {series:?}", receiver.kind));
        assert!(
            (got - value).abs() <= value.abs() * 1e-12,
            "{series:?}: served {value}, stored {got}"
        );
    }
    assert_eq!(stored.len(), served.len(), "nothing but the served series");
    let m = &c.remote_write[0].metrics;
    assert!(m.sent.get() > 0 && m.last_success.get() > 0.0);
    assert_eq!(m.dropped(DropReason::Rejected).get(), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_stores_every_served_gpu_series() {
    every_served_gpu_series_arrives(Receiver::victoria_metrics()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stores_every_served_gpu_series() {
    every_served_gpu_series_arrives(Receiver::prometheus()).await;
}

/// The largest gap between consecutive stored samples of each series matching
/// `selector`, in ms, and how many samples it has.
fn gaps(receiver: &Receiver, selector: &str) -> Vec<(i64, usize)> {
    receiver
        .timestamps(selector)
        .into_iter()
        .map(|ts| {
            let gap = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            (gap, ts.len())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_within_the_queue_loses_nothing_and_beyond_it_drops_are_counted() {
    let mut receiver = Receiver::victoria_metrics();
    let roomy = start_as("roomy", config(&receiver), DcgmCompat::Off).await;
    let _a = agent(&roomy, "roomy-host", "gpus=2,scenario=training,seed=4").await;
    // A queue of one and a half pushes (as many samples as /metrics has series): during
    // the outage every push drops samples.
    let per_push = parse_exposition(&roomy.render_metrics()).len();
    let tight = start_as(
        "tight",
        RemoteWriteConfig {
            name: Some("tight".into()),
            queue_capacity: per_push * 3 / 2,
            ..config(&receiver)
        },
        DcgmCompat::Off,
    )
    .await;
    let _b = agent(&tight, "tight-host", "gpus=2,scenario=training,seed=4").await;
    let up = |host: &str| format!("gpulse_agent_up{{host=\"{host}\"}}");
    for host in ["roomy-host", "tight-host"] {
        eventually("first samples", Duration::from_secs(30), || {
            gaps(&receiver, &up(host))
                .first()
                .filter(|g| g.1 >= 2)
                .copied()
        })
        .await;
    }

    receiver.stop();
    let (r, t) = (
        &roomy.remote_write[0].metrics,
        &tight.remote_write[0].metrics,
    );
    let down_from = now_ms();
    eventually(
        "retries while the receiver is down",
        Duration::from_secs(30),
        || (r.retried.get() > 0 && now_ms() - down_from > 6_000).then_some(()),
    )
    .await;
    assert!(r.queue.get() > 0, "the roomy queue holds the outage");
    assert_eq!(r.dropped(DropReason::QueueFull).get(), 0);
    assert!(
        t.dropped(DropReason::QueueFull).get() > 0,
        "the tight queue drops"
    );
    receiver.restart();
    let up_again = now_ms();

    eventually("the backlog drained", Duration::from_secs(60), || {
        (r.queue.get() == 0 && r.last_success.get() * 1000.0 > (now_ms() - 2_000) as f64)
            .then_some(())
    })
    .await;
    // The tight collector delivers again too (its backoff may be longer than the
    // roomy one's), so that what it kept after the outage is stored.
    eventually(
        "the tight queue delivers again",
        Duration::from_secs(30),
        || (t.last_success.get() * 1000.0 > up_again as f64 + 1_000.0).then_some(()),
    )
    .await;
    let roomy_metrics = r.clone();
    let tight_metrics = t.clone();
    roomy.shutdown().await;
    tight.shutdown().await;

    // Every sample a collector counted as sent is stored, and nothing else: counted per
    // collector by its external label, once the receiver has made them searchable.
    let stored = |collector: &str| -> u64 {
        receiver
            .timestamps(&format!("{{__name__=~\".+\",collector=\"{collector}\"}}"))
            .iter()
            .map(|ts| ts.len() as u64)
            .sum()
    };
    for (name, m) in [("roomy", &roomy_metrics), ("tight", &tight_metrics)] {
        let sent = m.sent.get();
        let got = eventually("every sent sample stored", Duration::from_secs(30), || {
            let got = stored(name);
            (got >= sent).then_some(got)
        })
        .await;
        assert_eq!(got, sent, "{name}: stored samples against samples sent");
    }
    // Within the bound nothing was given up, though the outage made sends fail.
    assert!(roomy_metrics.failed.get() > 0 && roomy_metrics.retried.get() > 0);
    assert_eq!(roomy_metrics.dropped(DropReason::QueueFull).get(), 0);
    assert_eq!(roomy_metrics.dropped(DropReason::Rejected).get(), 0);
    assert_eq!(roomy_metrics.dropped(DropReason::Shutdown).get(), 0);
    assert!(roomy_metrics.failed.get() >= roomy_metrics.retried.get());
    // The roomy collector's pushes cover the outage: pushes every second (the exact
    // count above proves none was lost; the slack only allows a loaded machine to push
    // late).
    let roomy_up = gaps(&receiver, &up("roomy-host"));
    assert!(
        roomy_up[0].0 < 5_000 && roomy_up[0].1 >= 8,
        "{roomy_up:?}: the outage lasted over 6 pushes"
    );
    // Beyond the bound, what is not stored was dropped and counted.
    assert!(tight_metrics.sent.get() > 0);
    assert!(tight_metrics.dropped(DropReason::QueueFull).get() > 0);
}
