//! Every metric gpulse exposes, with its type and help text. Names are API: a rename
//! needs a migration note in docs/metrics.md.
//!
//! Naming follows Prometheus: `gpulse_<subsystem>_<name>_<base unit>[_total]`, ratios
//! in 0..1, temperatures in celsius, power in watts, energy in joules, clocks in hertz.

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// A metric's name, type and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

pub(crate) const fn gauge(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        kind: Kind::Gauge,
        help,
    }
}

pub(crate) const fn counter(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        kind: Kind::Counter,
        help,
    }
}

// Labels on every per-GPU series.
pub const LABEL_HOST: &str = "host";
pub const LABEL_GPU: &str = "gpu";
pub const LABEL_UUID: &str = "uuid";
pub const LABEL_MODEL: &str = "model";
// Who holds a GPU, as dcgm-exporter's Kubernetes mode names it.
pub const LABEL_NAMESPACE: &str = "namespace";
pub const LABEL_POD: &str = "pod";
pub const LABEL_CONTAINER: &str = "container";

pub const GPU_INFO: Def = gauge(
    "gpulse_gpu_info",
    "GPU inventory as labels (PCI bus id, driver, VBIOS); value is always 1.",
);
pub const GPU_LOST: Def = gauge(
    "gpulse_gpu_lost",
    "1 when the GPU stopped answering (fallen off the bus), else 0.",
);
pub const GPU_FINDING: Def = gauge(
    "gpulse_gpu_finding",
    "1 for each finding of the diagnosis rules (those of gpulse-agent diagnose) over the GPU's recent readings, by kind and severity; absent when none.",
);
pub const GPU_UTILIZATION: Def = gauge(
    "gpulse_gpu_utilization_ratio",
    "Share of the last sample period in which a kernel ran on the GPU (0..1).",
);
pub const GPU_MEMORY_UTILIZATION: Def = gauge(
    "gpulse_gpu_memory_utilization_ratio",
    "Share of the last sample period in which device memory was read or written (0..1).",
);
pub const GPU_SM_CLOCK: Def = gauge("gpulse_gpu_sm_clock_hertz", "Current SM clock in hertz.");
pub const GPU_SM_CLOCK_MAX: Def = gauge(
    "gpulse_gpu_sm_clock_max_hertz",
    "Maximum SM clock in hertz.",
);
pub const GPU_MEMORY_CLOCK: Def = gauge(
    "gpulse_gpu_memory_clock_hertz",
    "Current memory clock in hertz.",
);
pub const GPU_MEMORY_CLOCK_MAX: Def = gauge(
    "gpulse_gpu_memory_clock_max_hertz",
    "Maximum memory clock in hertz.",
);
pub const GPU_TEMPERATURE: Def = gauge(
    "gpulse_gpu_temperature_celsius",
    "GPU die temperature in degrees celsius.",
);
pub const GPU_SLOWDOWN_TEMPERATURE: Def = gauge(
    "gpulse_gpu_slowdown_temperature_celsius",
    "Temperature in degrees celsius at which the hardware starts slowing the GPU down.",
);
pub const GPU_SHUTDOWN_TEMPERATURE: Def = gauge(
    "gpulse_gpu_shutdown_temperature_celsius",
    "Temperature in degrees celsius at which the GPU shuts down to protect itself.",
);
pub const GPU_POWER_USAGE: Def = gauge(
    "gpulse_gpu_power_usage_watts",
    "Power draw in watts (a one-second average on Ampere and later).",
);
pub const GPU_POWER_LIMIT: Def = gauge(
    "gpulse_gpu_power_limit_watts",
    "Enforced power limit in watts; below the default limit means a cap, often the provider's.",
);
pub const GPU_POWER_DEFAULT_LIMIT: Def = gauge(
    "gpulse_gpu_power_default_limit_watts",
    "Default power limit of the board in watts.",
);
pub const GPU_ENERGY: Def = counter(
    "gpulse_gpu_energy_joules_total",
    "Energy consumed in joules since the driver loaded (resets when it reloads).",
);
pub const GPU_THROTTLE_ACTIVE: Def = gauge(
    "gpulse_gpu_throttle_active",
    "1 while the named clock-event (throttle) reason holds the clocks down, else 0.",
);
pub const GPU_MEMORY_USED: Def = gauge(
    "gpulse_gpu_memory_used_bytes",
    "Device memory in use in bytes.",
);
pub const GPU_MEMORY_TOTAL: Def = gauge(
    "gpulse_gpu_memory_total_bytes",
    "Device memory installed in bytes.",
);
pub const GPU_PCIE_GENERATION: Def = gauge(
    "gpulse_gpu_pcie_link_generation",
    "Current PCIe link generation (idle links train down to save power).",
);
pub const GPU_PCIE_MAX_GENERATION: Def = gauge(
    "gpulse_gpu_pcie_link_max_generation",
    "Maximum PCIe link generation of the GPU and its slot.",
);
pub const GPU_PCIE_WIDTH: Def = gauge(
    "gpulse_gpu_pcie_link_width_lanes",
    "Current PCIe link width in lanes.",
);
pub const GPU_PCIE_MAX_WIDTH: Def = gauge(
    "gpulse_gpu_pcie_link_max_width_lanes",
    "Maximum PCIe link width in lanes.",
);
pub const GPU_PCIE_REPLAYS: Def = counter(
    "gpulse_gpu_pcie_replays_total",
    "PCIe replays since the driver loaded: link-level retransmissions, a sign of a bad link.",
);
pub const GPU_FIELD_SUPPORTED: Def = gauge(
    "gpulse_gpu_field_supported",
    "1 when the host exposes the named field of this GPU, 0 when it hides it.",
);

