//! Conversions of the deeper telemetry (throttle time, NVLink, memory health, XID,
//! GPM, processes, MIG) between the wire and the domain.

use gpulse_gpu::health::{
    GpmActivity, MigInstance, NvLinkSample, ProcessSample, RemappedRows, RetiredPages,
    ThrottlePolicy, ThrottleTime, ThrottleTimeSource, WorkloadKind,
};
use gpulse_gpu::{Allocation, DeviceHolder};

use crate::{ConversionError, v1};

fn policy_to_wire(p: ThrottlePolicy) -> v1::ThrottlePolicy {
    match p {
        ThrottlePolicy::Power => v1::ThrottlePolicy::Power,
        ThrottlePolicy::Thermal => v1::ThrottlePolicy::Thermal,
        ThrottlePolicy::SyncBoost => v1::ThrottlePolicy::SyncBoost,
        ThrottlePolicy::BoardLimit => v1::ThrottlePolicy::BoardLimit,
        ThrottlePolicy::LowUtilization => v1::ThrottlePolicy::LowUtilization,
        ThrottlePolicy::Reliability => v1::ThrottlePolicy::Reliability,
        ThrottlePolicy::TotalAppClocks => v1::ThrottlePolicy::TotalAppClocks,
        ThrottlePolicy::TotalBaseClocks => v1::ThrottlePolicy::TotalBaseClocks,
    }
}

fn policy_from_wire(raw: i32) -> Result<ThrottlePolicy, ConversionError> {
    let unknown = ConversionError::UnknownEnum {
        what: "throttle policy",
        value: raw,
    };
    Ok(
        match v1::ThrottlePolicy::try_from(raw).map_err(|_| unknown.clone())? {
            v1::ThrottlePolicy::Unspecified => return Err(unknown),
            v1::ThrottlePolicy::Power => ThrottlePolicy::Power,
            v1::ThrottlePolicy::Thermal => ThrottlePolicy::Thermal,
            v1::ThrottlePolicy::SyncBoost => ThrottlePolicy::SyncBoost,
            v1::ThrottlePolicy::BoardLimit => ThrottlePolicy::BoardLimit,
            v1::ThrottlePolicy::LowUtilization => ThrottlePolicy::LowUtilization,
            v1::ThrottlePolicy::Reliability => ThrottlePolicy::Reliability,
            v1::ThrottlePolicy::TotalAppClocks => ThrottlePolicy::TotalAppClocks,
            v1::ThrottlePolicy::TotalBaseClocks => ThrottlePolicy::TotalBaseClocks,
        },
    )
}

pub(crate) fn throttle_time_to_wire(t: &ThrottleTime) -> v1::ThrottleTime {
    v1::ThrottleTime {
        source: match t.source {
            ThrottleTimeSource::ViolationStatus | ThrottleTimeSource::Mixed => {
                v1::ThrottleTimeSource::ViolationStatus
            }
            ThrottleTimeSource::FieldValues => v1::ThrottleTimeSource::FieldValues,
            ThrottleTimeSource::SampledFlags => v1::ThrottleTimeSource::SampledFlags,
        } as i32,
        some_from_field_values: t.source == ThrottleTimeSource::Mixed,
        policies: t
            .nanoseconds
            .iter()
            .map(|(p, ns)| v1::ThrottlePolicyTime {
                policy: policy_to_wire(*p) as i32,
                nanoseconds: *ns,
            })
            .collect(),
    }
}

