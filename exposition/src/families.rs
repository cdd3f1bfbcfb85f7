//! Host views to Prometheus metric families, built at scrape time from the views
//! themselves: a host that is dropped from the source disappears from the next scrape,
//! with no series to unregister.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use gpulse_gpu::{DeviceSample, DeviceState, Field, FieldStatus, ThrottleReasons};

use crate::dcgm::{self, DcgmCompat};
use crate::names::{self, Def, Kind};
use crate::{GpuView, HostView};

/// Whatever holds host views: the collector's fleet state, or the agent's own host.
pub trait HostSource: Send + Sync {
    /// Calls `f` once for each host, under whatever lock the source needs.
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView));
}

impl<T: HostSource + ?Sized> HostSource for std::sync::Arc<T> {
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
        (**self).for_each_host(f)
    }
}

/// A `prometheus::core::Collector` over a [`HostSource`].
#[derive(Debug)]
pub struct FleetCollector<S> {
    source: S,
    dcgm: DcgmCompat,
}

impl<S: HostSource> FleetCollector<S> {
    /// gpulse's names only.
    pub fn new(source: S) -> Self {
        Self::with_dcgm_compat(source, DcgmCompat::Off)
    }

    /// gpulse's names, dcgm-exporter's, or both, as `dcgm` says.
    pub fn with_dcgm_compat(source: S, dcgm: DcgmCompat) -> Self {
        FleetCollector { source, dcgm }
    }
}

impl<S: HostSource> Collector for FleetCollector<S> {
    fn desc(&self) -> Vec<&Desc> {
        // Series come and go with hosts; an unchecked collector has no fixed descriptors.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Families::new(&names::FLEET);
        out.gpus = self.dcgm.gpulse_gpus();
        let mut dcgm_out = self.dcgm.dcgm().then(|| Families::new(dcgm::defs()));
        self.source.for_each_host(&mut |host| {
            out.add_host(host);
            if let Some(d) = dcgm_out.as_mut() {
                dcgm::add_host(d, host);
            }
        });
        let mut families = out.finish();
        if let Some(d) = dcgm_out {
            families.extend(d.finish());
        }
        families
    }
}

pub(crate) fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// Metrics collected so far, one bucket per metric definition, in the order of `defs`.
pub(crate) struct Families {
    defs: &'static [Def],
    buckets: Vec<Vec<Metric>>,
    /// Whether per-GPU series are added (off when the DCGM view replaces them).
    gpus: bool,
}

/// Builds a GPU's labels plus extra pairs.
type LabelsWith<'a> = dyn Fn(&[(&str, &str)]) -> Vec<LabelPair> + 'a;

/// Converts NVML units to the base units in metric names.
const HZ_PER_MHZ: f64 = 1e6;
const WATTS_PER_MILLIWATT: f64 = 1e-3;
const JOULES_PER_MILLIJOULE: f64 = 1e-3;

impl Families {
    pub(crate) fn new(defs: &'static [Def]) -> Self {
        Families {
            defs,
            buckets: vec![Vec::new(); defs.len()],
            gpus: true,
        }
    }

    pub(crate) fn push(&mut self, def: &Def, labels: Vec<LabelPair>, value: f64) {
        let i = self
            .defs
            .iter()
            .position(|d| d.name == def.name)
            .expect("every definition used is in the family list");
        let mut m = Metric::from_label(labels);
        match def.kind {
            Kind::Gauge => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            Kind::Counter => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
        }
        self.buckets[i].push(m);
    }

