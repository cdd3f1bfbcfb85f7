//! The rules. Each looks at one window and returns at most one finding of its kind.

use super::window::GpuWindow;
use super::{Finding, FindingKind, Severity};
use crate::simulator::ModelSpec;
use crate::{DeviceInfo, DeviceSample, DeviceState, Field, FieldStatus, ThrottleReasons};

/// Share of busy readings a throttle reason must hold to be reported: a blip is noise.
const SUSTAINED_SHARE: f64 = 0.20;
/// An enforced power limit this far below the default is a cap, not rounding.
const POWER_CAP_TOLERANCE: f64 = 0.98;
/// Memory a process holds for an idle GPU to count as held.
const HELD_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// A finding at its kind's severity (the table in [`FindingKind::severity`]).
fn finding(
    w: &GpuWindow<'_>,
    kind: FindingKind,
    summary: String,
    evidence: Vec<String>,
    action: &str,
) -> Finding {
    let severity = kind.severity().unwrap_or(Severity::Warning);
    finding_at(w, kind, severity, summary, evidence, action)
}

fn finding_at(
    w: &GpuWindow<'_>,
    kind: FindingKind,
    severity: Severity,
    summary: String,
    evidence: Vec<String>,
    action: &str,
) -> Finding {
    Finding {
        kind,
        severity,
        gpu: w.info.index,
        uuid: w.info.uuid.clone(),
        summary,
        evidence,
        action: action.to_string(),
    }
}