pub(crate) fn throttle_time_from_wire(
    t: v1::ThrottleTime,
) -> Result<ThrottleTime, ConversionError> {
    let source = match v1::ThrottleTimeSource::try_from(t.source) {
        Ok(v1::ThrottleTimeSource::ViolationStatus) if t.some_from_field_values => {
            ThrottleTimeSource::Mixed
        }
        Ok(v1::ThrottleTimeSource::ViolationStatus) => ThrottleTimeSource::ViolationStatus,
        Ok(v1::ThrottleTimeSource::FieldValues) => ThrottleTimeSource::FieldValues,
        Ok(v1::ThrottleTimeSource::SampledFlags) => ThrottleTimeSource::SampledFlags,
        Ok(v1::ThrottleTimeSource::Unspecified) | Err(_) => {
            return Err(ConversionError::UnknownEnum {
                what: "throttle time source",
                value: t.source,
            });
        }
    };
    Ok(ThrottleTime {
        source,
        nanoseconds: t
            .policies
            .into_iter()
            .map(|p| Ok((policy_from_wire(p.policy)?, p.nanoseconds)))
            .collect::<Result<_, ConversionError>>()?,
    })
}

pub(crate) fn nvlinks_to_wire(links: &[NvLinkSample]) -> v1::NvLinks {
    v1::NvLinks {
        links: links
            .iter()
            .map(|l| v1::NvLink {
                link: l.link,
                active: l.active,
                tx_bytes: l.tx_bytes,
                rx_bytes: l.rx_bytes,
                crc_flit_errors: l.crc_flit_errors,
                crc_data_errors: l.crc_data_errors,
                replay_errors: l.replay_errors,
                recovery_errors: l.recovery_errors,
            })
            .collect(),
    }
}

pub(crate) fn nvlinks_from_wire(links: v1::NvLinks) -> Vec<NvLinkSample> {
    let mut out: Vec<NvLinkSample> = links
        .links
        .into_iter()
        .map(|l| NvLinkSample {
            link: l.link,
            active: l.active,
            tx_bytes: l.tx_bytes,
            rx_bytes: l.rx_bytes,
            crc_flit_errors: l.crc_flit_errors,
            crc_data_errors: l.crc_data_errors,
            replay_errors: l.replay_errors,
            recovery_errors: l.recovery_errors,
        })
        .collect();
    // Collected in place over the decoder's list, which grew by doubling (32 slots for
    // an H100's 18 links): the collector keeps the list as long as the reading.
    out.shrink_to_fit();
    out
}

pub(crate) fn remapped_to_wire(r: RemappedRows) -> v1::RemappedRows {
    v1::RemappedRows {
        correctable: r.correctable,
        uncorrectable: r.uncorrectable,
        pending: r.pending,
        failure: r.failure,
    }
}

pub(crate) fn remapped_from_wire(r: v1::RemappedRows) -> RemappedRows {
    RemappedRows {
        correctable: r.correctable,
        uncorrectable: r.uncorrectable,
        pending: r.pending,
        failure: r.failure,
    }
}

pub(crate) fn retired_to_wire(r: RetiredPages) -> v1::RetiredPages {
    v1::RetiredPages {
        single_bit_ecc: r.single_bit_ecc,
        double_bit_ecc: r.double_bit_ecc,
        pending: r.pending,
    }
}

pub(crate) fn retired_from_wire(r: v1::RetiredPages) -> RetiredPages {
    RetiredPages {
        single_bit_ecc: r.single_bit_ecc,
        double_bit_ecc: r.double_bit_ecc,
        pending: r.pending,
    }
}

pub(crate) fn xids_to_wire(x: &[(u64, u64)]) -> v1::XidCounts {
    v1::XidCounts {
        counts: x
            .iter()
            .map(|(xid, count)| v1::XidCount {
                xid: *xid,
                count: *count,
            })
            .collect(),
    }
}

pub(crate) fn xids_from_wire(x: v1::XidCounts) -> Vec<(u64, u64)> {
    x.counts.into_iter().map(|c| (c.xid, c.count)).collect()
}

pub(crate) fn gpm_to_wire(g: GpmActivity) -> v1::Gpm {
    v1::Gpm {
        sm_active: g.sm_active,
        sm_occupancy: g.sm_occupancy,
        tensor_active: g.tensor_active,
        dram_active: g.dram_active,
    }
}

