//! A test kubelet: the pod-resources API (gRPC, package `v1`) on a unix socket in a
//! temporary directory, answering from pods the test sets and changes while it runs.
//! It can disappear (socket removed, server stopped) and come back, as a restarting
//! kubelet does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use gpulse_proto::kubelet::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use gpulse_proto::kubelet::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};

/// One pod of the test kubelet: its containers and the devices each holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPod {
    pub namespace: String,
    pub name: String,
    /// (container, resource name, device ids)
    pub containers: Vec<(String, String, Vec<String>)>,
}

impl TestPod {
    /// A pod with one container holding `ids` of `resource`.
    pub fn new(namespace: &str, name: &str, container: &str, resource: &str, ids: &[&str]) -> Self {
        TestPod {
            namespace: namespace.into(),
            name: name.into(),
            containers: vec![(
                container.into(),
                resource.into(),
                ids.iter().map(|s| s.to_string()).collect(),
            )],
        }
    }

    fn to_wire(&self) -> PodResources {
        PodResources {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            containers: self
                .containers
                .iter()
                .map(|(name, resource, ids)| ContainerResources {
                    name: name.clone(),
                    devices: vec![ContainerDevices {
                        resource_name: resource.clone(),
                        device_ids: ids.clone(),
                    }],
                    dynamic_resources: vec![],
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pods: Vec<TestPod>,
    /// (resource, device ids) the node can allocate.
    allocatable: Vec<(String, Vec<String>)>,
    /// When set, every call fails with this status code.
    refuse: Option<tonic::Code>,
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<State>>);

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = s.refuse {
            return Err(Status::new(code, "refused by the test kubelet"));
        }
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: s.pods.iter().map(TestPod::to_wire).collect(),
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = s.refuse {
            return Err(Status::new(code, "refused by the test kubelet"));
        }
        Ok(Response::new(AllocatableResourcesResponse {
            devices: s
                .allocatable
                .iter()
                .map(|(resource, ids)| ContainerDevices {
                    resource_name: resource.clone(),
                    device_ids: ids.clone(),
                })
                .collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let r = request.into_inner();
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.pods
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .map(|p| {
                Response::new(GetPodResourcesResponse {
                    pod_resources: Some(p.to_wire()),
                })
            })
            .ok_or_else(|| Status::not_found(format!("pod {}/{}", r.pod_namespace, r.pod_name)))
    }
}

/// The running test kubelet. Needs a Tokio runtime.
#[derive(Debug)]
pub struct TestKubelet {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestKubelet {
    /// Serves at `<tempdir>/pod-resources/kubelet.sock`, with no pods yet.
    pub async fn start() -> TestKubelet {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("pod-resources/kubelet.sock");
        std::fs::create_dir_all(dir.path().join("pod-resources"))
            .expect("a directory for the socket");
        let mut k = TestKubelet {
            _dir: dir,
            socket,
            state: Arc::default(),
            server: None,
        };
        k.come_back().await;
        k
    }

    /// The socket agents are pointed at.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Replaces every pod (a pod that ended is one left out; a GPU that moved is in
    /// another pod).
    pub fn set_pods(&self, pods: Vec<TestPod>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).pods = pods;
    }

    /// Sets the devices the node can allocate.
    pub fn set_allocatable(&self, resource: &str, ids: &[&str]) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocatable = vec![(resource.into(), ids.iter().map(|s| s.to_string()).collect())];
    }

    /// Makes every call fail with `code` (None: answer again).
    pub fn refuse(&self, code: Option<tonic::Code>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).refuse = code;
    }

    /// Stops serving and leaves the socket file, as a kubelet that is restarting:
    /// connections are refused.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Stops serving and removes the socket, as a node without a kubelet.
    pub async fn disappear(&mut self) {
        self.stop().await;
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Serves again on the same socket, with the pods it had.
    pub async fn come_back(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).expect("bind the test kubelet's socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = PodResourcesListerServer::new(Service(self.state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, task));
    }
}
