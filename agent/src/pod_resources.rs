//! Which pod and container hold each GPU, from the kubelet's pod-resources API on the
//! node's unix socket.
//!
//! The kubelet knows what it allocated: device-plugin devices (`nvidia.com/gpu` with
//! GPU UUIDs, `nvidia.com/mig-*` with MIG device UUIDs) and devices of dynamic
//! resource allocation claims. The agent asks it on a schedule of its own (not once
//! per sample), bounds every call in time and keeps the last answer between
//! refreshes. A node without the socket is simply not Kubernetes; a kubelet that is
//! unreachable or refuses is a logged state with a self-metric, never a failure of
//! the agent, and the /proc cgroup attribution of processes works beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::{Endpoint, Uri};
use tracing::{info, warn};

use gpulse_gpu::{Allocation, DeviceHolder, DeviceInfo, DeviceSample};
use gpulse_proto::kubelet::pod_resources_lister_client::PodResourcesListerClient;
use gpulse_proto::kubelet::{
    AllocatableResourcesRequest, ContainerResources, ListPodResourcesRequest,
    ListPodResourcesResponse,
};

/// Where the kubelet serves the API on every node (kubelet's `--root-dir` default).
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// How often the allocation is read again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
/// Longest wait for the kubelet in one refresh (connect and call).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The NVIDIA device plugin's resource for whole GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The NVIDIA device plugin's resources for MIG devices (`nvidia.com/mig-1g.10gb`, ...).
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// Largest answer accepted: a node runs at most a few hundred pods.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A container that holds a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// How the kubelet names a device it allocated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKey {
    /// A GPU UUID (`GPU-...`) or MIG device UUID (`MIG-...`): the device plugin's
    /// default `deviceIDStrategy=uuid`, and CDI names that carry one.
    Uuid(String),
    /// A GPU index: the device plugin's `deviceIDStrategy=index`, and the NVIDIA DRA
    /// driver's `gpu-N` device names.
    Index(u32),
}

/// The devices of the node and the containers holding them, as the kubelet last said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Holders per device, sorted; more than one when the GPU is shared (time-slicing
    /// replicas, or one claim used by several containers).
    held: BTreeMap<DeviceKey, Vec<Holder>>,
}

impl Allocations {
    /// The allocation in a `List` answer.
    pub fn from_list(list: &ListPodResourcesResponse) -> Allocations {
        let mut held: BTreeMap<DeviceKey, Vec<Holder>> = BTreeMap::new();
        for pod in &list.pod_resources {
            for container in &pod.containers {
                let holder = Holder {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.name.clone(),
                };
                for key in container_devices(container) {
                    let holders = held.entry(key).or_default();
                    if !holders.contains(&holder) {
                        holders.push(holder.clone());
                        holders.sort();
                    }
                }
            }
        }
        Allocations { held }
    }

    /// Who holds the GPU or MIG device with this UUID (and this index, for kubelets
    /// that name GPUs by index); empty when nobody does.
    pub fn holders(&self, uuid: &str, index: Option<u32>) -> &[Holder] {
        self.held
            .get(&DeviceKey::Uuid(uuid.to_string()))
            .or_else(|| index.and_then(|i| self.held.get(&DeviceKey::Index(i))))
            .map_or(&[], Vec::as_slice)
    }

