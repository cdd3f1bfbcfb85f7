//! Host views to Prometheus metric families, built at scrape time from the views
//! themselves: a host that is dropped from the source disappears from the next scrape,
//! with no series to unregister.

use std::fmt::Write as _;

use gpulse_gpu::{DeviceHolder, DeviceSample, DeviceState, Field, FieldStatus, ThrottleReasons};

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

/// Choices about what to expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpositionOptions {
    /// Also expose every NVLink link on its own (`gpulse_gpu_nvlink_link_*{link}`):
    /// up to 36 links (NVML_NVLINK_MAX_LINKS, nvml.h 13.3.29 line 455) x 7 series per GPU. Off by default; per-GPU totals are always there.
    pub nvlink_per_link: bool,
    /// Also expose each compute process on its own
    /// (`gpulse_gpu_process_*{pid,workload_kind,workload}`): up to 2 series per process,
    /// new ones as processes come and go. Off by default at the collector; the count of
    /// processes per GPU is always there.
    pub per_process: bool,
    /// dcgm-exporter's names beside gpulse's, instead of gpulse's per-GPU series, or not.
    pub dcgm: DcgmCompat,
}

/// Where series go: the Prometheus text ([`Families`]), remote-write samples, or a
/// renaming of them (the DCGM view). The mapping from readings to series
/// ([`write_host`]) is written once and feeds every sink.
pub trait SeriesSink {
    /// One series of family `def`: `base` labels, then `extra` ones.
    fn series(&mut self, def: &Def, base: &Labels<'_>, extra: &Labels<'_>, value: f64);

    /// The GPU whose series follow, before the first of them. Views that rename a
    /// GPU's series need its identity; plain outputs ignore it.
    fn gpu(&mut self, _gpu: &GpuContext<'_>) {}
}

/// What a view needs to know of a GPU beyond its series.
#[derive(Debug, Clone, Copy)]
pub struct GpuContext<'a> {
    /// The host's agent id.
    pub host: &'a str,
    pub index: u32,
    pub uuid: &'a str,
    pub model: &'a str,
    pub pci_bus_id: &'a str,
    pub driver_version: &'a str,
    /// It has a reading and is not lost.
    pub answering: bool,
    /// The newest XID code (0 before the first); `None` when XIDs are not read.
    pub last_xid: Option<u64>,
    /// The container holding the whole GPU, as its newest reading says (the first in
    /// namespace, pod and container order when several share it).
    pub holder: Option<&'a DeviceHolder>,
}

/// Writes every host of `source` in the Prometheus text format (0.0.4).
///
/// The text is written directly rather than through `prometheus::proto` values: a
/// large fleet has hundreds of thousands of series, and building a label-pair object
/// per label per series dominated the scrape (see docs/benchmarks.md).
pub fn render_fleet(source: &dyn HostSource, options: ExpositionOptions, out: &mut String) {
    let defs: &'static [Def] = if options.dcgm.dcgm() {
        dcgm::fleet_and_dcgm_defs()
    } else {
        &names::FLEET
    };
    let mut families = Families::new(defs);
    write_fleet(source, options, &mut families);
    families.finish(out);
}

/// Writes every host of `source` into `sink`: gpulse's series, and the DCGM view's
/// when `options` ask for it (instead of gpulse's per-GPU series with `only`).
pub fn write_fleet<S: SeriesSink>(
    source: &dyn HostSource,
    options: ExpositionOptions,
    sink: &mut S,
) {
    if !options.dcgm.dcgm() {
        source.for_each_host(&mut |host| write_host(sink, host, options));
        return;
    }
    let mut views = dcgm::WithDcgm::new(sink, options.dcgm);
    source.for_each_host(&mut |host| write_host(&mut views, host, options));
    views.finish();
}

/// Writes `value` as the text format wants it.
fn write_value(buf: &mut String, v: f64) {
    if v.is_nan() {
        buf.push_str("NaN");
    } else if v.is_infinite() {
        buf.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(buf, "{}", v as i64);
    } else {
        let _ = write!(buf, "{v}");
    }
}