pub const GPU_GRAPHICS_CLOCK: Def = gauge(
    "gpulse_gpu_graphics_clock_hertz",
    "Current graphics clock in hertz.",
);
pub const GPU_GRAPHICS_CLOCK_MAX: Def = gauge(
    "gpulse_gpu_graphics_clock_max_hertz",
    "Maximum graphics clock in hertz.",
);
pub const GPU_APPLICATIONS_SM_CLOCK: Def = gauge(
    "gpulse_gpu_applications_sm_clock_hertz",
    "SM application clock in force in hertz; below the maximum means clocks are locked by settings.",
);
pub const GPU_APPLICATIONS_MEMORY_CLOCK: Def = gauge(
    "gpulse_gpu_applications_memory_clock_hertz",
    "Memory application clock in force in hertz.",
);
pub const GPU_MEMORY_TEMPERATURE: Def = gauge(
    "gpulse_gpu_memory_temperature_celsius",
    "Device memory (HBM) temperature in degrees celsius.",
);
pub const GPU_MEMORY_MAX_TEMPERATURE: Def = gauge(
    "gpulse_gpu_memory_max_temperature_celsius",
    "Memory temperature in degrees celsius at which the GPU slows down.",
);
pub const GPU_MAX_OPERATING_TEMPERATURE: Def = gauge(
    "gpulse_gpu_max_operating_temperature_celsius",
    "GPU temperature in degrees celsius past which clocks may drop below base.",
);
pub const GPU_THROTTLE_SECONDS: Def = counter(
    "gpulse_gpu_throttle_seconds_total",
    "Seconds the clocks were held down, by reason (NVML performance policy).",
);
pub const GPU_THROTTLE_TIME_INFO: Def = gauge(
    "gpulse_gpu_throttle_time_info",
    "Where gpulse_gpu_throttle_seconds_total comes from (source: violation_status, field_values, mixed: violation status where the driver answered it and field values elsewhere, sampled_flags); value is always 1.",
);
pub const GPU_PCIE_TRANSMIT: Def = counter(
    "gpulse_gpu_pcie_transmit_bytes_total",
    "Bytes the GPU sent over PCIe.",
);
pub const GPU_PCIE_RECEIVE: Def = counter(
    "gpulse_gpu_pcie_receive_bytes_total",
    "Bytes the GPU received over PCIe.",
);
pub const GPU_NVLINK_LINKS: Def = gauge("gpulse_gpu_nvlink_links", "NVLink links the GPU has.");
pub const GPU_NVLINK_LINKS_DOWN: Def = gauge(
    "gpulse_gpu_nvlink_links_down",
    "NVLink links of the GPU that are not active.",
);
pub const GPU_NVLINK_TRANSMIT: Def = counter(
    "gpulse_gpu_nvlink_transmit_bytes_total",
    "Data bytes sent over all NVLink links of the GPU.",
);
pub const GPU_NVLINK_RECEIVE: Def = counter(
    "gpulse_gpu_nvlink_receive_bytes_total",
    "Data bytes received over all NVLink links of the GPU.",
);
pub const GPU_NVLINK_ERRORS: Def = counter(
    "gpulse_gpu_nvlink_errors_total",
    "NVLink errors over all links of the GPU, by type (crc_flit, crc_data, replay, recovery).",
);
pub const GPU_NVLINK_LINK_UP: Def = gauge(
    "gpulse_gpu_nvlink_link_up",
    "1 while the NVLink link is active, 0 when it is down (with nvlink_per_link).",
);
pub const GPU_NVLINK_LINK_TRANSMIT: Def = counter(
    "gpulse_gpu_nvlink_link_transmit_bytes_total",
    "Data bytes sent over the NVLink link (with nvlink_per_link).",
);
pub const GPU_NVLINK_LINK_RECEIVE: Def = counter(
    "gpulse_gpu_nvlink_link_receive_bytes_total",
    "Data bytes received over the NVLink link (with nvlink_per_link).",
);
pub const GPU_NVLINK_LINK_ERRORS: Def = counter(
    "gpulse_gpu_nvlink_link_errors_total",
    "NVLink errors on the link, by type (with nvlink_per_link).",
);
pub const GPU_ECC_ERRORS: Def = counter(
    "gpulse_gpu_ecc_errors_total",
    "ECC errors over the GPU's life, by type (corrected, uncorrected).",
);
pub const GPU_REMAPPED_ROWS: Def = gauge(
    "gpulse_gpu_remapped_rows",
    "Memory rows remapped, by type (correctable, uncorrectable).",
);
pub const GPU_ROW_REMAP_PENDING: Def = gauge(
    "gpulse_gpu_row_remap_pending",
    "1 when a row remap waits for the next GPU reset.",
);
pub const GPU_ROW_REMAP_FAILED: Def = gauge(
    "gpulse_gpu_row_remap_failed",
    "1 when a row remap failed: the GPU needs service.",
);
pub const GPU_RETIRED_PAGES: Def = gauge(
    "gpulse_gpu_retired_pages",
    "Memory pages retired, by cause (single_bit_ecc, double_bit_ecc).",
);
pub const GPU_RETIRED_PAGES_PENDING: Def = gauge(
    "gpulse_gpu_retired_pages_pending",
    "1 when pages wait to be retired at the next reboot.",
);
pub const GPU_XID_ERRORS: Def = counter(
    "gpulse_gpu_xid_errors_total",
    "XID errors the driver reported, by XID code.",
);
pub const GPU_SM_ACTIVE: Def = gauge(
    "gpulse_gpu_sm_active_ratio",
    "Share of time at least one warp was active on an SM, averaged over SMs (GPM, 0..1).",
);
pub const GPU_SM_OCCUPANCY: Def = gauge(
    "gpulse_gpu_sm_occupancy_ratio",
    "Resident warps as a share of the maximum, averaged over SMs (GPM, 0..1).",
);
pub const GPU_TENSOR_ACTIVE: Def = gauge(
    "gpulse_gpu_tensor_active_ratio",
    "Share of time any tensor pipe was active (GPM, 0..1).",
);
pub const GPU_DRAM_ACTIVE: Def = gauge(
    "gpulse_gpu_dram_active_ratio",
    "Share of time device memory was being read or written (GPM, 0..1).",
);
pub const GPU_PROCESSES: Def = gauge("gpulse_gpu_processes", "Compute processes holding the GPU.");
pub const GPU_PROCESS_MEMORY_USED: Def = gauge(
    "gpulse_gpu_process_memory_used_bytes",
    "Device memory a process holds in bytes, with its workload (kubernetes_pod, container, slurm_job, systemd_unit, process).",
);
pub const GPU_PROCESS_SM_UTILIZATION: Def = gauge(
    "gpulse_gpu_process_sm_utilization_ratio",
    "Share of the last interval a process had kernels on the SMs (0..1).",
);
pub const GPU_ECC_ENABLED: Def = gauge(
    "gpulse_gpu_ecc_enabled",
    "1 when ECC is enabled on the GPU.",
);
pub const GPU_MIG_ENABLED: Def = gauge("gpulse_gpu_mig_enabled", "1 when the GPU is in MIG mode.");
pub const GPU_MIG_INSTANCE_INFO: Def = gauge(
    "gpulse_gpu_mig_instance_info",
    "A MIG instance of the GPU (mig_uuid, gpu_instance, compute_instance); value is always 1.",
);
pub const GPU_ALLOCATION_INFO: Def = gauge(
    "gpulse_gpu_allocation_info",
    "The Kubernetes container holding the whole GPU (namespace, pod, container; empty when none does); value is always 1. Only for hosts whose agent knows the allocation. Join it to any GPU series with * on(host, uuid) group_left(namespace, pod, container).",
);
pub const GPU_MIG_ALLOCATION_INFO: Def = gauge(
    "gpulse_gpu_mig_allocation_info",
    "The Kubernetes container holding a MIG device of the GPU (mig_uuid, namespace, pod, container; empty when none does); value is always 1.",
);

