//! Which pod holds each GPU, end to end: a test kubelet serving the pod-resources API
//! on a unix socket, simulated agents reading it, real gRPC to a collector, and the
//! collector's /metrics in both views at each moment: pods holding whole GPUs and MIG
//! devices, a pod that ends, a GPU that moves to another pod, a kubelet that restarts,
//! disappears and comes back.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::Duration;

use gpulse_agent::config::AgentConfig;
use gpulse_agent::identity::{SystemPaths, host_identity};
use gpulse_agent::pod_resources::GPU_RESOURCE;
use gpulse_agent::{RunningAgent, backend_opener};
use gpulse_collector::RunningCollector;
use gpulse_collector::config::CollectorConfig;
use gpulse_exposition::ExpositionOptions;
use gpulse_exposition::dcgm::DcgmCompat;
use gpulse_gpu::simulator::{SimSpec, Simulator};
use gpulse_gpu::{DeviceInfo, GpuBackend};
use gpulse_testkit::kubelet::{TestKubelet, TestPod};

const WHOLE: &str = "gpus=2,model=h100-sxm,scenario=training";
const MIG: &str = "gpus=1,model=a100,scenario=training,mig=2";
const MIG_RESOURCE: &str = "nvidia.com/mig-1g.10gb";

/// The GPUs an agent with this id simulates (the agent mixes its id into the UUIDs).
fn inventory(agent_id: &str, spec: &str) -> Vec<DeviceInfo> {
    let mut spec: SimSpec = spec.parse().unwrap();
    spec.host = agent_id.into();
    Simulator::new(spec).inventory().to_vec()
}

async fn agent(c: &RunningCollector, id: &str, spec: &str, kubelet: &TestKubelet) -> RunningAgent {
    let config = AgentConfig {
        collector: format!("http://{}", c.grpc_addr),
        agent_id: Some(id.to_string()),
        simulate: Some(spec.to_string()),
        interval: Duration::from_millis(100),
        pod_resources_socket: kubelet.socket().to_path_buf(),
        pod_resources_refresh: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let identity = host_identity(&config, &SystemPaths::default());
    let opener = backend_opener(&config).unwrap();
    gpulse_agent::start(config, identity, opener).await.unwrap()
}

/// Who /metrics says holds one device, in both views.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// The allocation is not known: no allocation series, no pod labels.
    Unknown,
    /// Known, and nobody holds it.
    Nobody,
    By(&'static str, &'static str, &'static str),
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    // Exactly this label, not one ending in its name (`hostname` for `host`).
    let before = &line[..start - name.len() - 2];
    if !(before.ends_with('{') || before.ends_with(',')) {
        return None;
    }
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// gpulse's view: the allocation series of a GPU (`mig` None) or MIG device.
fn gpulse_holder(text: &str, host: &str, uuid: &str, mig: Option<&str>) -> Held {
    let (family, key, value) = match mig {
        None => ("gpulse_gpu_allocation_info{", "uuid", uuid),
        Some(m) => ("gpulse_gpu_mig_allocation_info{", "mig_uuid", m),
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with(family) && label(l, "host") == Some(host) && label(l, key) == Some(value)
        })
        .collect();
    match lines.as_slice() {
        [] => Held::Unknown,
        [l] => match (
            label(l, "namespace"),
            label(l, "pod"),
            label(l, "container"),
        ) {
            (Some(""), Some(""), Some("")) => Held::Nobody,
            (Some(ns), Some(pod), Some(c)) => Held::By(leak(ns), leak(pod), leak(c)),
            _ => panic!("an allocation series without its labels: {l}"),
        },
        more => panic!("one allocation series per device, found {more:#?}"),
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The DCGM view: the pod labels on every series of the GPU (all alike), or none.
fn dcgm_holder(text: &str, host: &str, uuid: &str) -> Option<(String, String, String)> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("DCGM_FI_")
                && label(l, "Hostname") == Some(host)
                && label(l, "UUID") == Some(uuid)
        })
        .collect();
    assert!(
        lines.len() > 20,
        "the DCGM view of {host} {uuid}: {lines:#?}"
    );
    let holders: Vec<Option<(String, String, String)>> = lines
        .iter()
        .map(|l| {
            let get = |n| label(l, n).map(str::to_string);
            match (get("namespace"), get("pod"), get("container")) {
                (Some(ns), Some(pod), Some(c)) => Some((ns, pod, c)),
                (None, None, None) => None,
                partial => panic!("some pod labels but not all {partial:?}: {l}"),
            }
        })
        .collect();
    assert!(
        holders.iter().all(|h| *h == holders[0]),
        "every series of the GPU carries the same pod: {lines:#?}"
    );
    holders[0].clone()
}