/// Writes a label value, escaping backslash, double quote and newline.
fn write_escaped(buf: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        buf.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

/// Series written so far, one text buffer per metric definition, in `defs` order:
/// families written straight into a scrape's text. The fleet's series use it, and so
/// can others that follow the fleet (the collector's cost series).
#[derive(Debug)]
pub struct Families {
    defs: &'static [Def],
    bufs: Vec<String>,
    /// Index of the last definition written: series mostly come in definition order.
    hint: usize,
}

/// Label pairs, name then value.
pub type Labels<'a> = [(&'a str, &'a str)];

/// Reads one counter of an NVLink link.
type LinkCounter = fn(&gpulse_gpu::health::NvLinkSample) -> Option<u64>;

/// Converts NVML units to the base units in metric names.
const HZ_PER_MHZ: f64 = 1e6;
const WATTS_PER_MILLIWATT: f64 = 1e-3;
const JOULES_PER_MILLIJOULE: f64 = 1e-3;

impl Families {
    /// Families for `defs`, written in that order by [`Families::finish`].
    pub fn new(defs: &'static [Def]) -> Families {
        Families {
            defs,
            bufs: vec![String::new(); defs.len()],
            hint: 0,
        }
    }

    fn index(&mut self, def: &Def) -> usize {
        let n = self.defs.len();
        for i in [self.hint, (self.hint + 1) % n] {
            if self.defs[i].name == def.name {
                return i;
            }
        }
        let i = self
            .defs
            .iter()
            .position(|d| d.name == def.name)
            .expect("every definition used is in the family list");
        self.hint = i;
        i
    }

    /// Writes one series: `base` labels, then `extra` ones. `def` must be one of the
    /// definitions the families were made with.
    pub fn push(&mut self, def: &Def, base: &Labels<'_>, extra: &Labels<'_>, value: f64) {
        let i = self.index(def);
        let buf = &mut self.bufs[i];
        buf.push_str(def.name);
        let mut first = true;
        for (k, v) in base.iter().chain(extra) {
            buf.push(if first { '{' } else { ',' });
            first = false;
            buf.push_str(k);
            buf.push_str("=\"");
            write_escaped(buf, v);
            buf.push('"');
        }
        if !first {
            buf.push('}');
        }
        buf.push(' ');
        write_value(buf, value);
        buf.push('\n');
    }

    /// Appends every family with at least one series, with its HELP and TYPE lines,
    /// into `out` grown once to the size they need (a large fleet's text is tens of
    /// megabytes: growing it by doubling copies it over and over).
    pub fn finish(self, out: &mut String) {
        let header = |def: &Def| def.name.len() * 2 + def.help.len() + 32;
        out.reserve(
            self.defs
                .iter()
                .zip(&self.bufs)
                .filter(|(_, b)| !b.is_empty())
                .map(|(d, b)| header(d) + b.len())
                .sum(),
        );
        for (def, buf) in self.defs.iter().zip(&self.bufs) {
            if buf.is_empty() {
                continue;
            }
            let kind = match def.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let _ = write!(
                out,
                "# HELP {} {}\n# TYPE {} {kind}\n",
                def.name, def.help, def.name
            );
            out.push_str(buf);
        }
    }
}

impl SeriesSink for Families {
    fn series(&mut self, def: &Def, base: &Labels<'_>, extra: &Labels<'_>, value: f64) {
        self.push(def, base, extra, value);
    }
}

/// Writes one host's series: identity, agent, each GPU and which fields it hides.
pub fn write_host<S: SeriesSink>(sink: &mut S, host: &HostView, options: ExpositionOptions) {
    let id = &host.identity;
    let host_label = [(names::LABEL_HOST, id.agent_id.as_str())];
    let p = &id.provider;
    let label_keys: Vec<String> = id.labels.keys().map(|k| format!("label_{k}")).collect();
    let mut info: Vec<(&str, &str)> = vec![
        ("hostname", &id.hostname),
        ("provider", &p.provider.value),
        ("region", &p.region.value),
        ("zone", &p.zone.value),
        ("instance_type", &p.instance_type.value),
        ("agent_version", &id.agent_version),
        ("os", &id.facts.os),
        ("kernel", &id.facts.kernel),
    ];
    info.extend(
        label_keys
            .iter()
            .map(String::as_str)
            .zip(id.labels.values().map(String::as_str)),
    );
    sink.series(&names::HOST_INFO, &host_label, &info, 1.0);
    if !id.gpu_backend_error.is_empty() {
        sink.series(
            &names::HOST_GPU_BACKEND_ERROR,
            &host_label,
            &[("reason", &id.gpu_backend_error)],
            1.0,
        );
    }
    sink.series(
        &names::AGENT_UP,
        &host_label,
        &[],
        f64::from(u8::from(host.connected)),
    );
    sink.series(
        &names::AGENT_LAST_SEEN,
        &host_label,
        &[],
        host.last_seen_unix_ms as f64 / 1000.0,
    );
    if let Some(st) = &host.agent_stats {
        for (def, v) in [
            (&names::AGENT_BATCHES_DROPPED, st.batches_dropped),
            (&names::AGENT_BATCHES_REJECTED, st.batches_rejected),
            (&names::AGENT_SPOOL_ERRORS, st.spool_errors),
            (&names::AGENT_BUFFERED_BATCHES, st.buffered_batches),
            (&names::AGENT_SPOOL_BYTES, st.spool_bytes),
        ] {
            sink.series(def, &host_label, &[], v as f64);
        }
    }
    for gpu in &host.gpus {
        write_gpu(sink, &id.agent_id, gpu, options);
    }
    // Which fields the host hides, once per host rather than per GPU: a provider
    // hides a field on all its GPUs, and per-GPU series would multiply the cost.
    let answering: Vec<_> = host
        .gpus
        .iter()
        .filter_map(|g| g.latest())
        .filter(|s| s.state != DeviceState::Lost)
        .collect();
    if !answering.is_empty() {
        for field in Field::ALL {
            let supported = answering
                .iter()
                .all(|s| s.field_status(field) != FieldStatus::Unsupported);
            sink.series(
                &names::GPU_FIELD_SUPPORTED,
                &host_label,
                &[("field", field.name())],
                f64::from(u8::from(supported)),
            );
        }
    }
}

/// Who holds the GPU and each of its MIG devices: one series per device, so that a
/// join on (host, uuid) finds exactly one, and an unheld device says so with empty
/// labels rather than by a missing series (which would drop the GPU from a join).
fn write_allocation<S: SeriesSink>(
    sink: &mut S,
    base: &Labels<'_>,
    gpu: &GpuView,
    allocation: &gpulse_gpu::Allocation,
) {
    let held = |device: &str| {
        let h = allocation.first_of(device);
        [
            (
                names::LABEL_NAMESPACE,
                h.map_or("", |h| h.namespace.as_str()),
            ),
            (names::LABEL_POD, h.map_or("", |h| h.pod.as_str())),
            (
                names::LABEL_CONTAINER,
                h.map_or("", |h| h.container.as_str()),
            ),
        ]
    };
    sink.series(
        &names::GPU_ALLOCATION_INFO,
        base,
        &held(&gpu.info.uuid),
        1.0,
    );
    for m in &gpu.info.mig_instances {
        let [ns, pod, container] = held(&m.uuid);
        sink.series(
            &names::GPU_MIG_ALLOCATION_INFO,
            base,
            &[("mig_uuid", m.uuid.as_str()), ns, pod, container],
            1.0,
        );
    }
}

fn write_gpu<S: SeriesSink>(sink: &mut S, host: &str, gpu: &GpuView, options: ExpositionOptions) {
    let d = &gpu.info;
    let latest = gpu.latest();
    let lost = latest.is_some_and(|s| s.state == DeviceState::Lost);
    sink.gpu(&GpuContext {
        host,
        index: d.index,
        uuid: &d.uuid,
        model: &d.model,
        pci_bus_id: &d.pci_bus_id,
        driver_version: &d.driver_version,
        answering: latest.is_some() && !lost,
        last_xid: latest
            .and_then(|s| s.xid_errors.get())
            .map(|_| gpu.last_xid.unwrap_or(0)),
        holder: latest
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.first_of(&d.uuid)),
    });
    let index = d.index.to_string();
    let base = [
        (names::LABEL_HOST, host),
        (names::LABEL_GPU, index.as_str()),
        (names::LABEL_UUID, d.uuid.as_str()),
        (names::LABEL_MODEL, d.model.as_str()),
    ];
    sink.series(
        &names::GPU_INFO,
        &base,
        &[
            ("pci_bus_id", &d.pci_bus_id),
            ("driver_version", &d.driver_version),
            ("vbios_version", &d.vbios_version),
            ("architecture", &d.architecture),
        ],
        1.0,
    );
    for m in &d.mig_instances {
        let gi = m.gpu_instance_id.map(|v| v.to_string()).unwrap_or_default();
        let ci = m
            .compute_instance_id
            .map(|v| v.to_string())
            .unwrap_or_default();
        sink.series(
            &names::GPU_MIG_INSTANCE_INFO,
            &base,
            &[
                ("mig_uuid", &m.uuid),
                ("gpu_instance", &gi),
                ("compute_instance", &ci),
            ],
            1.0,
        );
    }
    if let Some(allocation) = latest.and_then(|s| s.allocation.as_ref()) {
        write_allocation(sink, &base, gpu, allocation);
    }
    let hz = |v: u32| f64::from(v) * HZ_PER_MHZ;
    let watts = |v: u32| f64::from(v) * WATTS_PER_MILLIWATT;
    let flag = |b: bool| f64::from(u8::from(b));
    let inventory = [
        (
            &names::GPU_MEMORY_TOTAL,
            d.memory_total_bytes.map(|v| v as f64),
        ),
        (&names::GPU_SM_CLOCK_MAX, d.max_sm_clock_mhz.map(hz)),
        (&names::GPU_MEMORY_CLOCK_MAX, d.max_memory_clock_mhz.map(hz)),
        (
            &names::GPU_POWER_DEFAULT_LIMIT,
            d.default_power_limit_milliwatts.map(watts),
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
            d.max_graphics_clock_mhz.map(hz),
        ),
        (
            &names::GPU_MEMORY_MAX_TEMPERATURE,
            d.memory_max_temperature_celsius.map(f64::from),
        ),
        (
            &names::GPU_MAX_OPERATING_TEMPERATURE,
            d.gpu_max_operating_temperature_celsius.map(f64::from),
        ),
        (&names::GPU_ECC_ENABLED, d.ecc_enabled.map(flag)),
        (&names::GPU_MIG_ENABLED, d.mig_enabled.map(flag)),
    ];
    for (def, value) in inventory {
        if let Some(v) = value {
            sink.series(def, &base, &[], v);
        }
    }
    // From the recent readings: a lost GPU has findings too.
    for f in gpu.findings() {
        sink.series(
            &names::GPU_FINDING,
            &base,
            &[("kind", f.kind.name()), ("severity", f.severity.name())],
            1.0,
        );
    }
    let Some(s) = latest else { return };
    sink.series(&names::GPU_LOST, &base, &[], flag(lost));
    if lost {
        // A lost GPU says nothing about its fields: no values, no support claims.
        return;
    }
    let ratio = |v: u32| f64::from(v) / 100.0;
    let readings = [
        (
            &names::GPU_UTILIZATION,
            s.gpu_utilization_percent.value().map(ratio),
        ),
        (
            &names::GPU_MEMORY_UTILIZATION,
            s.memory_utilization_percent.value().map(ratio),
        ),
        (&names::GPU_SM_CLOCK, s.sm_clock_mhz.value().map(hz)),
        (&names::GPU_MEMORY_CLOCK, s.memory_clock_mhz.value().map(hz)),
        (
            &names::GPU_TEMPERATURE,
            s.temperature_celsius.value().map(f64::from),
        ),
        (
            &names::GPU_POWER_USAGE,
            s.power_usage_milliwatts.value().map(watts),
        ),
        (
            &names::GPU_POWER_LIMIT,
            s.power_limit_milliwatts.value().map(watts),
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
            s.graphics_clock_mhz.value().map(hz),
        ),
        (
            &names::GPU_APPLICATIONS_SM_CLOCK,
            s.applications_sm_clock_mhz.value().map(hz),
        ),
        (
            &names::GPU_APPLICATIONS_MEMORY_CLOCK,
            s.applications_memory_clock_mhz.value().map(hz),
        ),
        (
            &names::GPU_MEMORY_TEMPERATURE,
            s.memory_temperature_celsius.value().map(f64::from),
        ),
        (
            &names::GPU_PCIE_TRANSMIT,
            s.pcie_tx_bytes.value().map(|v| v as f64),
        ),
        (
            &names::GPU_PCIE_RECEIVE,
            s.pcie_rx_bytes.value().map(|v| v as f64),
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
            &names::GPU_PROCESSES,
            s.processes.get().map(|p| p.len() as f64),
        ),
    ];
    for (def, value) in readings {
        if let Some(v) = value {
            sink.series(def, &base, &[], v);
        }
    }
    if let Some(reasons) = s.throttle_reasons.value() {
        for (f, name) in ThrottleReasons::NAMED {
            sink.series(
                &names::GPU_THROTTLE_ACTIVE,
                &base,
                &[("reason", name)],
                flag(reasons.contains(f)),
            );
        }
    }
    write_health(sink, &base, s, d.mig_enabled == Some(true), options);
}