pub const HOST_INFO: Def = gauge(
    "gpulse_host_info",
    "Host identity as labels (hostname, provider, region, zone, instance type, agent version, operator labels as label_<key>); value is always 1.",
);
pub const HOST_GPU_BACKEND_ERROR: Def = gauge(
    "gpulse_host_gpu_backend_error",
    "1 while the agent cannot read the host's GPUs, with the reason as a label (library_not_found, driver_not_loaded, no_permission, nvml_error).",
);
pub const AGENT_UP: Def = gauge(
    "gpulse_agent_up",
    "1 while the host's agent is connected, 0 after it went away (until its series expire).",
);
pub const AGENT_LAST_SEEN: Def = gauge(
    "gpulse_agent_last_seen_timestamp_seconds",
    "When the agent was last heard from, in seconds since the Unix epoch.",
);

/// Every per-host and per-GPU metric, in exposition order.
pub const FLEET: [Def; 73] = [
    HOST_INFO,
    HOST_GPU_BACKEND_ERROR,
    AGENT_UP,
    AGENT_LAST_SEEN,
    GPU_INFO,
    GPU_LOST,
    GPU_UTILIZATION,
    GPU_MEMORY_UTILIZATION,
    GPU_SM_CLOCK,
    GPU_SM_CLOCK_MAX,
    GPU_MEMORY_CLOCK,
    GPU_MEMORY_CLOCK_MAX,
    GPU_TEMPERATURE,
    GPU_SLOWDOWN_TEMPERATURE,
    GPU_SHUTDOWN_TEMPERATURE,
    GPU_POWER_USAGE,
    GPU_POWER_LIMIT,
    GPU_POWER_DEFAULT_LIMIT,
    GPU_ENERGY,
    GPU_THROTTLE_ACTIVE,
    GPU_MEMORY_USED,
    GPU_MEMORY_TOTAL,
    GPU_PCIE_GENERATION,
    GPU_PCIE_MAX_GENERATION,
    GPU_PCIE_WIDTH,
    GPU_PCIE_MAX_WIDTH,
    GPU_PCIE_REPLAYS,
    GPU_FIELD_SUPPORTED,
    GPU_GRAPHICS_CLOCK,
    GPU_GRAPHICS_CLOCK_MAX,
    GPU_APPLICATIONS_SM_CLOCK,
    GPU_APPLICATIONS_MEMORY_CLOCK,
    GPU_MEMORY_TEMPERATURE,
    GPU_MEMORY_MAX_TEMPERATURE,
    GPU_MAX_OPERATING_TEMPERATURE,
    GPU_THROTTLE_SECONDS,
    GPU_THROTTLE_TIME_INFO,
    GPU_PCIE_TRANSMIT,
    GPU_PCIE_RECEIVE,
    GPU_NVLINK_LINKS,
    GPU_NVLINK_LINKS_DOWN,
    GPU_NVLINK_TRANSMIT,
    GPU_NVLINK_RECEIVE,
    GPU_NVLINK_ERRORS,
    GPU_NVLINK_LINK_UP,
    GPU_NVLINK_LINK_TRANSMIT,
    GPU_NVLINK_LINK_RECEIVE,
    GPU_NVLINK_LINK_ERRORS,
    GPU_ECC_ERRORS,
    GPU_REMAPPED_ROWS,
    GPU_ROW_REMAP_PENDING,
    GPU_ROW_REMAP_FAILED,
    GPU_RETIRED_PAGES,
    GPU_RETIRED_PAGES_PENDING,
    GPU_XID_ERRORS,
    GPU_SM_ACTIVE,
    GPU_SM_OCCUPANCY,
    GPU_TENSOR_ACTIVE,
    GPU_DRAM_ACTIVE,
    GPU_PROCESSES,
    GPU_PROCESS_MEMORY_USED,
    GPU_PROCESS_SM_UTILIZATION,
    GPU_ECC_ENABLED,
    GPU_MIG_ENABLED,
    GPU_MIG_INSTANCE_INFO,
    GPU_ALLOCATION_INFO,
    GPU_MIG_ALLOCATION_INFO,
    GPU_FINDING,
    // What each agent reports of its own delivery (AGENT_DELIVERY), per host.
    AGENT_BATCHES_DROPPED,
    AGENT_BATCHES_REJECTED,
    AGENT_SPOOL_ERRORS,
    AGENT_BUFFERED_BATCHES,
    AGENT_SPOOL_BYTES,
];