/// Renders the fleet as gpulse's view only (what promtool checks) and as both.
fn views(c: &RunningCollector) -> (String, String) {
    let render = |dcgm| {
        gpulse_collector::http::Scrape {
            fleet: c.fleet.clone(),
            options: ExpositionOptions {
                nvlink_per_link: false,
                per_process: false,
                dcgm,
            },
            registry: prometheus::Registry::new(),
            cost: None,
        }
        .render()
    };
    (render(DcgmCompat::Off), render(DcgmCompat::Also))
}

use gpulse_testkit::promtool::check as promtool_check;

/// What the test expects of each device at one moment.
struct Expect {
    gpu0: Held,
    gpu1: Held,
    mig0: Held,
    mig1: Held,
}

struct Fleet {
    whole: Vec<DeviceInfo>,
    mig: Vec<DeviceInfo>,
}

impl Fleet {
    fn seen(&self, gpulse: &str) -> Expect {
        let mig = &self.mig[0];
        Expect {
            gpu0: gpulse_holder(gpulse, "node-a", &self.whole[0].uuid, None),
            gpu1: gpulse_holder(gpulse, "node-a", &self.whole[1].uuid, None),
            mig0: gpulse_holder(
                gpulse,
                "node-b",
                &mig.uuid,
                Some(&mig.mig_instances[0].uuid),
            ),
            mig1: gpulse_holder(
                gpulse,
                "node-b",
                &mig.uuid,
                Some(&mig.mig_instances[1].uuid),
            ),
        }
    }
}