fn pct(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

fn has(reason: ThrottleReasons) -> impl Fn(&crate::DeviceSample) -> bool {
    move |s| {
        s.throttle_reasons
            .value()
            .is_some_and(|r| r.intersects(reason))
    }
}

/// Mean SM clock while busy against the maximum, as evidence of what throttling costs.
fn clock_evidence(w: &GpuWindow<'_>) -> Option<String> {
    let max = w.info.max_sm_clock_mhz?;
    let (mean, _) = w.busy_stats(|s| s.sm_clock_mhz.value())?;
    Some(format!(
        "SM clock {mean:.0} MHz while busy, {:.0}% of the {max} MHz maximum ({:.0}% lost)",
        mean / f64::from(max) * 100.0,
        (1.0 - mean / f64::from(max)) * 100.0
    ))
}

fn gpu_lost(w: &GpuWindow<'_>) -> Option<Finding> {
    let lost = w
        .samples
        .iter()
        .filter(|t| t.sample.state == DeviceState::Lost)
        .count();
    (lost > 0).then(|| {
        finding(
            w,
            FindingKind::GpuLost,
            "the GPU stopped answering (fallen off the bus)".into(),
            vec![format!("{lost} of {} readings found no GPU", w.samples.len())],
            "drain the node; check `dmesg` for XID 79 and PCIe errors; reseat or replace the GPU, or ask the provider for a new host",
        )
    })
}

fn thermal(w: &GpuWindow<'_>) -> Option<Finding> {
    let hw = w.busy_share(has(ThrottleReasons::HW_THERMAL_SLOWDOWN));
    let sw = w.busy_share(has(ThrottleReasons::SW_THERMAL_SLOWDOWN));
    if hw.max(sw) < SUSTAINED_SHARE {
        return None;
    }
    let mut evidence = vec![format!(
        "thermal slowdown in {} of busy readings (hardware {}, software {})",
        pct(hw.max(sw)),
        pct(hw),
        pct(sw)
    )];
    if let Some((mean, max)) = w.busy_stats(|s| s.temperature_celsius.value()) {
        let threshold = w
            .info
            .slowdown_temperature_celsius
            .map(|t| format!(" against a slowdown threshold of {t} °C"))
            .unwrap_or_default();
        evidence.push(format!(
            "GPU temperature {mean:.0} °C mean, {max} °C max{threshold}"
        ));
    }
    if let Some((mean, max)) = w.busy_stats(|s| s.memory_temperature_celsius.value()) {
        let threshold = w
            .info
            .memory_max_temperature_celsius
            .map(|t| format!(" against {t} °C"))
            .unwrap_or_default();
        evidence.push(format!(
            "memory temperature {mean:.0} °C mean, {max} °C max{threshold}"
        ));
    }
    evidence.extend(clock_evidence(w));
    Some(finding(
        w,
        FindingKind::ThermalThrottling,
        "the GPU is too hot and its clocks are cut".into(),
        evidence,
        "check airflow, fan and inlet temperature, and the cooling of the chassis; on a cloud host, report the instance to the provider and move the job",
    ))
}

fn power_cap(w: &GpuWindow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let default = w.info.default_power_limit_milliwatts;
    let enforced = w
        .answering()
        .filter_map(|s| s.power_limit_milliwatts.value())
        .min();
    if let (Some(default), Some(enforced)) = (default, enforced)
        && f64::from(enforced) < f64::from(default) * POWER_CAP_TOLERANCE
    {
        let mut evidence = vec![format!(
            "enforced power limit {:.0} W, below the board's default {:.0} W ({:.0}%)",
            f64::from(enforced) / 1000.0,
            f64::from(default) / 1000.0,
            f64::from(enforced) / f64::from(default) * 100.0
        )];
        let capped = w.busy_share(has(ThrottleReasons::SW_POWER_CAP));
        if capped > 0.0 {
            evidence.push(format!("power-capped in {} of busy readings", pct(capped)));
        }
        evidence.extend(clock_evidence(w));
        out.push(finding(
            w,
            FindingKind::ProviderPowerCap,
            "a power cap below the board's default holds this GPU back".into(),
            evidence,
            "ask the provider (or whoever set it with nvidia-smi -pl) why the limit is lowered; price the instance for the performance it gives",
        ));
    } else {
        let capped = w.busy_share(has(ThrottleReasons::SW_POWER_CAP));
        if capped >= SUSTAINED_SHARE {
            let mut evidence = vec![format!(
                "power-capped at the default limit in {} of busy readings",
                pct(capped)
            )];
            evidence.extend(clock_evidence(w));
            out.push(finding(
                w,
                FindingKind::PowerLimited,
                "the workload draws the board's full power budget".into(),
                evidence,
                "nothing is wrong; expect clocks below maximum under this load",
            ));
        }
    }
    out
}

fn hardware_slowdown(w: &GpuWindow<'_>) -> Option<Finding> {
    let slow = w.busy_share(has(ThrottleReasons::HW_SLOWDOWN));
    let brake = w.busy_share(has(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN));
    (slow.max(brake) >= SUSTAINED_SHARE).then(|| {
        let mut evidence = vec![format!(
            "hardware slowdown in {} of busy readings, power brake in {}",
            pct(slow),
            pct(brake)
        )];
        evidence.extend(clock_evidence(w));
        finding(
            w,
            FindingKind::HardwareSlowdown,
            "an external signal (power brake or hardware slowdown) halves the clocks".into(),
            evidence,
            "check the power supplies and the chassis' power and thermal events (BMC/IPMI logs); on a cloud host, report it to the provider",
        )
    })
}

fn sync_boost(w: &GpuWindow<'_>) -> Option<Finding> {
    let share = w.busy_share(has(ThrottleReasons::SYNC_BOOST));
    (share >= SUSTAINED_SHARE).then(|| {
        let mut evidence = vec![format!(
            "sync boost holds the clocks in {} of busy readings",
            pct(share)
        )];
        evidence.extend(clock_evidence(w));
        finding(
            w,
            FindingKind::SyncBoost,
            "clocks follow the slowest GPU of a sync-boost group".into(),
            evidence,
            "look for the slowest GPU in the group; it sets the pace for all of them",
        )
    })
}

fn application_clocks(w: &GpuWindow<'_>) -> Option<Finding> {
    let flagged = w.busy_share(has(ThrottleReasons::APPLICATIONS_CLOCKS_SETTING));
    let max = w.info.max_sm_clock_mhz?;
    let locked = w
        .answering()
        .filter_map(|s| s.applications_sm_clock_mhz.value())
        .min()
        .filter(|app| *app < max);
    if flagged < SUSTAINED_SHARE && locked.is_none() {
        return None;
    }
    let mut evidence = Vec::new();
    if let Some(app) = locked {
        evidence.push(format!(
            "application SM clock set to {app} MHz, below the {max} MHz maximum"
        ));
    }
    if flagged > 0.0 {
        evidence.push(format!(
            "clocks held by the application-clock setting in {} of busy readings",
            pct(flagged)
        ));
    }
    evidence.extend(clock_evidence(w));
    Some(finding(
        w,
        FindingKind::ApplicationClocksLocked,
        "clocks are locked below maximum by a setting".into(),
        evidence,
        "reset them with `nvidia-smi -rac` (application clocks) or `nvidia-smi -rgc` (locked clocks) unless they were set on purpose",
    ))
}

fn pcie(w: &GpuWindow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let (max_gen, max_width) = (w.info.max_pcie_generation, w.info.max_pcie_width);
    // Idle links train down to save power: only a busy GPU's link counts.
    let below = |s: &crate::DeviceSample| {
        let g = s
            .pcie_generation
            .value()
            .zip(max_gen)
            .is_some_and(|(g, m)| g < m);
        let x = s
            .pcie_width
            .value()
            .zip(max_width)
            .is_some_and(|(x, m)| x < m);
        g || x
    };
    // A link trains down when idle: only readings known busy count here.
    let busy = w.surely_busy().count();
    let share = if busy == 0 {
        0.0
    } else {
        w.surely_busy().filter(|s| below(s)).count() as f64 / busy as f64
    };
    if share >= SUSTAINED_SHARE
        && let Some(s) = w.surely_busy().find(|s| below(s))
    {
        out.push(finding(
            w,
            FindingKind::PcieDowntrained,
            "the PCIe link trained below its maximum while the GPU is busy".into(),
            vec![
                format!(
                    "link at Gen{} x{} while busy, maximum Gen{} x{}",
                    s.pcie_generation.value().unwrap_or(0),
                    s.pcie_width.value().unwrap_or(0),
                    max_gen.unwrap_or(0),
                    max_width.unwrap_or(0)
                ),
                format!("below maximum in {} of busy readings", pct(share)),
            ],
            "reseat the GPU or riser, check the slot's BIOS settings; on a cloud host, report the instance",
        ));
    }
    let replays = w.increase(|s| s.pcie_replays.value());
    if replays > 0 {
        let rate = replays as f64 / w.seconds().max(1.0);
        out.push(finding(
            w,
            FindingKind::PcieReplays,
            "the PCIe link is retransmitting".into(),
            vec![format!("{replays} replays in {:.0} s ({rate:.1}/s)", w.seconds())],
            "a marginal link: reseat the GPU or riser, check cables and slot; replace if it persists",
        ));
    }
    out
}

fn nvlink(w: &GpuWindow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(last) = w.answering().last() else {
        return out;
    };
    let Some(links) = last.nvlinks.get() else {
        return out;
    };
    // NVML reads the links of a MIG-enabled GPU as inactive (DCGM treats them as
    // disabled, not down, bug 200682374: modules/health/DcgmHealthWatch.cpp,
    // DcgmHealthWatch::MonitorNVLinkStatus): no finding from their state.
    let mig = w.info.mig_enabled == Some(true);
    let down: Vec<String> = links
        .iter()
        .filter(|l| !l.active && !mig)
        .map(|l| l.link.to_string())
        .collect();
    if !down.is_empty() {
        out.push(finding(
            w,
            FindingKind::NvlinkDown,
            "NVLink links are down".into(),
            vec![format!("links down: {} of {}", down.join(", "), links.len())],
            "collectives fall back to slower paths or fail: drain the node and check the NVLink bridges and fabric manager",
        ));
    }
    let mut erroring = Vec::new();
    for l in links {
        let delta = |f: fn(&crate::health::NvLinkSample) -> Option<u64>| {
            w.increase(|s| {
                s.nvlinks
                    .get()?
                    .iter()
                    .find(|x| x.link == l.link)
                    .and_then(f)
            })
        };
        let crc = delta(|x| x.crc_flit_errors).saturating_add(delta(|x| x.crc_data_errors));
        let replay = delta(|x| x.replay_errors);
        let recovery = delta(|x| x.recovery_errors);
        if crc > 0 || replay > 0 || recovery > 0 {
            erroring.push(format!(
                "link {}: {crc} CRC, {replay} replay, {recovery} recovery errors",
                l.link
            ));
        }
    }
    if !erroring.is_empty() {
        out.push(finding(
            w,
            FindingKind::NvlinkErrors,
            "NVLink links are counting errors".into(),
            erroring,
            "watch the rate; rising CRC or recovery errors precede a link going down: plan to service the node",
        ));
    }
    out
}

fn xid(w: &GpuWindow<'_>) -> Option<Finding> {
    let first = w
        .answering()
        .find_map(|s| s.xid_errors.get().cloned())
        .unwrap_or_default();
    let last = w.answering().filter_map(|s| s.xid_errors.get()).last()?;
    let mut seen = Vec::new();
    for (code, count) in last {
        // Counts already there at the window's first reading are history.
        let before = first.iter().find(|(c, _)| c == code).map_or(0, |(_, n)| *n);
        let new = count.saturating_sub(before);
        if new > 0 {
            seen.push((*code, new));
        }
    }
    if seen.is_empty() {
        return None;
    }
    let severity = seen
        .iter()
        .map(|(c, _)| super::xid_severity(*c))
        .max()
        .unwrap_or(Severity::Info);
    let evidence = seen
        .iter()
        .map(|(c, n)| format!("XID {c} x{n}{}", xid_meaning(*c)))
        .collect();
    Some(finding_at(
        w,
        FindingKind::Xid,
        severity,
        "the driver reported XID errors".into(),
        evidence,
        match severity {
            Severity::Critical => {
                "drain the node and follow NVIDIA's XID catalogue for these codes; most need a GPU reset or service"
            }
            Severity::Warning => {
                "look the codes up in NVIDIA's XID catalogue and check `dmesg` around the time"
            }
            Severity::Info => {
                "usually the application's fault (bad memory access, killed kernel): check the job's logs"
            }
        },
    ))
}

fn xid_meaning(code: u64) -> &'static str {
    match code {
        13 => " (graphics engine exception)",
        31 => " (GPU memory page fault)",
        43 => " (GPU stopped processing)",
        45 => " (preemptive cleanup)",
        48 => " (double-bit ECC error)",
        63 | 64 => " (ECC page retirement or row remapping event)",
        74 => " (NVLink error)",
        79 => " (GPU has fallen off the bus)",
        92 => " (high single-bit ECC error rate)",
        94 => " (contained ECC error)",
        95 => " (uncontained ECC error)",
        119 | 120 => " (GSP error)",
        140 => " (unrecovered ECC error)",
        _ => "",
    }
}