    fn add_host(&mut self, host: &HostView) {
        let id = &host.identity;
        let host_label = || vec![label(names::LABEL_HOST, &id.agent_id)];
        let p = &id.provider;
        let mut info = vec![
            label(names::LABEL_HOST, &id.agent_id),
            label("hostname", &id.hostname),
            label("provider", &p.provider.value),
            label("region", &p.region.value),
            label("zone", &p.zone.value),
            label("instance_type", &p.instance_type.value),
            label("agent_version", &id.agent_version),
            label("os", &id.facts.os),
            label("kernel", &id.facts.kernel),
        ];
        info.extend(
            id.labels
                .iter()
                .map(|(k, v)| label(&format!("label_{k}"), v)),
        );
        self.push(&names::HOST_INFO, info, 1.0);
        if !id.gpu_backend_error.is_empty() {
            let mut l = host_label();
            l.push(label("reason", &id.gpu_backend_error));
            self.push(&names::HOST_GPU_BACKEND_ERROR, l, 1.0);
        }
        self.push(
            &names::AGENT_UP,
            host_label(),
            f64::from(u8::from(host.connected)),
        );
        self.push(
            &names::AGENT_LAST_SEEN,
            host_label(),
            host.last_seen_unix_ms as f64 / 1000.0,
        );
        if !self.gpus {
            return;
        }
        for gpu in &host.gpus {
            self.add_gpu(&id.agent_id, gpu);
        }
        // Which fields the host hides, once per host rather than per GPU: a provider
        // hides a field on all its GPUs, and per-GPU series would multiply the cost.
        let answering: Vec<_> = host
            .gpus
            .iter()
            .filter_map(|g| g.latest.as_ref())
            .filter(|s| s.state != DeviceState::Lost)
            .collect();
        if !answering.is_empty() {
            for field in Field::ALL {
                let supported = answering
                    .iter()
                    .all(|s| s.field_status(field) != FieldStatus::Unsupported);
                let mut l = host_label();
                l.push(label("field", field.name()));
                self.push(
                    &names::GPU_FIELD_SUPPORTED,
                    l,
                    f64::from(u8::from(supported)),
                );
            }
        }
    }