    /// Devices held by at least one container.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The GPU devices of one container: device-plugin ids of the NVIDIA resources, and
/// the devices of its dynamic resource claims.
fn container_devices(c: &ContainerResources) -> Vec<DeviceKey> {
    let mut keys = Vec::new();
    for d in &c.devices {
        let is_gpu = d.resource_name == GPU_RESOURCE;
        if !is_gpu && !d.resource_name.starts_with(MIG_RESOURCE_PREFIX) {
            continue;
        }
        for id in &d.device_ids {
            keys.extend(device_plugin_id(id, is_gpu));
        }
    }
    for claim in &c.dynamic_resources {
        for r in &claim.claim_resources {
            let from_cdi: Vec<DeviceKey> = r
                .cdi_devices
                .iter()
                .filter_map(|cdi| uuid_in(&cdi.name))
                .map(DeviceKey::Uuid)
                .collect();
            if !from_cdi.is_empty() {
                keys.extend(from_cdi);
            } else if let Some(index) = r
                .device_name
                .strip_prefix("gpu-")
                .and_then(|n| n.parse().ok())
            {
                keys.push(DeviceKey::Index(index));
            } else if let Some(uuid) = uuid_in(&r.device_name) {
                keys.push(DeviceKey::Uuid(uuid));
            }
        }
    }
    keys
}

/// A device plugin's device id: a UUID, a time-slicing replica of one
/// (`GPU-...::2`), or an index under `deviceIDStrategy=index`.
fn device_plugin_id(id: &str, whole_gpu: bool) -> Option<DeviceKey> {
    let id = id.split("::").next().unwrap_or(id);
    if let Some(uuid) = uuid_in(id) {
        return Some(DeviceKey::Uuid(uuid));
    }
    if whole_gpu {
        return id.parse().ok().map(DeviceKey::Index);
    }
    None
}

/// The `GPU-...` or `MIG-...` UUID inside a device name, if any.
fn uuid_in(name: &str) -> Option<String> {
    let start = name.find("GPU-").or_else(|| name.find("MIG-"))?;
    let uuid: String = name[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (uuid.len() > 4).then_some(uuid)
}

/// What the agent knows of the kubelet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletState {
    /// Not asked yet.
    Starting,
    /// No socket at the path: not a Kubernetes node (or the socket is not mounted).
    Absent,
    /// The last refresh answered.
    Answering,
    /// The socket is there but the kubelet did not answer in time or at all.
    Unreachable(String),
    /// The kubelet answered with an error (permission, unimplemented, ...).
    Refused(String),
}

impl KubeletState {
    /// The `state` label of `gpulse_agent_kubelet_state`.
    pub fn label(&self) -> &'static str {
        match self {
            KubeletState::Starting => "starting",
            KubeletState::Absent => "absent",
            KubeletState::Answering => "answering",
            KubeletState::Unreachable(_) => "unreachable",
            KubeletState::Refused(_) => "refused",
        }
    }

    /// Every label value, for a self-metric that is 1 for the current state.
    pub const LABELS: [&'static str; 5] =
        ["starting", "absent", "answering", "unreachable", "refused"];
}

/// The allocation and the state it came with; the allocation of the last answer is
/// kept while the kubelet does not answer, so a restarting kubelet does not blank
/// every GPU's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub state: KubeletState,
    pub allocations: Allocations,
    /// GPU devices the kubelet can allocate (from `GetAllocatableResources`).
    pub allocatable: usize,
    /// Refreshes that answered, and that did not.
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
}

impl Default for PodView {
    fn default() -> Self {
        PodView {
            state: KubeletState::Starting,
            allocations: Allocations::default(),
            allocatable: 0,
            refreshes_ok: 0,
            refreshes_failed: 0,
        }
    }
}

impl PodView {
    /// Whether the allocation is known: the kubelet answers, or answered before and
    /// is restarting (its last answer is kept). Not on a node without a kubelet, nor
    /// before the first answer.
    pub fn knows_allocation(&self) -> bool {
        match self.state {
            KubeletState::Answering => true,
            KubeletState::Unreachable(_) | KubeletState::Refused(_) => self.refreshes_ok > 0,
            KubeletState::Starting | KubeletState::Absent => false,
        }
    }

    /// Who holds `gpu` and each of its MIG devices; `None` when the allocation is
    /// not known.
    pub fn allocation(&self, gpu: &DeviceInfo) -> Option<Allocation> {
        if !self.knows_allocation() {
            return None;
        }
        let whole = self
            .allocations
            .holders(&gpu.uuid, Some(gpu.index))
            .iter()
            .map(|h| (gpu.uuid.as_str(), h));
        let mig = gpu.mig_instances.iter().flat_map(|m| {
            self.allocations
                .holders(&m.uuid, None)
                .iter()
                .map(|h| (m.uuid.as_str(), h))
        });
        Some(Allocation::new(
            whole
                .chain(mig)
                .map(|(device, h)| DeviceHolder {
                    device_uuid: device.to_string(),
                    namespace: h.namespace.clone(),
                    pod: h.pod.clone(),
                    container: h.container.clone(),
                })
                .collect(),
        ))
    }
}