fn memory_health(w: &GpuWindow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let new_uncorrected = w.increase(|s| s.ecc_uncorrected_errors.value());
    let total_uncorrected = w
        .answering()
        .filter_map(|s| s.ecc_uncorrected_errors.value())
        .last();
    if new_uncorrected > 0 {
        out.push(finding(
            w,
            FindingKind::UncorrectableEcc,
            "uncorrectable ECC errors occurred".into(),
            vec![format!(
                "{new_uncorrected} new uncorrectable errors in the window ({} over the GPU's life)",
                total_uncorrected.unwrap_or(new_uncorrected)
            )],
            "jobs on this GPU may have computed on corrupt memory: drain it, reset the GPU to apply row remapping, and rerun affected jobs",
        ));
    }
    if let Some(r) = w.answering().filter_map(|s| s.remapped_rows.value()).last() {
        let evidence = vec![format!(
            "{} correctable and {} uncorrectable rows remapped; pending {}, failed {}",
            r.correctable, r.uncorrectable, r.pending, r.failure
        )];
        if r.failure {
            out.push(finding(
                w,
                FindingKind::RowRemapFailed,
                "a row remap failed: the GPU's memory cannot heal itself".into(),
                evidence,
                "replace the GPU (RMA); it is unsafe for production work",
            ));
        } else if r.pending {
            out.push(finding(
                w,
                FindingKind::RowRemapPending,
                "a row remap waits for a GPU reset".into(),
                evidence,
                "drain the GPU and reset it (nvidia-smi -r) or reboot, so the remap takes effect",
            ));
        }
    }
    if let Some(p) = w.answering().filter_map(|s| s.retired_pages.value()).last()
        && p.pending
    {
        out.push(finding(
            w,
            FindingKind::RetiredPagesPending,
            "memory pages wait to be retired at the next reboot".into(),
            vec![format!(
                "{} single-bit and {} double-bit pages retired so far",
                p.single_bit_ecc, p.double_bit_ecc
            )],
            "drain and reboot the node so the pages are retired",
        ));
    }
    out
}