    fn add_gpu(&mut self, host: &str, gpu: &GpuView) {
        let d = &gpu.info;
        let index = d.index.to_string();
        let base = || {
            vec![
                label(names::LABEL_HOST, host),
                label(names::LABEL_GPU, &index),
                label(names::LABEL_UUID, &d.uuid),
                label(names::LABEL_MODEL, &d.model),
            ]
        };
        let with = |extra: &[(&str, &str)]| {
            let mut l = base();
            l.extend(extra.iter().map(|(k, v)| label(k, v)));
            l
        };
        self.push(
            &names::GPU_INFO,
            with(&[
                ("pci_bus_id", &d.pci_bus_id),
                ("driver_version", &d.driver_version),
                ("vbios_version", &d.vbios_version),
                ("architecture", &d.architecture),
            ]),
            1.0,
        );
        for m in &d.mig_instances {
            let gi = m.gpu_instance_id.map(|v| v.to_string()).unwrap_or_default();
            let ci = m
                .compute_instance_id
                .map(|v| v.to_string())
                .unwrap_or_default();
            self.push(
                &names::GPU_MIG_INSTANCE_INFO,
                with(&[
                    ("mig_uuid", &m.uuid),
                    ("gpu_instance", &gi),
                    ("compute_instance", &ci),
                ]),
                1.0,
            );
        }
        let inventory = [
            (
                &names::GPU_MEMORY_TOTAL,
                d.memory_total_bytes.map(|v| v as f64),
            ),
            (
                &names::GPU_SM_CLOCK_MAX,
                d.max_sm_clock_mhz.map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_MEMORY_CLOCK_MAX,
                d.max_memory_clock_mhz.map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_POWER_DEFAULT_LIMIT,
                d.default_power_limit_milliwatts
                    .map(|v| f64::from(v) * WATTS_PER_MILLIWATT),
            ),
            (
                &names::GPU_SLOWDOWN_TEMPERATURE,
                d.slowdown_temperature_celsius.map(f64::from),
            ),
            (
                &names::GPU_SHUTDOWN_TEMPERATURE,
                d.shutdown_temperature_celsius.map(f64::from),
            ),
            (
                &names::GPU_PCIE_MAX_GENERATION,
                d.max_pcie_generation.map(f64::from),
            ),
            (&names::GPU_PCIE_MAX_WIDTH, d.max_pcie_width.map(f64::from)),
            (
                &names::GPU_GRAPHICS_CLOCK_MAX,
                d.max_graphics_clock_mhz.map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_MEMORY_MAX_TEMPERATURE,
                d.memory_max_temperature_celsius.map(f64::from),
            ),
            (
                &names::GPU_MAX_OPERATING_TEMPERATURE,
                d.gpu_max_operating_temperature_celsius.map(f64::from),
            ),
            (
                &names::GPU_ECC_ENABLED,
                d.ecc_enabled.map(|b| f64::from(u8::from(b))),
            ),
            (
                &names::GPU_MIG_ENABLED,
                d.mig_enabled.map(|b| f64::from(u8::from(b))),
            ),
        ];
        for (def, value) in inventory {
            if let Some(v) = value {
                self.push(def, base(), v);
            }
        }
        let Some(s) = &gpu.latest else { return };
        let lost = s.state == DeviceState::Lost;
        self.push(&names::GPU_LOST, base(), f64::from(u8::from(lost)));
        if lost {
            // A lost GPU says nothing about its fields: no values, no support claims.
            return;
        }
        let readings = [
            (
                &names::GPU_UTILIZATION,
                s.gpu_utilization_percent
                    .value()
                    .map(|v| f64::from(v) / 100.0),
            ),
            (
                &names::GPU_MEMORY_UTILIZATION,
                s.memory_utilization_percent
                    .value()
                    .map(|v| f64::from(v) / 100.0),
            ),
            (
                &names::GPU_SM_CLOCK,
                s.sm_clock_mhz.value().map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_MEMORY_CLOCK,
                s.memory_clock_mhz
                    .value()
                    .map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_TEMPERATURE,
                s.temperature_celsius.value().map(f64::from),
            ),
            (
                &names::GPU_POWER_USAGE,
                s.power_usage_milliwatts
                    .value()
                    .map(|v| f64::from(v) * WATTS_PER_MILLIWATT),
            ),
            (
                &names::GPU_POWER_LIMIT,
                s.power_limit_milliwatts
                    .value()
                    .map(|v| f64::from(v) * WATTS_PER_MILLIWATT),
            ),
            (
                &names::GPU_ENERGY,
                s.energy_millijoules
                    .value()
                    .map(|v| v as f64 * JOULES_PER_MILLIJOULE),
            ),
            (
                &names::GPU_MEMORY_USED,
                s.memory_used_bytes.value().map(|v| v as f64),
            ),
            (
                &names::GPU_PCIE_GENERATION,
                s.pcie_generation.value().map(f64::from),
            ),
            (&names::GPU_PCIE_WIDTH, s.pcie_width.value().map(f64::from)),
            (
                &names::GPU_PCIE_REPLAYS,
                s.pcie_replays.value().map(|v| v as f64),
            ),
            (
                &names::GPU_GRAPHICS_CLOCK,
                s.graphics_clock_mhz
                    .value()
                    .map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_APPLICATIONS_SM_CLOCK,
                s.applications_sm_clock_mhz
                    .value()
                    .map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_APPLICATIONS_MEMORY_CLOCK,
                s.applications_memory_clock_mhz
                    .value()
                    .map(|v| f64::from(v) * HZ_PER_MHZ),
            ),
            (
                &names::GPU_MEMORY_TEMPERATURE,
                s.memory_temperature_celsius.value().map(f64::from),
            ),
            (&names::GPU_SM_ACTIVE, s.gpm.value().map(|g| g.sm_active)),
            (
                &names::GPU_SM_OCCUPANCY,
                s.gpm.value().map(|g| g.sm_occupancy),
            ),
            (
                &names::GPU_TENSOR_ACTIVE,
                s.gpm.value().map(|g| g.tensor_active),
            ),
            (
                &names::GPU_DRAM_ACTIVE,
                s.gpm.value().map(|g| g.dram_active),
            ),
            (
                &names::GPU_PCIE_TRANSMIT,
                s.pcie_tx_bytes.value().map(|v| v as f64),
            ),
            (
                &names::GPU_PCIE_RECEIVE,
                s.pcie_rx_bytes.value().map(|v| v as f64),
            ),
            (
                &names::GPU_PROCESSES,
                s.processes.get().map(|p| p.len() as f64),
            ),
        ];
        for (def, value) in readings {
            if let Some(v) = value {
                self.push(def, base(), v);
            }
        }
        if let Some(reasons) = s.throttle_reasons.value() {
            for (flag, name) in ThrottleReasons::NAMED {
                self.push(
                    &names::GPU_THROTTLE_ACTIVE,
                    with(&[("reason", name)]),
                    f64::from(u8::from(reasons.contains(flag))),
                );
            }
        }
        self.add_health(&with, s);
    }