pub(crate) fn gpm_from_wire(g: v1::Gpm) -> GpmActivity {
    GpmActivity {
        sm_active: g.sm_active,
        sm_occupancy: g.sm_occupancy,
        tensor_active: g.tensor_active,
        dram_active: g.dram_active,
    }
}

fn workload_to_wire(k: WorkloadKind) -> v1::WorkloadKind {
    match k {
        WorkloadKind::KubernetesPod => v1::WorkloadKind::KubernetesPod,
        WorkloadKind::Container => v1::WorkloadKind::Container,
        WorkloadKind::SlurmJob => v1::WorkloadKind::SlurmJob,
        WorkloadKind::SystemdUnit => v1::WorkloadKind::SystemdUnit,
        WorkloadKind::Process => v1::WorkloadKind::Process,
    }
}

pub(crate) fn processes_to_wire(p: &[ProcessSample]) -> v1::Processes {
    v1::Processes {
        processes: p
            .iter()
            .map(|p| v1::Process {
                pid: p.pid,
                used_memory_bytes: p.used_memory_bytes,
                sm_utilization_percent: p.sm_utilization_percent,
                workload_kind: workload_to_wire(p.workload_kind) as i32,
                workload: p.workload.clone(),
            })
            .collect(),
    }
}

pub(crate) fn processes_from_wire(p: v1::Processes) -> Result<Vec<ProcessSample>, ConversionError> {
    p.processes
        .into_iter()
        .map(|p| {
            let workload_kind = match v1::WorkloadKind::try_from(p.workload_kind) {
                Ok(v1::WorkloadKind::KubernetesPod) => WorkloadKind::KubernetesPod,
                Ok(v1::WorkloadKind::Container) => WorkloadKind::Container,
                Ok(v1::WorkloadKind::SlurmJob) => WorkloadKind::SlurmJob,
                Ok(v1::WorkloadKind::SystemdUnit) => WorkloadKind::SystemdUnit,
                Ok(v1::WorkloadKind::Process) => WorkloadKind::Process,
                Ok(v1::WorkloadKind::Unspecified) | Err(_) => {
                    return Err(ConversionError::UnknownEnum {
                        what: "workload kind",
                        value: p.workload_kind,
                    });
                }
            };
            Ok(ProcessSample {
                pid: p.pid,
                used_memory_bytes: p.used_memory_bytes,
                sm_utilization_percent: p.sm_utilization_percent,
                workload_kind,
                workload: p.workload,
            })
        })
        .collect()
}

pub(crate) fn mig_to_wire(m: &MigInstance) -> v1::MigInstance {
    v1::MigInstance {
        uuid: m.uuid.clone(),
        gpu_instance_id: m.gpu_instance_id,
        compute_instance_id: m.compute_instance_id,
        memory_total_bytes: m.memory_total_bytes,
    }
}

pub(crate) fn mig_from_wire(m: v1::MigInstance) -> MigInstance {
    MigInstance {
        uuid: m.uuid,
        gpu_instance_id: m.gpu_instance_id,
        compute_instance_id: m.compute_instance_id,
        memory_total_bytes: m.memory_total_bytes,
    }
}

pub(crate) fn allocation_to_wire(a: &Allocation) -> v1::Allocation {
    v1::Allocation {
        holders: a
            .holders
            .iter()
            .map(|h| v1::DeviceHolder {
                device_uuid: h.device_uuid.clone(),
                namespace: h.namespace.clone(),
                pod: h.pod.clone(),
                container: h.container.clone(),
            })
            .collect(),
    }
}

/// Kept as sent (not sorted or cut): the collector's validation refuses a repeated
/// holder or an overlong list rather than hiding it.
pub(crate) fn allocation_from_wire(a: v1::Allocation) -> Allocation {
    Allocation {
        holders: a
            .holders
            .into_iter()
            .map(|h| DeviceHolder {
                device_uuid: h.device_uuid,
                namespace: h.namespace,
                pod: h.pod,
                container: h.container,
            })
            .collect(),
    }
}