// Cost, from the collector's ledger: per GPU, labels as the other GPU series.
pub const GPU_HOURLY_PRICE: Def = gauge(
    "gpulse_gpu_hourly_price_dollars",
    "Price of the GPU in US dollars per hour (catalogue list price, or bare-metal capex and operations); absent when unpriced.",
);
pub const GPU_PRICED: Def = gauge(
    "gpulse_gpu_priced",
    "1 when the GPU has a price, 0 when it is unpriced (its time is not costed, never counted as free).",
);
pub const GPU_COST: Def = counter(
    "gpulse_gpu_cost_dollars_total",
    "Estimated cost of the GPU's observed time in US dollars at list price (bare metal: plus energy).",
);
pub const GPU_IDLE_COST: Def = counter(
    "gpulse_gpu_idle_cost_dollars_total",
    "Estimated cost in US dollars of the time the GPU was idle or lost.",
);
pub const GPU_THROTTLE_LOSS: Def = counter(
    "gpulse_gpu_throttle_loss_dollars_total",
    "Estimated US dollars of busy time lost to the SM clock running below its maximum.",
);
pub const GPU_BUSY_SECONDS: Def = counter(
    "gpulse_gpu_busy_seconds_total",
    "Seconds the GPU was busy (utilisation of at least 1%).",
);
pub const GPU_OBSERVED_SECONDS: Def = counter(
    "gpulse_gpu_observed_seconds_total",
    "Seconds of GPU time observed by the ledger (gaps between snapshots are capped).",
);

