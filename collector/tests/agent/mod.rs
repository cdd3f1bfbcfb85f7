//! Driving a collector from the outside as agents do: a hand-driven agent stream over
//! real gRPC, and the collector binary as a process on a data directory.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tonic::Streaming;

use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostFacts, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message, collector_message};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// An agent stream driven by hand, from a simulated host.
pub struct Agent {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: Streaming<v1::CollectorMessage>,
    sim: Simulator,
    seq: u64,
}

impl Agent {
    pub async fn connect(grpc: SocketAddr) -> Agent {
        let id = HostIdentity {
            agent_id: "edge-1".into(),
            boot_id: "boot-1".into(),
            hostname: "edge-1".into(),
            agent_version: "0.1.0".into(),
            provider: ProviderIdentity {
                provider: Learned::from_config("aws"),
                region: Learned::from_config("us-east-1"),
                zone: Learned::from_config("us-east-1a"),
                instance_type: Learned::from_config("p5.48xlarge"),
            },
            facts: HostFacts {
                machine_id: "m-edge-1".into(),
                ..HostFacts::default()
            },
            labels: Default::default(),
            gpu_backend_error: String::new(),
        };
        let sim = Simulator::new("gpus=2,model=h100-sxm,seed=5".parse().unwrap());
        let (tx, rx) = crate::support::open_agent_stream(grpc, &id, sim.inventory()).await;
        Agent {
            tx,
            rx,
            sim,
            seq: 0,
        }
    }

    /// Sends one batch and waits for its acknowledgement.
    pub async fn deliver(&mut self) {
        self.seq += 1;
        let t = now_ms() - 1000;
        let snapshot = v1::Snapshot::from(&Snapshot {
            timestamp_unix_ms: t,
            gpus: self.sim.sample(t),
        });
        self.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(v1::Batch {
                    seq: self.seq,
                    snapshots: vec![snapshot],
                    agent: None,
                })),
            })
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("the collector answers within 10 s")
            .unwrap()
            .expect("the stream is open")
            .msg;
        match answer {
            Some(collector_message::Msg::Ack(ack)) => assert_eq!(ack.seq, self.seq),
            other => panic!("batch {} was not acknowledged: {other:?}", self.seq),
        }
    }
}

/// The collector binary, its pid and its addresses (from its first stdout line).
pub struct Process {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_collector(data_dir: &Path) -> Process {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "gpulse-collector: agents -> 127.0.0.1:P  metrics -> http://127.0.0.1:Q/metrics"
    let field = |after: &str, end: char| -> SocketAddr {
        let rest = line.split(after).nth(1).unwrap();
        rest.split(end).next().unwrap().trim().parse().unwrap()
    };
    Process {
        grpc: field("agents -> ", ' '),
        http: field("http://", '/'),
        child,
    }
}