/// Throttle time, interconnect, memory health, XID and processes of one GPU.
fn write_health<S: SeriesSink>(
    sink: &mut S,
    base: &Labels<'_>,
    s: &DeviceSample,
    mig: bool,
    options: ExpositionOptions,
) {
    let flag = |b: bool| f64::from(u8::from(b));
    if let Some(t) = s.throttle_time.get() {
        sink.series(
            &names::GPU_THROTTLE_TIME_INFO,
            base,
            &[("source", t.source.name())],
            1.0,
        );
        for (policy, ns) in &t.nanoseconds {
            sink.series(
                &names::GPU_THROTTLE_SECONDS,
                base,
                &[("reason", policy.name())],
                *ns as f64 / 1e9,
            );
        }
    }
    if let Some(links) = s.nvlinks.get() {
        write_nvlinks(sink, base, links, mig, options);
    }
    for (kind, value) in [
        ("corrected", s.ecc_corrected_errors.value()),
        ("uncorrected", s.ecc_uncorrected_errors.value()),
    ] {
        if let Some(v) = value {
            sink.series(&names::GPU_ECC_ERRORS, base, &[("type", kind)], v as f64);
        }
    }
    if let Some(r) = s.remapped_rows.value() {
        sink.series(
            &names::GPU_REMAPPED_ROWS,
            base,
            &[("type", "correctable")],
            f64::from(r.correctable),
        );
        sink.series(
            &names::GPU_REMAPPED_ROWS,
            base,
            &[("type", "uncorrectable")],
            f64::from(r.uncorrectable),
        );
        sink.series(&names::GPU_ROW_REMAP_PENDING, base, &[], flag(r.pending));
        sink.series(&names::GPU_ROW_REMAP_FAILED, base, &[], flag(r.failure));
    }
    if let Some(r) = s.retired_pages.value() {
        sink.series(
            &names::GPU_RETIRED_PAGES,
            base,
            &[("cause", "single_bit_ecc")],
            f64::from(r.single_bit_ecc),
        );
        sink.series(
            &names::GPU_RETIRED_PAGES,
            base,
            &[("cause", "double_bit_ecc")],
            f64::from(r.double_bit_ecc),
        );
        sink.series(
            &names::GPU_RETIRED_PAGES_PENDING,
            base,
            &[],
            flag(r.pending),
        );
    }
    if let Some(xids) = s.xid_errors.get() {
        for (xid, count) in xids {
            sink.series(
                &names::GPU_XID_ERRORS,
                base,
                &[("xid", &xid.to_string())],
                *count as f64,
            );
        }
    }
    if let Some(procs) = s.processes.get().filter(|_| options.per_process) {
        for p in procs {
            let pid = p.pid.to_string();
            let labels = [
                ("pid", pid.as_str()),
                ("workload_kind", p.workload_kind.name()),
                ("workload", p.workload.as_str()),
            ];
            if let Some(m) = p.used_memory_bytes {
                sink.series(&names::GPU_PROCESS_MEMORY_USED, base, &labels, m as f64);
            }
            if let Some(u) = p.sm_utilization_percent {
                sink.series(
                    &names::GPU_PROCESS_SM_UTILIZATION,
                    base,
                    &labels,
                    f64::from(u) / 100.0,
                );
            }
        }
    }
}