/// The collector's per-GPU cost series, in exposition order.
pub const COST: [Def; 7] = [
    GPU_HOURLY_PRICE,
    GPU_PRICED,
    GPU_COST,
    GPU_IDLE_COST,
    GPU_THROTTLE_LOSS,
    GPU_BUSY_SECONDS,
    GPU_OBSERVED_SECONDS,
];

// The collector's own health.
pub const COLLECTOR_AGENTS_CONNECTED: Def = gauge(
    "gpulse_collector_agents_connected",
    "Agents with an open stream.",
);
pub const COLLECTOR_AGENTS_KNOWN: Def = gauge(
    "gpulse_collector_agents_known",
    "Agents whose series are exposed: connected, or gone for less than the expiry.",
);
pub const COLLECTOR_AGENTS_EXPIRED: Def = counter(
    "gpulse_collector_agents_expired_total",
    "Agents whose series were removed after they stayed away longer than the expiry.",
);
pub const COLLECTOR_AGENTS_EVICTED: Def = counter(
    "gpulse_collector_agents_evicted_total",
    "Departed agents forgotten before the expiry because more than limits.max_agents were remembered, the longest gone first.",
);
pub const COLLECTOR_BATCHES_RECEIVED: Def = counter(
    "gpulse_collector_batches_received_total",
    "Batches applied and committed to the ledger (duplicates, rejected batches and batches whose commit failed not included).",
);
pub const COLLECTOR_DUPLICATE_BATCHES: Def = counter(
    "gpulse_collector_duplicate_batches_total",
    "Batches acknowledged without being applied because a batch with the same or a higher seq of the same boot was already committed, before a reconnect or a collector restart.",
);
pub const COLLECTOR_GPU_SAMPLES_RECEIVED: Def = counter(
    "gpulse_collector_gpu_samples_received_total",
    "GPU samples in the batches counted by gpulse_collector_batches_received_total.",
);
pub const COLLECTOR_RECEIVED_BYTES: Def = counter(
    "gpulse_collector_received_bytes_total",
    "Protobuf-encoded bytes of agent messages received.",
);
pub const COLLECTOR_REJECTED_MESSAGES: Def = counter(
    "gpulse_collector_rejected_messages_total",
    "Agent messages refused, by reason; nothing stored was changed by them.",
);