/// Waits until both views show `want`, then checks the DCGM view agrees and promtool
/// passes gpulse's view.
async fn until(c: &RunningCollector, fleet: &Fleet, moment: &str, want: Expect) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (gpulse, both) = views(c);
        let seen = fleet.seen(&gpulse);
        let matches = seen.gpu0 == want.gpu0
            && seen.gpu1 == want.gpu1
            && seen.mig0 == want.mig0
            && seen.mig1 == want.mig1;
        if matches {
            for (info, held) in [(&fleet.whole[0], &want.gpu0), (&fleet.whole[1], &want.gpu1)] {
                let dcgm = dcgm_holder(&both, "node-a", &info.uuid);
                let expected = match held {
                    Held::By(ns, pod, c) => Some((ns.to_string(), pod.to_string(), c.to_string())),
                    Held::Nobody | Held::Unknown => None,
                };
                assert_eq!(dcgm, expected, "{moment}: DCGM view of {}", info.uuid);
            }
            // dcgm-exporter labels the MIG instance's series, not the whole GPU's;
            // this view has whole-GPU series only, so they stay unlabelled.
            assert_eq!(
                dcgm_holder(&both, "node-b", &fleet.mig[0].uuid),
                None,
                "{moment}: a MIG GPU's whole-GPU series"
            );
            promtool_check(&gpulse);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{moment}: expected gpu0 {:?} gpu1 {:?} mig0 {:?} mig1 {:?}, saw {:?} {:?} {:?} {:?}",
            want.gpu0,
            want.gpu1,
            want.mig0,
            want.mig1,
            seen.gpu0,
            seen.gpu1,
            seen.mig0,
            seen.mig1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_labels_each_gpu_with_the_pod_holding_it_at_each_moment() {
    let c = gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tempfile::tempdir().unwrap().keep(),
        dcgm_compat: DcgmCompat::Also,
        ..CollectorConfig::default()
    })
    .await
    .unwrap();
    let fleet = Fleet {
        whole: inventory("node-a", WHOLE),
        mig: inventory("node-b", MIG),
    };
    let (g0, g1) = (fleet.whole[0].uuid.clone(), fleet.whole[1].uuid.clone());
    let migs: Vec<String> = fleet.mig[0]
        .mig_instances
        .iter()
        .map(|m| m.uuid.clone())
        .collect();

    let mut kubelet = TestKubelet::start().await;
    kubelet.set_allocatable(GPU_RESOURCE, &[&g0, &g1]);
    let train = TestPod::new("ml", "train-0", "trainer", GPU_RESOURCE, &[&g0]);
    let serve = TestPod::new("infer", "serve-1", "server", GPU_RESOURCE, &[&g1]);
    let mig_pod = TestPod::new("research", "nb-0", "jupyter", MIG_RESOURCE, &[&migs[0]]);
    kubelet.set_pods(vec![train.clone(), serve.clone(), mig_pod.clone()]);
    let a = agent(&c, "node-a", WHOLE, &kubelet).await;
    let b = agent(&c, "node-b", MIG, &kubelet).await;

    until(
        &c,
        &fleet,
        "pods hold whole GPUs and a MIG device",
        Expect {
            gpu0: Held::By("ml", "train-0", "trainer"),
            gpu1: Held::By("infer", "serve-1", "server"),
            mig0: Held::By("research", "nb-0", "jupyter"),
            mig1: Held::Nobody,
        },
    )
    .await;

    kubelet.set_pods(vec![serve.clone(), mig_pod.clone()]);
    until(
        &c,
        &fleet,
        "train-0 ended",
        Expect {
            gpu0: Held::Nobody,
            gpu1: Held::By("infer", "serve-1", "server"),
            mig0: Held::By("research", "nb-0", "jupyter"),
            mig1: Held::Nobody,
        },
    )
    .await;

    let moved = TestPod::new("infer", "serve-2", "server", GPU_RESOURCE, &[&g1]);
    let mig_moved = TestPod::new("research", "nb-0", "jupyter", MIG_RESOURCE, &[&migs[1]]);
    kubelet.set_pods(vec![moved.clone(), mig_moved.clone()]);
    until(
        &c,
        &fleet,
        "GPU 1 moved to serve-2, the MIG pod to the other MIG device",
        Expect {
            gpu0: Held::Nobody,
            gpu1: Held::By("infer", "serve-2", "server"),
            mig0: Held::Nobody,
            mig1: Held::By("research", "nb-0", "jupyter"),
        },
    )
    .await;

    // A restarting kubelet (socket there, nobody answering): the last allocation holds.
    kubelet.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    until(
        &c,
        &fleet,
        "the kubelet is restarting",
        Expect {
            gpu0: Held::Nobody,
            gpu1: Held::By("infer", "serve-2", "server"),
            mig0: Held::Nobody,
            mig1: Held::By("research", "nb-0", "jupyter"),
        },
    )
    .await;
    assert_eq!(
        a.metrics
            .kubelet_state
            .with_label_values(&["unreachable"])
            .get(),
        1,
        "the agent says why it keeps the last allocation"
    );

    // Gone (socket removed): no longer a Kubernetes node as far as the agent knows.
    kubelet.disappear().await;
    until(
        &c,
        &fleet,
        "the kubelet disappeared",
        Expect {
            gpu0: Held::Unknown,
            gpu1: Held::Unknown,
            mig0: Held::Unknown,
            mig1: Held::Unknown,
        },
    )
    .await;

    kubelet.set_pods(vec![train, moved]);
    kubelet.come_back().await;
    until(
        &c,
        &fleet,
        "the kubelet came back",
        Expect {
            gpu0: Held::By("ml", "train-0", "trainer"),
            gpu1: Held::By("infer", "serve-2", "server"),
            mig0: Held::Nobody,
            mig1: Held::Nobody,
        },
    )
    .await;

    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