fn idle_while_held(w: &GpuWindow<'_>) -> Option<Finding> {
    let answering = w.answering().count();
    // Only a GPU known idle in every reading: unknown (MIG without per-process
    // figures) is not idle.
    if answering == 0 || !w.always_idle() {
        return None;
    }
    let last = w.answering().last()?;
    let procs = last.processes.get()?;
    let held: Vec<String> = procs
        .iter()
        .filter(|p| p.used_memory_bytes.unwrap_or(0) >= HELD_MEMORY_BYTES)
        .map(|p| {
            format!(
                "pid {} ({} {}) holds {:.1} GiB",
                p.pid,
                p.workload_kind.name(),
                p.workload,
                p.used_memory_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64
            )
        })
        .collect();
    (!held.is_empty()).then(|| {
        let mut evidence = vec![format!("idle in all {answering} readings")];
        evidence.extend(held);
        finding(
            w,
            FindingKind::IdleWhileHeld,
            "the GPU is idle but a process holds it: paid for and unused".into(),
            evidence,
            "find the owner of the workload; stop it or release the GPU",
        )
    })
}

/// Fields the host hides on a GPU, by one reading: unsupported where the model has
/// them. Not hidden: retired pages and GPM (absent by design on some generations),
/// NVLink on a model without it (a PCIe card, an unknown model with no links; an SXM
/// part in a VM that hides it is hidden, as the H200 capture shows), and whole-GPU
/// utilisation under MIG (not supported by design).
pub fn hidden_fields(info: &DeviceInfo, reading: &DeviceSample) -> Vec<Field> {
    let mig = info.mig_enabled == Some(true);
    let has_nvlink = ModelSpec::by_nvml_name(&info.model).is_some_and(|(_, m)| m.nvlink_count > 0);
    reading
        .fields_with(FieldStatus::Unsupported)
        .filter(|f| !matches!(f, Field::RetiredPages | Field::Gpm))
        .filter(|f| *f != Field::NvLink || has_nvlink)
        .filter(|f| !(mig && matches!(f, Field::GpuUtilization | Field::MemoryUtilization)))
        .collect()
}