// Remote write, per endpoint (label `endpoint`: its configured name or position).
pub const REMOTE_WRITE_SAMPLES_SENT: Def = counter(
    "gpulse_collector_remote_write_samples_sent_total",
    "Samples a remote-write endpoint accepted.",
);
pub const REMOTE_WRITE_SAMPLES_FAILED: Def = counter(
    "gpulse_collector_remote_write_samples_failed_total",
    "Samples in remote-write requests that failed (an error status or no answer), counted at each attempt.",
);
pub const REMOTE_WRITE_SAMPLES_RETRIED: Def = counter(
    "gpulse_collector_remote_write_samples_retried_total",
    "Samples sent again after a 5xx, a 429 or no answer.",
);
pub const REMOTE_WRITE_SAMPLES_DROPPED: Def = counter(
    "gpulse_collector_remote_write_samples_dropped_total",
    "Samples given up, by reason: queue_full (oldest dropped to make room), rejected (a 4xx other than 429), shutdown (queued when the collector stopped).",
);
pub const REMOTE_WRITE_QUEUE_SAMPLES: Def = gauge(
    "gpulse_collector_remote_write_queue_samples",
    "Samples waiting in a remote-write endpoint's queue.",
);
pub const REMOTE_WRITE_QUEUE_CAPACITY: Def = gauge(
    "gpulse_collector_remote_write_queue_capacity_samples",
    "Samples a remote-write endpoint's queue holds at most (queue_capacity).",
);
pub const REMOTE_WRITE_LAST_SUCCESS: Def = gauge(
    "gpulse_collector_remote_write_last_success_timestamp_seconds",
    "Unix time in seconds of a remote-write endpoint's last accepted request; 0 before the first.",
);

// The listeners (label `listener`: grpc or http) and the HTTP handlers.
pub const COLLECTOR_CONNECTIONS_OPEN: Def = gauge(
    "gpulse_collector_connections_open",
    "Connections a listener holds open now, counted against its max_connections.",
);
pub const COLLECTOR_CONNECTIONS_REFUSED: Def = counter(
    "gpulse_collector_connections_refused_total",
    "Connections closed on arrival because the listener already held max_connections.",
);
pub const COLLECTOR_IDLE_CONNECTIONS_CLOSED: Def = counter(
    "gpulse_collector_idle_connections_closed_total",
    "Connections closed because nothing was sent or received on them for idle_timeout.",
);
pub const COLLECTOR_ACCEPT_ERRORS: Def = counter(
    "gpulse_collector_accept_errors_total",
    "Failed accepts by reason: fd_exhausted (EMFILE, ENFILE; the listener backs off) or other.",
);
pub const COLLECTOR_HTTP_PANICS: Def = counter(
    "gpulse_collector_http_panics_total",
    "HTTP requests whose handler panicked; each was answered 500 and logged.",
);

// The agent's own health (on the agent's optional /metrics).
pub const AGENT_BATCHES_SENT: Def = counter(
    "gpulse_agent_batches_sent_total",
    "Batches written to the collector stream, replays included.",
);
pub const AGENT_BATCHES_ACKED: Def = counter(
    "gpulse_agent_batches_acked_total",
    "Batches the collector acknowledged.",
);
pub const AGENT_BATCHES_REJECTED: Def = counter(
    "gpulse_agent_batches_rejected_total",
    "Batches the collector refused as invalid; they are dropped, not resent.",
);
pub const AGENT_BATCHES_DROPPED: Def = counter(
    "gpulse_agent_batches_dropped_total",
    "Unacknowledged batches dropped because the buffer or spool was full (oldest first), or unreadable from the spool.",
);
pub const AGENT_BUFFERED_BATCHES: Def = gauge(
    "gpulse_agent_buffered_batches",
    "Batches waiting for an acknowledgement.",
);
pub const AGENT_SPOOL_BYTES: Def = gauge(
    "gpulse_agent_spool_bytes",
    "Bytes the disk spool of unacknowledged batches takes (0 without spool_dir).",
);
pub const AGENT_SPOOL_ERRORS: Def = counter(
    "gpulse_agent_spool_errors_total",
    "Disk spool writes, reads or acknowledgements that failed; see the agent's log.",
);
pub const AGENT_CONNECTS: Def = counter(
    "gpulse_agent_connects_total",
    "Streams opened to the collector, by result (ok, error).",
);
pub const AGENT_CONNECTED: Def = gauge(
    "gpulse_agent_connected",
    "1 while the agent has an open stream to the collector.",
);
pub const BUILD_INFO: Def = gauge(
    "gpulse_build_info",
    "Always 1; the labels say which version, git revision and build date this binary is.",
);
pub const AGENT_CONNECTION_ERROR: Def = gauge(
    "gpulse_agent_connection_error",
    "1 for why the agent is not connected to the collector (dns, connection_refused, timeout, tls_to_plaintext, plaintext_to_tls, certificate, not_grpc, unauthenticated, rejected, stream_lost, other); 0 while connected.",
);
pub const AGENT_KUBELET_STATE: Def = gauge(
    "gpulse_agent_kubelet_state",
    "1 for what the agent knows of the kubelet's pod-resources API (starting, absent: not a Kubernetes node, answering, unreachable, refused); 0 for the others.",
);
pub const AGENT_SAMPLE_DURATION: Def = gauge(
    "gpulse_agent_sample_duration_seconds",
    "How long the last reading of all GPUs took, in seconds.",
);