/// One round trip to the kubelet failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("no pod-resources socket at {0}")]
    Absent(PathBuf),
    #[error("cannot reach the kubelet at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("the kubelet at {path} refused: {status}")]
    Refused { path: PathBuf, status: String },
}

/// Reads the allocation once: `List`, and `GetAllocatableResources` where the
/// kubelet has it. Every step is bounded by `timeout`.
pub async fn read_once(
    socket: &Path,
    timeout: Duration,
) -> Result<(Allocations, usize), KubeletError> {
    if !socket.exists() {
        return Err(KubeletError::Absent(socket.to_path_buf()));
    }
    let unreachable = |reason: String| KubeletError::Unreachable {
        path: socket.to_path_buf(),
        reason,
    };
    let path = socket.to_path_buf();
    // The URI is required by the transport and never resolved: the connector dials
    // the socket.
    let endpoint = Endpoint::from_static("http://kubelet.pod-resources")
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    }));
    let channel = tokio::time::timeout(timeout, channel)
        .await
        .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
        .map_err(|e| unreachable(gpulse_cli::error_chain(&e)))?;
    let mut client =
        PodResourcesListerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let refused = |status: tonic::Status| match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(status.message().to_string())
        }
        _ => KubeletError::Refused {
            path: socket.to_path_buf(),
            status: format!("{:?}: {}", status.code(), status.message()),
        },
    };
    let list = client
        .list(ListPodResourcesRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    // Older kubelets (before 1.23) lack it: the allocation is what matters.
    let allocatable = match client
        .get_allocatable_resources(AllocatableResourcesRequest {})
        .await
    {
        Ok(r) => r
            .into_inner()
            .devices
            .iter()
            .filter(|d| {
                d.resource_name == GPU_RESOURCE || d.resource_name.starts_with(MIG_RESOURCE_PREFIX)
            })
            .map(|d| d.device_ids.len())
            .sum(),
        Err(_) => 0,
    };
    Ok((Allocations::from_list(&list), allocatable))
}

/// Keeps the allocation fresh in the background.
#[derive(Debug, Clone)]
pub struct PodResources {
    view: Arc<RwLock<PodView>>,
}

