//! What each string and list of the wire protocol may hold. The protocol's own
//! generated walk ([`gpulse_proto::walk`]) visits every string and every repeated
//! field and map an agent can send; the two tables here say what each may be, and
//! match exhaustively, so a field added to the proto does not compile until it is
//! given its rule and bound.

use gpulse_proto::walk::{RepeatedField, StringField, Visitor, Walk};

use super::text::{AgentText, TextRule};
use super::{RejectKind, Rejection};
use crate::config::Limits;

/// nvml.h NVML_NVLINK_MAX_LINKS.
pub const MAX_NVLINKS: usize = 18;
/// Processes listed per GPU; a GPU shared by more is summarised by the largest.
pub const MAX_PROCESSES_PER_GPU: usize = 256;
/// Distinct XID codes per GPU (NVIDIA's catalogue has under 200).
pub const MAX_XID_CODES: usize = 256;
/// MIG devices per GPU: every MIG-capable GPU so far (A100, H100, H200, B200) has at
/// most 7 (nvmlDeviceGetMaxMigDeviceCount); twice that leaves room for the next.
pub const MAX_MIG_INSTANCES: usize = 14;
/// Throttle policies: the values of gpulse.v1.ThrottlePolicy other than UNSPECIFIED.
pub const MAX_THROTTLE_POLICIES: usize = 8;
/// Fields a sample can name as unsupported or failed: gpulse.v1.Field's values other
/// than UNSPECIFIED. A field named twice is named once (the lists are sets).
pub const MAX_SAMPLE_FIELDS: usize = 25;
/// Containers holding a GPU and its MIG devices: the agent's own cut
/// ([`gpulse_gpu::allocation::MAX_HOLDERS_PER_GPU`]), so no agent of this version
/// sends more.
pub const MAX_HOLDERS_PER_GPU: usize = gpulse_gpu::allocation::MAX_HOLDERS_PER_GPU;

/// The rule of each string field, and the kind its refusal is counted under.
pub fn string_rule(field: StringField) -> (TextRule, RejectKind) {
    use RejectKind::*;
    use StringField::*;
    match field {
        HelloAgentId => (TextRule::AgentId, InvalidIdentity),
        HelloGpuBackendError => (TextRule::Kind, InvalidIdentity),
        HelloBootId
        | HelloHostname
        | HelloAgentVersion
        | ProviderIdentityProvider
        | ProviderIdentityRegion
        | ProviderIdentityZone
        | ProviderIdentityInstanceType
        | HostFactsMachineId
        | HostFactsOs
        | HostFactsKernel
        | HostFactsCpuModel => (TextRule::Text, InvalidIdentity),
        HelloLabelsEntryKey => (TextRule::LabelName, InvalidLabel),
        HelloLabelsEntryValue => (TextRule::Text, InvalidLabel),
        GpuInfoUuid | GpuInfoModel | GpuInfoPciBusId | GpuInfoDriverVersion
        | GpuInfoVbiosVersion | GpuInfoArchitecture | MigInstanceUuid => {
            (TextRule::Text, InvalidInventory)
        }
        GpuSampleUuid | ProcessWorkload | DeviceHolderDeviceUuid => (TextRule::Text, InvalidString),
        DeviceHolderNamespace | DeviceHolderContainer => (TextRule::KubernetesLabel, InvalidString),
        DeviceHolderPod => (TextRule::KubernetesSubdomain, InvalidString),
    }
}

/// How the entries of a list are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    /// Entries with the same value of this field would be the same series: a list
    /// holding two is refused with `duplicate`.
    Keyed {
        field: &'static str,
        duplicate: RejectKind,
    },
    /// A set of enum values: an entry repeated is the same entry (merged, not refused).
    Set,
    /// A protobuf map: a key sent twice keeps its last value (protobuf's own rule).
    MapKeys,
    /// Entries are separate readings in time: no two are the same series.
    Readings,
}

/// How many entries a list may hold, which setting or constant says so, the kind a
/// longer list is refused with, and how its entries are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub max: usize,
    pub limit: &'static str,
    pub kind: RejectKind,
    pub entries: Entries,
}