/// Per-GPU NVLink totals, and each link on its own when asked for.
///
/// Under MIG, NVML reads every link as inactive whatever its state (DCGM treats such
/// links as disabled, not down: modules/health/DcgmHealthWatch.cpp,
/// MonitorNVLinkStatus), so no link state is exposed for a MIG GPU: neither
/// `links_down` nor a per-link `link_up`. Its traffic and error counters still are.
fn write_nvlinks<S: SeriesSink>(
    sink: &mut S,
    base: &Labels<'_>,
    links: &[gpulse_gpu::health::NvLinkSample],
    mig: bool,
    options: ExpositionOptions,
) {
    // Summed as f64, as exposed: counters from an agent can be anything up to
    // u64::MAX, and their u64 sum would overflow.
    let sum = |f: LinkCounter| -> Option<f64> {
        let values: Vec<f64> = links.iter().filter_map(f).map(|v| v as f64).collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    let down = links.iter().filter(|l| !l.active).count();
    sink.series(&names::GPU_NVLINK_LINKS, base, &[], links.len() as f64);
    if !mig {
        sink.series(&names::GPU_NVLINK_LINKS_DOWN, base, &[], down as f64);
    }
    if let Some(v) = sum(|l| l.tx_bytes) {
        sink.series(&names::GPU_NVLINK_TRANSMIT, base, &[], v);
    }
    if let Some(v) = sum(|l| l.rx_bytes) {
        sink.series(&names::GPU_NVLINK_RECEIVE, base, &[], v);
    }
    let kinds: [(&str, LinkCounter); 4] = [
        ("crc_flit", |l| l.crc_flit_errors),
        ("crc_data", |l| l.crc_data_errors),
        ("replay", |l| l.replay_errors),
        ("recovery", |l| l.recovery_errors),
    ];
    for (kind, f) in kinds {
        if let Some(v) = sum(f) {
            sink.series(&names::GPU_NVLINK_ERRORS, base, &[("type", kind)], v);
        }
    }
    if !options.nvlink_per_link {
        return;
    }
    for l in links {
        let link = l.link.to_string();
        let at = [("link", link.as_str())];
        if !mig {
            sink.series(
                &names::GPU_NVLINK_LINK_UP,
                base,
                &at,
                f64::from(u8::from(l.active)),
            );
        }
        if let Some(v) = l.tx_bytes {
            sink.series(&names::GPU_NVLINK_LINK_TRANSMIT, base, &at, v as f64);
        }
        if let Some(v) = l.rx_bytes {
            sink.series(&names::GPU_NVLINK_LINK_RECEIVE, base, &at, v as f64);
        }
        for (kind, f) in kinds {
            if let Some(v) = f(l) {
                sink.series(
                    &names::GPU_NVLINK_LINK_ERRORS,
                    base,
                    &[("link", &link), ("type", kind)],
                    v as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut buf = String::new();
        write_escaped(&mut buf, "a\\b\"c\nd");
        assert_eq!(buf, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let mut buf = String::new();
        for v in [
            1980e6,
            0.25,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -3.0,
        ] {
            write_value(&mut buf, v);
            buf.push(' ');
        }
        assert_eq!(buf, "1980000000 0.25 +Inf -Inf NaN -3 ");
    }
}