impl PodResources {
    /// Refreshes from `socket` every `refresh` until `stop` turns true. Logs each change
    /// of state once, not every refresh.
    /// `observe` sees the view after every refresh (the agent's self-metric).
    pub fn spawn(
        socket: PathBuf,
        refresh: Duration,
        timeout: Duration,
        mut stop: watch::Receiver<bool>,
        observe: impl Fn(&PodView) + Send + 'static,
    ) -> PodResources {
        let view = Arc::new(RwLock::new(PodView::default()));
        let shared = view.clone();
        tokio::spawn(async move {
            loop {
                let result = read_once(&socket, timeout).await;
                let changed = {
                    let mut v = shared.write().unwrap_or_else(|e| e.into_inner());
                    let before = v.state.clone();
                    match result {
                        Ok((allocations, allocatable)) => {
                            v.state = KubeletState::Answering;
                            v.allocations = allocations;
                            v.allocatable = allocatable;
                            v.refreshes_ok += 1;
                        }
                        Err(KubeletError::Absent(_)) => {
                            v.state = KubeletState::Absent;
                            v.allocations = Allocations::default();
                        }
                        Err(e @ KubeletError::Unreachable { .. }) => {
                            v.state = KubeletState::Unreachable(e.to_string());
                            v.refreshes_failed += 1;
                        }
                        Err(e @ KubeletError::Refused { .. }) => {
                            v.state = KubeletState::Refused(e.to_string());
                            v.refreshes_failed += 1;
                        }
                    }
                    observe(&v);
                    (before.label() != v.state.label()).then(|| v.clone())
                };
                if let Some(v) = changed {
                    match &v.state {
                        KubeletState::Answering => info!(
                            socket = %socket.display(),
                            gpus_held = v.allocations.len(),
                            allocatable = v.allocatable,
                            "kubelet pod-resources answering: GPUs are labelled with their pods"
                        ),
                        KubeletState::Absent => info!(
                            socket = %socket.display(),
                            "no kubelet pod-resources socket: not labelling GPUs with pods \
                             (on Kubernetes, mount /var/lib/kubelet/pod-resources)"
                        ),
                        KubeletState::Unreachable(why) | KubeletState::Refused(why) => warn!(
                            "{why}; keeping the last allocation and retrying every {refresh:?}"
                        ),
                        KubeletState::Starting => {}
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(refresh) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return;
                }
            }
        });
        PodResources { view }
    }

    /// What the kubelet said last.
    pub fn view(&self) -> PodView {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets each sample's allocation from the kubelet's last answer: a lookup in the
    /// cached allocation, made for every reading. While the allocation is not known
    /// the samples keep what the backend gave (the simulator's own pods, a replayed
    /// capture's).
    pub fn attach(&self, inventory: &[DeviceInfo], samples: &mut [DeviceSample]) {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        if !view.knows_allocation() {
            return;
        }
        for s in samples {
            if let Some(info) = inventory.iter().find(|i| i.uuid == s.uuid) {
                s.allocation = view.allocation(info);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_proto::kubelet::{
        CdiDevice, ClaimResource, ContainerDevices, DynamicResource, PodResources as Pod,
    };

    fn container(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            devices: vec![ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
            }],
            dynamic_resources: vec![],
        }
    }

    fn pod(ns: &str, name: &str, containers: Vec<ContainerResources>) -> Pod {
        Pod {
            name: name.into(),
            namespace: ns.into(),
            containers,
        }
    }

    fn holder(ns: &str, pod: &str, c: &str) -> Holder {
        Holder {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
        }
    }

    #[test]
    fn gpus_and_mig_devices_map_to_their_containers() {
        let list = ListPodResourcesResponse {
            pod_resources: vec![
                pod(
                    "ml",
                    "train-0",
                    vec![
                        container("trainer", GPU_RESOURCE, &["GPU-aaaa-1", "GPU-aaaa-2"]),
                        // Not a GPU resource: ignored.
                        container("sidecar", "example.com/nic", &["GPU-not-really"]),
                    ],
                ),
                pod(
                    "infer",
                    "serve-7",
                    vec![container(
                        "server",
                        "nvidia.com/mig-1g.10gb",
                        &["MIG-bbbb-1"],
                    )],
                ),
                // Time-slicing: two replicas of one GPU in two pods.
                pod(
                    "dev",
                    "nb-1",
                    vec![container("nb", GPU_RESOURCE, &["GPU-cccc::0"])],
                ),
                pod(
                    "dev",
                    "nb-2",
                    vec![container("nb", GPU_RESOURCE, &["GPU-cccc::1"])],
                ),
                // deviceIDStrategy=index.
                pod(
                    "batch",
                    "job-x",
                    vec![container("main", GPU_RESOURCE, &["3"])],
                ),
            ],
        };
        let a = Allocations::from_list(&list);
        assert_eq!(
            a.holders("GPU-aaaa-1", Some(0)),
            [holder("ml", "train-0", "trainer")]
        );
        assert_eq!(
            a.holders("GPU-aaaa-2", None),
            [holder("ml", "train-0", "trainer")]
        );
        assert_eq!(
            a.holders("MIG-bbbb-1", None),
            [holder("infer", "serve-7", "server")]
        );
        assert_eq!(
            a.holders("GPU-cccc", None),
            [holder("dev", "nb-1", "nb"), holder("dev", "nb-2", "nb")]
        );
        assert_eq!(
            a.holders("GPU-zzzz", Some(3)),
            [holder("batch", "job-x", "main")]
        );
        assert!(a.holders("GPU-not-really", None).is_empty());
        assert!(a.holders("GPU-zzzz", Some(4)).is_empty());
    }

    #[test]
    fn dynamic_resource_claims_name_their_gpus() {
        let claim = |resources: Vec<ClaimResource>| DynamicResource {
            claim_name: "gpu-claim".into(),
            claim_namespace: "ml".into(),
            claim_resources: resources,
        };
        let list = ListPodResourcesResponse {
            pod_resources: vec![pod(
                "ml",
                "dra-pod",
                vec![ContainerResources {
                    name: "c".into(),
                    devices: vec![],
                    dynamic_resources: vec![claim(vec![
                        ClaimResource {
                            cdi_devices: vec![CdiDevice {
                                name: "k8s.gpu.nvidia.com/device=GPU-dddd-1".into(),
                            }],
                            driver_name: "gpu.nvidia.com".into(),
                            pool_name: "node-1".into(),
                            device_name: "gpu-0".into(),
                        },
                        ClaimResource {
                            cdi_devices: vec![],
                            driver_name: "gpu.nvidia.com".into(),
                            pool_name: "node-1".into(),
                            device_name: "gpu-5".into(),
                        },
                    ])],
                }],
            )],
        };
        let a = Allocations::from_list(&list);
        assert_eq!(
            a.holders("GPU-dddd-1", None),
            [holder("ml", "dra-pod", "c")]
        );
        assert_eq!(
            a.holders("GPU-other", Some(5)),
            [holder("ml", "dra-pod", "c")]
        );
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn a_gpu_s_allocation_names_the_gpu_and_its_mig_devices_only_while_known() {
        let list = ListPodResourcesResponse {
            pod_resources: vec![
                pod(
                    "ml",
                    "train-0",
                    vec![container("trainer", GPU_RESOURCE, &["GPU-a"])],
                ),
                pod(
                    "infer",
                    "serve-1",
                    vec![container("server", "nvidia.com/mig-1g.10gb", &["MIG-b1"])],
                ),
                pod(
                    "batch",
                    "job-2",
                    vec![container("main", GPU_RESOURCE, &["2"])],
                ),
            ],
        };
        let gpu = |index: u32, uuid: &str, migs: &[&str]| DeviceInfo {
            index,
            uuid: uuid.into(),
            mig_instances: migs
                .iter()
                .map(|m| gpulse_gpu::health::MigInstance {
                    uuid: m.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..DeviceInfo::default()
        };
        let holder = |device: &str, ns: &str, pod: &str, c: &str| DeviceHolder {
            device_uuid: device.into(),
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
        };
        let mut view = PodView {
            state: KubeletState::Answering,
            allocations: Allocations::from_list(&list),
            allocatable: 3,
            refreshes_ok: 1,
            refreshes_failed: 0,
        };
        let of = |v: &PodView, g: &DeviceInfo| v.allocation(g).map(|a| a.holders);
        assert_eq!(
            of(&view, &gpu(0, "GPU-a", &[])),
            Some(vec![holder("GPU-a", "ml", "train-0", "trainer")])
        );
        assert_eq!(
            of(&view, &gpu(1, "GPU-b", &["MIG-b1", "MIG-b2"])),
            Some(vec![holder("MIG-b1", "infer", "serve-1", "server")])
        );
        // Named by index: the holder names the GPU by its uuid.
        assert_eq!(
            of(&view, &gpu(2, "GPU-c", &[])),
            Some(vec![holder("GPU-c", "batch", "job-2", "main")])
        );
        assert_eq!(of(&view, &gpu(3, "GPU-d", &[])), Some(vec![]));
        view.state = KubeletState::Unreachable("restarting".into());
        assert!(view.allocation(&gpu(0, "GPU-a", &[])).is_some(), "kept");
        view.refreshes_ok = 0;
        assert_eq!(view.allocation(&gpu(0, "GPU-a", &[])), None, "never known");
        view.state = KubeletState::Absent;
        assert_eq!(view.allocation(&gpu(0, "GPU-a", &[])), None);
    }

    #[tokio::test]
    async fn no_socket_is_not_kubernetes() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_once(&dir.path().join("kubelet.sock"), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, KubeletError::Absent(_)), "{err}");
    }
}
