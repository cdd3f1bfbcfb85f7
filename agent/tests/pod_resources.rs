//! The agent's view of which pod holds each GPU, against a test kubelet serving the
//! pod-resources API on a unix socket: pods that start, end and move GPUs, and a
//! kubelet that refuses, stops and comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpulse_agent::pod_resources::{
    DEFAULT_TIMEOUT, GPU_RESOURCE, Holder, KubeletState, PodResources, PodView,
};
use gpulse_testkit::kubelet::{TestKubelet, TestPod};

const REFRESH: Duration = Duration::from_millis(50);

fn holder(ns: &str, pod: &str, c: &str) -> Holder {
    Holder {
        namespace: ns.into(),
        pod: pod.into(),
        container: c.into(),
    }
}

/// Waits until the view satisfies `done` (or fails after 10 s, showing the view).
async fn until(p: &PodResources, what: &str, done: impl Fn(&PodView) -> bool) -> PodView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = p.view();
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_agent_follows_the_kubelets_allocation() {
    let mut kubelet = TestKubelet::start().await;
    kubelet.set_allocatable(GPU_RESOURCE, &["GPU-a", "GPU-b", "GPU-c"]);
    kubelet.set_pods(vec![
        TestPod::new(
            "ml",
            "train-0",
            "trainer",
            GPU_RESOURCE,
            &["GPU-a", "GPU-b"],
        ),
        TestPod::new("web", "api", "api", "cpu", &["0"]),
    ]);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // What the agent's self-metric is told, in order of change.
    let seen: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let observed = seen.clone();
    let pods = PodResources::spawn(
        kubelet.socket().to_path_buf(),
        REFRESH,
        DEFAULT_TIMEOUT,
        stop,
        move |view| {
            let mut seen = observed.lock().unwrap();
            if seen.last() != Some(&view.state.label()) {
                seen.push(view.state.label());
            }
        },
    );

    let v = until(&pods, "answering", |v| v.state == KubeletState::Answering).await;
    assert_eq!(
        v.allocations.holders("GPU-a", None),
        [holder("ml", "train-0", "trainer")]
    );
    assert_eq!(
        v.allocations.holders("GPU-b", None),
        [holder("ml", "train-0", "trainer")]
    );
    assert!(
        v.allocations.holders("GPU-c", None).is_empty(),
        "unallocated"
    );
    assert_eq!(v.allocatable, 3);

    // The pod ends; GPU-b moves to another pod.
    kubelet.set_pods(vec![TestPod::new(
        "infer",
        "serve-1",
        "server",
        GPU_RESOURCE,
        &["GPU-b"],
    )]);
    let v = until(&pods, "seeing GPU-b move", |v| {
        v.allocations.holders("GPU-b", None) == [holder("infer", "serve-1", "server")]
    })
    .await;
    assert!(
        v.allocations.holders("GPU-a", None).is_empty(),
        "train-0 ended"
    );

    // Refusing: a state of its own, the last allocation kept.
    kubelet.refuse(Some(tonic::Code::PermissionDenied));
    let v = until(&pods, "refused", |v| {
        matches!(v.state, KubeletState::Refused(_))
    })
    .await;
    assert_eq!(
        v.allocations.holders("GPU-b", None),
        [holder("infer", "serve-1", "server")]
    );
    kubelet.refuse(None);
    until(&pods, "answering again", |v| {
        v.state == KubeletState::Answering
    })
    .await;

    // A restarting kubelet (socket there, nobody listening): unreachable, allocation kept.
    kubelet.stop().await;
    let v = until(&pods, "unreachable", |v| {
        matches!(v.state, KubeletState::Unreachable(_))
    })
    .await;
    assert_eq!(
        v.allocations.holders("GPU-b", None),
        [holder("infer", "serve-1", "server")]
    );
    let failed = v.refreshes_failed;

    // It comes back with new pods.
    kubelet.set_pods(vec![TestPod::new(
        "ml",
        "train-1",
        "t",
        GPU_RESOURCE,
        &["GPU-c"],
    )]);
    kubelet.come_back().await;
    let v = until(&pods, "answering after the restart", |v| {
        v.state == KubeletState::Answering && !v.allocations.holders("GPU-c", None).is_empty()
    })
    .await;
    assert!(v.refreshes_failed >= failed);
    assert!(v.allocations.holders("GPU-b", None).is_empty());

    // The socket goes away: not a Kubernetes node any more, nothing held.
    kubelet.disappear().await;
    let v = until(&pods, "absent", |v| v.state == KubeletState::Absent).await;
    assert!(v.allocations.is_empty());
    stop_tx.send(true).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "answering",
            "refused",
            "answering",
            "unreachable",
            "answering",
            "absent"
        ]
    );
}

/// A kubelet that accepts connections but never answers is bounded by the timeout.
#[tokio::test]
async fn a_silent_kubelet_is_bounded_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    // Accepts and holds every connection, says nothing.
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let err = gpulse_agent::pod_resources::read_once(&socket, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: {err}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("cannot reach the kubelet"),
        "{err}"
    );
}
