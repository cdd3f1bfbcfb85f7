//! Pods the simulator plays on its GPUs (`pods=N`), so that a demo fleet shows
//! namespaces, pods and containers without a kubelet.

use super::{SimSpec, mix, uuid_seed};
use crate::{Allocation, DeviceHolder, DeviceInfo};

/// Namespaces the simulated pods run in, in turn: pod `k` runs in `NAMESPACES[k % 3]`.
pub const NAMESPACES: [&str; 3] = ["ml-training", "inference", "research"];

/// The workload each namespace runs, which names its pods and containers.
fn workload(namespace: &str) -> (&'static str, &'static str) {
    match namespace {
        "ml-training" => ("trainer", "pytorch"),
        "inference" => ("serving", "triton"),
        _ => ("notebook", "jupyter"),
    }
}

/// The allocation of one simulated GPU: `None` without `pods=`, empty for a GPU past
/// the last pod.
pub(super) fn allocation(spec: &SimSpec, gpu: &DeviceInfo) -> Option<Allocation> {
    if spec.pods == 0 {
        return None;
    }
    if gpu.index >= spec.pods {
        return Some(Allocation::default());
    }
    let namespace = NAMESPACES[gpu.index as usize % NAMESPACES.len()];
    let (name, container) = workload(namespace);
    // A ReplicaSet-like suffix, stable per host and GPU so the demo's pods keep their
    // names across restarts.
    let suffix = mix(uuid_seed(spec) ^ u64::from(gpu.index)) % 0x10_0000;
    let pod = format!("{name}-{suffix:05x}-{}", gpu.index);
    let holder = |device_uuid: &str| DeviceHolder {
        device_uuid: device_uuid.to_string(),
        namespace: namespace.to_string(),
        pod: pod.clone(),
        container: container.to_string(),
    };
    // A pod asking for MIG devices gets them instead of the whole GPU.
    let holders = if gpu.mig_instances.is_empty() {
        vec![holder(&gpu.uuid)]
    } else {
        gpu.mig_instances.iter().map(|m| holder(&m.uuid)).collect()
    };
    Some(Allocation::new(holders))
}

#[cfg(test)]
mod tests {
    use crate::GpuBackend;
    use crate::simulator::Simulator;

    #[test]
    fn pods_hold_the_first_gpus_and_leave_the_rest_unallocated() {
        let mut sim = Simulator::new("gpus=4,pods=2".parse().unwrap());
        let inventory = sim.inventory().to_vec();
        let gpus = sim.sample(0);
        for (i, g) in gpus.iter().enumerate() {
            let a = g
                .allocation
                .as_ref()
                .expect("pods= makes the allocation known");
            if i < 2 {
                let h = a.first_of(&inventory[i].uuid).expect("held");
                assert_eq!(h.namespace, super::NAMESPACES[i]);
                assert!(h.pod.ends_with(&format!("-{i}")), "{}", h.pod);
            } else {
                assert!(a.is_empty(), "GPU {i} is past the last pod: {a:?}");
            }
        }
        assert_eq!(sim.sample(5000), {
            let mut again = Simulator::new("gpus=4,pods=2".parse().unwrap());
            again.sample(0);
            again.sample(5000)
        });
    }

    #[test]
    fn with_mig_a_pod_holds_every_mig_device_of_its_gpu_and_not_the_gpu() {
        let mut sim = Simulator::new("gpus=2,model=a100,mig=3,pods=1".parse().unwrap());
        let gpu = sim.inventory()[0].clone();
        let a = sim.sample(0)[0].allocation.clone().unwrap();
        assert!(a.first_of(&gpu.uuid).is_none());
        for m in &gpu.mig_instances {
            assert!(a.first_of(&m.uuid).is_some(), "{} unheld", m.uuid);
        }
        assert_eq!(a.holders().len(), 3);
    }

    #[test]
    fn without_pods_the_allocation_is_unknown() {
        let mut sim = Simulator::new("gpus=2".parse().unwrap());
        assert!(sim.sample(0).iter().all(|g| g.allocation.is_none()));
    }
}