/// The collector's self-metrics.
pub const COLLECTOR: [Def; 21] = [
    COLLECTOR_AGENTS_CONNECTED,
    COLLECTOR_AGENTS_KNOWN,
    COLLECTOR_AGENTS_EXPIRED,
    COLLECTOR_AGENTS_EVICTED,
    COLLECTOR_BATCHES_RECEIVED,
    COLLECTOR_DUPLICATE_BATCHES,
    COLLECTOR_GPU_SAMPLES_RECEIVED,
    COLLECTOR_RECEIVED_BYTES,
    COLLECTOR_REJECTED_MESSAGES,
    REMOTE_WRITE_SAMPLES_SENT,
    REMOTE_WRITE_SAMPLES_FAILED,
    REMOTE_WRITE_SAMPLES_RETRIED,
    REMOTE_WRITE_SAMPLES_DROPPED,
    REMOTE_WRITE_QUEUE_SAMPLES,
    REMOTE_WRITE_QUEUE_CAPACITY,
    REMOTE_WRITE_LAST_SUCCESS,
    COLLECTOR_CONNECTIONS_OPEN,
    COLLECTOR_CONNECTIONS_REFUSED,
    COLLECTOR_IDLE_CONNECTIONS_CLOSED,
    COLLECTOR_ACCEPT_ERRORS,
    COLLECTOR_HTTP_PANICS,
];

/// The agent's self-metrics.
pub const AGENT: [Def; 12] = [
    AGENT_BATCHES_SENT,
    AGENT_BATCHES_ACKED,
    AGENT_BATCHES_REJECTED,
    AGENT_BATCHES_DROPPED,
    AGENT_BUFFERED_BATCHES,
    AGENT_SPOOL_BYTES,
    AGENT_SPOOL_ERRORS,
    AGENT_CONNECTS,
    AGENT_CONNECTED,
    AGENT_CONNECTION_ERROR,
    AGENT_KUBELET_STATE,
    AGENT_SAMPLE_DURATION,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family once: the agent's delivery counters are both its own
    /// self-metrics and, per host, the collector's.
    fn all() -> impl Iterator<Item = Def> {
        FLEET
            .into_iter()
            .chain(COST)
            .chain(COLLECTOR)
            .chain([BUILD_INFO])
            .chain(
                AGENT
                    .into_iter()
                    .filter(|a| !FLEET.iter().any(|f| f.name == a.name)),
            )
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/metrics.md");
        for def in all() {
            assert!(
                doc.contains(&format!("`{}`", def.name)),
                "docs/metrics.md does not document {}",
                def.name
            );
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        let mut names: Vec<&str> = all().map(|d| d.name).collect();
        for d in all() {
            assert!(d.name.starts_with("gpulse_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            for banned in [
                "_milliwatts",
                "_percent",
                "_mhz",
                "_millijoules",
                "_celcius",
            ] {
                assert!(!d.name.contains(banned), "{}: use base units", d.name);
            }
            assert!(d.help.ends_with('.'), "{}: help is a sentence", d.name);
        }
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate metric names");
    }
}