    /// Throttle time, interconnect, memory health, XID and processes of one GPU.
    fn add_health(&mut self, with: &LabelsWith<'_>, s: &DeviceSample) {
        let flag = |b: bool| f64::from(u8::from(b));
        if let Some(t) = s.throttle_time.get() {
            self.push(
                &names::GPU_THROTTLE_TIME_INFO,
                with(&[("source", t.source.name())]),
                1.0,
            );
            for (policy, ns) in &t.nanoseconds {
                self.push(
                    &names::GPU_THROTTLE_SECONDS,
                    with(&[("reason", policy.name())]),
                    *ns as f64 / 1e9,
                );
            }
        }
        if let Some(links) = s.nvlinks.get() {
            for l in links {
                let link = l.link.to_string();
                self.push(
                    &names::GPU_NVLINK_UP,
                    with(&[("link", &link)]),
                    flag(l.active),
                );
                let counters = [
                    (&names::GPU_NVLINK_TRANSMIT, None, l.tx_bytes),
                    (&names::GPU_NVLINK_RECEIVE, None, l.rx_bytes),
                    (
                        &names::GPU_NVLINK_ERRORS,
                        Some("crc_flit"),
                        l.crc_flit_errors,
                    ),
                    (
                        &names::GPU_NVLINK_ERRORS,
                        Some("crc_data"),
                        l.crc_data_errors,
                    ),
                    (&names::GPU_NVLINK_ERRORS, Some("replay"), l.replay_errors),
                    (
                        &names::GPU_NVLINK_ERRORS,
                        Some("recovery"),
                        l.recovery_errors,
                    ),
                ];
                for (def, kind, value) in counters {
                    if let Some(v) = value {
                        let labels = match kind {
                            Some(k) => with(&[("link", &link), ("type", k)]),
                            None => with(&[("link", &link)]),
                        };
                        self.push(def, labels, v as f64);
                    }
                }
            }
        }
        for (kind, value) in [
            ("corrected", s.ecc_corrected_errors.value()),
            ("uncorrected", s.ecc_uncorrected_errors.value()),
        ] {
            if let Some(v) = value {
                self.push(&names::GPU_ECC_ERRORS, with(&[("type", kind)]), v as f64);
            }
        }
        if let Some(r) = s.remapped_rows.value() {
            self.push(
                &names::GPU_REMAPPED_ROWS,
                with(&[("type", "correctable")]),
                f64::from(r.correctable),
            );
            self.push(
                &names::GPU_REMAPPED_ROWS,
                with(&[("type", "uncorrectable")]),
                f64::from(r.uncorrectable),
            );
            self.push(&names::GPU_ROW_REMAP_PENDING, with(&[]), flag(r.pending));
            self.push(&names::GPU_ROW_REMAP_FAILED, with(&[]), flag(r.failure));
        }
        if let Some(r) = s.retired_pages.value() {
            self.push(
                &names::GPU_RETIRED_PAGES,
                with(&[("cause", "single_bit_ecc")]),
                f64::from(r.single_bit_ecc),
            );
            self.push(
                &names::GPU_RETIRED_PAGES,
                with(&[("cause", "double_bit_ecc")]),
                f64::from(r.double_bit_ecc),
            );
            self.push(
                &names::GPU_RETIRED_PAGES_PENDING,
                with(&[]),
                flag(r.pending),
            );
        }
        if let Some(xids) = s.xid_errors.get() {
            for (xid, count) in xids {
                self.push(
                    &names::GPU_XID_ERRORS,
                    with(&[("xid", &xid.to_string())]),
                    *count as f64,
                );
            }
        }
        if let Some(procs) = s.processes.get() {
            for p in procs {
                let pid = p.pid.to_string();
                let labels = || {
                    with(&[
                        ("pid", &pid),
                        ("workload_kind", p.workload_kind.name()),
                        ("workload", &p.workload),
                    ])
                };
                if let Some(m) = p.used_memory_bytes {
                    self.push(&names::GPU_PROCESS_MEMORY_USED, labels(), m as f64);
                }
                if let Some(u) = p.sm_utilization_percent {
                    self.push(
                        &names::GPU_PROCESS_SM_UTILIZATION,
                        labels(),
                        f64::from(u) / 100.0,
                    );
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<MetricFamily> {
        self.defs
            .iter()
            .zip(self.buckets)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(def, metrics)| {
                let mut f = MetricFamily::default();
                f.set_name(def.name.to_string());
                f.set_help(def.help.to_string());
                f.set_field_type(match def.kind {
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Counter => MetricType::COUNTER,
                });
                f.set_metric(metrics);
                f
            })
            .collect()
    }
}