/// The bound of each repeated field and map.
pub fn bound(field: RepeatedField, limits: &Limits) -> Bound {
    use RejectKind::*;
    use RepeatedField::*;
    let keyed = |field, duplicate| Entries::Keyed { field, duplicate };
    let (max, limit, kind, entries) = match field {
        BatchSnapshots => (
            limits.max_snapshots_per_batch,
            "limits.max_snapshots_per_batch",
            TooManySnapshots,
            Entries::Readings,
        ),
        HelloGpus => (
            limits.max_gpus_per_host,
            "limits.max_gpus_per_host",
            TooManyGpus,
            keyed("uuid", InvalidInventory),
        ),
        SnapshotGpus => (
            limits.max_gpus_per_host,
            "limits.max_gpus_per_host",
            TooManyGpus,
            keyed("uuid", DuplicateGpu),
        ),
        HelloLabels => (
            limits.max_labels,
            "limits.max_labels",
            InvalidLabel,
            Entries::MapKeys,
        ),
        GpuInfoMigInstances => (
            MAX_MIG_INSTANCES,
            "MIG devices per GPU (14)",
            InvalidInventory,
            keyed("uuid", InvalidInventory),
        ),
        GpuSampleUnsupported | GpuSampleFailed => (
            MAX_SAMPLE_FIELDS,
            "sample fields (25)",
            TooManyItems,
            Entries::Set,
        ),
        NvLinksLinks => (
            MAX_NVLINKS,
            "NVLink links per GPU (18)",
            TooManyItems,
            keyed("link", DuplicateKey),
        ),
        ProcessesProcesses => (
            MAX_PROCESSES_PER_GPU,
            "processes per GPU (256)",
            TooManyItems,
            keyed("pid", DuplicateKey),
        ),
        ThrottleTimePolicies => (
            MAX_THROTTLE_POLICIES,
            "throttle policies (8)",
            TooManyItems,
            keyed("policy", DuplicateKey),
        ),
        // Keyed by the whole holder (device, namespace, pod, container): the same
        // container named twice for one device would count its GPU time twice.
        AllocationHolders => (
            MAX_HOLDERS_PER_GPU,
            "holders per GPU (256)",
            TooManyItems,
            keyed("container", DuplicateKey),
        ),
        XidCountsCounts => (
            MAX_XID_CODES,
            "XID codes per GPU (256)",
            TooManyItems,
            keyed("xid", DuplicateKey),
        ),
    };
    Bound {
        max,
        limit,
        kind,
        entries,
    }
}

/// The field's name as a message shows it: `GpuInfo.architecture`.
fn short(full_name: &str) -> &str {
    full_name.strip_prefix("gpulse.v1.").unwrap_or(full_name)
}

struct Checker<'a> {
    limits: &'a Limits,
}

impl Visitor for Checker<'_> {
    type Error = Rejection;

    fn string(&mut self, field: StringField, value: &str) -> Result<(), Rejection> {
        let (rule, kind) = string_rule(field);
        AgentText::parse(rule, value, self.limits.max_string_bytes)
            .map(|_| ())
            .map_err(|e| {
                // A refused value is shown only when short and printable: it may be
                // a megabyte, or hold the very bytes that were refused.
                let shown = if value.len() <= 64 && !value.chars().any(super::text::is_forbidden)
                {
                    format!(" {value:?}")
                } else {
                    String::new()
                };
                let what_to_do = match rule {
                    TextRule::AgentId => "set agent_id in the agent's config",
                    TextRule::LabelName => "rename the label in the agent's config",
                    TextRule::Kind => "upgrade the collector to one that knows it",
                    TextRule::KubernetesLabel | TextRule::KubernetesSubdomain => {
                        "the kubelet names pods this way; check what the agent reads at its pod_resources_socket"
                    }
                    TextRule::Text => {
                        "fix the value where the agent reads it (free text is bounded by limits.max_string_bytes)"
                    }
                };
                Rejection::new(
                    kind,
                    format!("{}{shown} {e}; {what_to_do}", short(field.full_name())),
                )
            })
    }

    fn repeated(&mut self, field: RepeatedField, len: usize) -> Result<(), Rejection> {
        let b = bound(field, self.limits);
        if len > b.max {
            return Err(Rejection::new(
                b.kind,
                format!(
                    "{} holds {len} entries, more than the limit of {} ({})",
                    short(field.full_name()),
                    b.max,
                    b.limit
                ),
            ));
        }
        Ok(())
    }
}

/// Checks every string and list of a wire message against its rule and bound.
pub fn check<M: Walk>(message: &M, limits: &Limits) -> Result<(), Rejection> {
    message.walk(&mut Checker { limits })
}