fn hidden_fields_finding(w: &GpuWindow<'_>) -> Option<Finding> {
    let last = w.answering().last()?;
    let hidden: Vec<&str> = hidden_fields(w.info, last)
        .into_iter()
        .map(Field::name)
        .collect();
    (!hidden.is_empty()).then(|| {
        finding(
            w,
            FindingKind::HiddenFields,
            "the host hides some fields; findings that need them cannot be made".into(),
            vec![format!("not exposed: {}", hidden.join(", "))],
            "on a cloud host this is the provider's choice; ask for them or account for the blind spot",
        )
    })
}

/// Runs every rule on one GPU's window; findings come most severe first.
pub fn diagnose(w: &GpuWindow<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(gpu_lost(w));
    out.extend(thermal(w));
    out.extend(power_cap(w));
    out.extend(hardware_slowdown(w));
    out.extend(sync_boost(w));
    out.extend(application_clocks(w));
    out.extend(pcie(w));
    out.extend(nvlink(w));
    out.extend(xid(w));
    out.extend(memory_health(w));
    out.extend(idle_while_held(w));
    out.extend(hidden_fields_finding(w));
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GpuBackend;
    use crate::diagnosis::Timed;
    use crate::simulator::Simulator;

    /// Runs a scenario for 30 readings 1 s apart and diagnoses every GPU.
    fn findings(spec: &str) -> Vec<Finding> {
        let mut sim = Simulator::new(spec.parse().unwrap());
        let mut per_gpu: Vec<Vec<Timed>> = vec![Vec::new(); sim.inventory().len()];
        for t in 0..30 {
            for (i, s) in sim.sample(t * 1000).into_iter().enumerate() {
                per_gpu[i].push(Timed {
                    unix_ms: t * 1000,
                    sample: s,
                });
            }
        }
        let inventory = sim.inventory().to_vec();
        inventory
            .iter()
            .zip(&per_gpu)
            .flat_map(|(info, samples)| diagnose(&GpuWindow { info, samples }))
            .collect()
    }

    fn kinds(spec: &str) -> Vec<(FindingKind, Severity)> {
        let mut k: Vec<_> = findings(spec)
            .iter()
            .map(|f| (f.kind, f.severity))
            .collect();
        k.sort();
        k.dedup();
        k
    }

    #[test]
    fn each_scenario_yields_its_finding() {
        use FindingKind as K;
        use Severity as S;
        for (spec, expected) in [
            (
                "gpus=2,scenario=thermal",
                (K::ThermalThrottling, S::Warning),
            ),
            ("gpus=2,scenario=power-cap", (K::ProviderPowerCap, S::Info)),
            (
                "gpus=2,scenario=hw-slowdown",
                (K::HardwareSlowdown, S::Warning),
            ),
            ("gpus=2,scenario=sync-boost", (K::SyncBoost, S::Info)),
            (
                "gpus=2,scenario=app-clocks",
                (K::ApplicationClocksLocked, S::Warning),
            ),
            (
                "gpus=2,scenario=pcie-degraded",
                (K::PcieDowntrained, S::Warning),
            ),
            (
                "gpus=2,scenario=pcie-degraded",
                (K::PcieReplays, S::Warning),
            ),
            ("gpus=8,scenario=nvlink-errors", (K::NvlinkDown, S::Warning)),
            (
                "gpus=8,scenario=nvlink-errors",
                (K::NvlinkErrors, S::Warning),
            ),
            ("gpus=2,scenario=xid", (K::Xid, S::Info)),
            (
                "gpus=2,model=a100,scenario=ecc",
                (K::UncorrectableEcc, S::Critical),
            ),
            (
                "gpus=2,model=a100,scenario=ecc",
                (K::RowRemapPending, S::Warning),
            ),
            ("gpus=2,model=a100,scenario=ecc", (K::Xid, S::Critical)),
            ("gpus=2,scenario=lost", (K::GpuLost, S::Critical)),
            ("gpus=2,scenario=idle-held", (K::IdleWhileHeld, S::Warning)),
            (
                "gpus=1,scenario=training,hide=energy",
                (K::HiddenFields, S::Info),
            ),
        ] {
            let got = kinds(spec);
            assert!(
                got.contains(&expected),
                "{spec}: expected {expected:?}, got {got:?}"
            );
        }
    }

    /// MIG changes what NVML answers (no whole-GPU utilisation, links read inactive),
    /// not what the GPU is doing: every scenario gives the same findings with MIG on,
    /// except the link-down finding, which link states cannot show under MIG.
    #[test]
    fn every_scenario_is_diagnosed_the_same_with_mig_on() {
        for (scenario, _) in crate::simulator::Scenario::NAMES {
            let without_link_state = |spec: &str| -> Vec<_> {
                kinds(spec)
                    .into_iter()
                    .filter(|(k, _)| *k != FindingKind::NvlinkDown)
                    .collect()
            };
            let plain = without_link_state(&format!("gpus=2,scenario={scenario}"));
            let mig = kinds(&format!("gpus=2,scenario={scenario},mig=3"));
            assert_eq!(mig, plain, "{scenario} with mig=3");
        }
    }

    /// A thermal finding says the GPU is too hot: at every moment it is made (every
    /// window from the first reading on, every model), its evidence shows a temperature
    /// at the slowdown threshold.
    #[test]
    fn thermal_evidence_supports_its_words_from_the_first_reading() {
        for (model, _) in crate::simulator::GpuModel::NAMES {
            let spec = format!("gpus=1,model={model},scenario=thermal");
            let mut sim = Simulator::new(spec.parse().unwrap());
            let info = sim.inventory()[0].clone();
            let threshold = info.slowdown_temperature_celsius.unwrap();
            let mut samples = Vec::new();
            for t in 0..20 {
                let s = sim.sample(t * 1000).remove(0);
                samples.push(Timed {
                    unix_ms: t * 1000,
                    sample: s,
                });
                for f in diagnose(&GpuWindow {
                    info: &info,
                    samples: &samples,
                }) {
                    if f.kind != FindingKind::ThermalThrottling {
                        continue;
                    }
                    let max = samples
                        .iter()
                        .filter_map(|s| s.sample.temperature_celsius.value())
                        .max()
                        .unwrap();
                    assert!(
                        max >= threshold,
                        "{spec} after {} readings: {max} °C max, threshold {threshold} °C: {:?}",
                        samples.len(),
                        f.evidence
                    );
                }
            }
        }
    }

    #[test]
    fn no_hidden_nvlink_claim_for_a_model_without_it() {
        assert_eq!(kinds("gpus=1,model=l4,scenario=training"), []);
        let hidden = findings("gpus=1,model=h200,scenario=training,hide=nvlink");
        assert!(
            hidden
                .iter()
                .any(|f| f.kind == FindingKind::HiddenFields && f.evidence[0].contains("nvlink")),
            "{hidden:?}"
        );
    }

    #[test]
    fn healthy_and_idle_gpus_raise_nothing() {
        assert_eq!(kinds("gpus=2,scenario=training"), []);
        // An idle link trained down to Gen1 is normal: no PCIe finding.
        assert_eq!(kinds("gpus=2,scenario=idle"), []);
    }

    #[test]
    fn findings_carry_evidence_and_advice() {
        let f = findings("gpus=1,scenario=thermal");
        let thermal = f
            .iter()
            .find(|f| f.kind == FindingKind::ThermalThrottling)
            .unwrap();
        assert!(
            thermal
                .evidence
                .iter()
                .any(|e| e.contains("slowdown threshold of 89 °C")),
            "{thermal:?}"
        );
        assert!(
            thermal.evidence.iter().any(|e| e.contains("% lost")),
            "{thermal:?}"
        );
        assert!(!thermal.action.is_empty());
        let capped = findings("gpus=1,scenario=power-cap");
        let cap = capped
            .iter()
            .find(|f| f.kind == FindingKind::ProviderPowerCap)
            .unwrap();
        assert!(
            cap.evidence[0].contains("490 W, below the board's default 700 W"),
            "{cap:?}"
        );
    }

    #[test]
    fn the_most_severe_finding_comes_first() {
        let f = findings("gpus=1,model=a100,scenario=ecc");
        assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity));
    }
}
