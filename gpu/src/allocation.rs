//! Which Kubernetes containers hold a GPU and its MIG devices: what the node's kubelet
//! allocated, carried with every reading so that the collector, not the agent, decides
//! how GPUs are labelled.

/// At most this many holders per GPU travel with a reading. A GPU shared by
/// time-slicing has one holder per replica handed out, MIG devices one each (at most
/// 7 on every MIG-capable GPU so far); a node runs at most a few hundred pods
/// (kubelet `maxPods` defaults to 110), so 256 is reached by no real allocation.
pub const MAX_HOLDERS_PER_GPU: usize = 256;

/// One container holding one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DeviceHolder {
    /// The GPU's uuid for a whole GPU, a MIG device's uuid for a MIG device.
    pub device_uuid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Who holds a GPU and each of its MIG devices, as the kubelet said when the reading
/// was taken. A reading with no `Allocation` comes from a host where this is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// As [`Allocation::new`] makes them: sorted by device, namespace, pod and
    /// container, without repeats. One decoded from the wire holds what was sent, so
    /// that validation sees a repeat or an overlong list and refuses it.
    pub holders: Vec<DeviceHolder>,
}

impl Allocation {
    /// An allocation of these holders: sorted, repeats dropped, and cut to
    /// [`MAX_HOLDERS_PER_GPU`] (the first in that order are kept).
    pub fn new(mut holders: Vec<DeviceHolder>) -> Allocation {
        holders.sort();
        holders.dedup();
        holders.truncate(MAX_HOLDERS_PER_GPU);
        Allocation { holders }
    }

    /// Every holder, in order.
    pub fn holders(&self) -> &[DeviceHolder] {
        &self.holders
    }

    /// The holders of one device (the GPU's uuid, or one of its MIG devices').
    pub fn of(&self, device_uuid: &str) -> impl Iterator<Item = &DeviceHolder> + '_ {
        let device_uuid = device_uuid.to_string();
        self.holders
            .iter()
            .filter(move |h| h.device_uuid == device_uuid)
    }

    /// The holder a single set of labels names for a device: the first in namespace,
    /// pod and container order (whatever order it was sent in), so that a device
    /// shared by several containers is labelled the same way on every scrape.
    pub fn first_of(&self, device_uuid: &str) -> Option<&DeviceHolder> {
        self.of(device_uuid).min()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(device: &str, ns: &str, pod: &str) -> DeviceHolder {
        DeviceHolder {
            device_uuid: device.into(),
            namespace: ns.into(),
            pod: pod.into(),
            container: "main".into(),
        }
    }

    #[test]
    fn holders_are_sorted_without_repeats_and_bounded() {
        let a = Allocation::new(vec![
            holder("GPU-1", "ml", "b"),
            holder("GPU-1", "ml", "a"),
            holder("GPU-1", "ml", "b"),
        ]);
        assert_eq!(
            a.holders(),
            [holder("GPU-1", "ml", "a"), holder("GPU-1", "ml", "b")]
        );
        assert_eq!(a.first_of("GPU-1"), Some(&holder("GPU-1", "ml", "a")));
        assert_eq!(a.of("GPU-1").count(), 2);
        assert_eq!(a.first_of("MIG-1"), None);
        let sent = Allocation {
            holders: vec![holder("GPU-1", "ml", "b"), holder("GPU-1", "ml", "a")],
        };
        assert_eq!(sent.first_of("GPU-1"), Some(&holder("GPU-1", "ml", "a")));
        let many = (0..MAX_HOLDERS_PER_GPU + 10)
            .map(|i| holder("GPU-1", "ml", &format!("pod-{i:04}")))
            .collect();
        assert_eq!(Allocation::new(many).holders().len(), MAX_HOLDERS_PER_GPU);
    }
}
