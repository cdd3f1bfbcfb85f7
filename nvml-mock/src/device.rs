//! What one simulated GPU answers to each NVML query: its inventory ([`DeviceInfo`]) and
//! the simulator's latest reading of it ([`DeviceSample`]), in NVML's units and codes.
//!
//! A field the sample holds as `Unsupported` (the model lacks it, or the spec hides it)
//! answers NVML_ERROR_NOT_SUPPORTED; a lost GPU never gets this far (the caller answers
//! NVML_ERROR_GPU_IS_LOST for it).

use std::ffi::CStr;

use gpulse_gpu::health::{GpmActivity, NvLinkSample, ThrottlePolicy};
use gpulse_gpu::simulator::{GpuModel, MAX_MIG_INSTANCES};
use gpulse_gpu::{DeviceInfo, DeviceSample, Reading};

use crate::nvml_h::{
    FieldValue, NvmlResult, PciInfo, ProcessInfo, ProcessUtilizationSample, Ret, Utilization,
    Value, ViolationTime, arch, clock, ecc_counter, enable_state, event_type, field, gpm_metric,
    memory_error, memory_location, nvlink_error, perf_policy, retirement_cause, threshold,
    value_type,
};
use crate::quirks::{Quirk, Quirks};

/// A field value and the `nvmlValueType_t` it travels as: counters and byte counts as
/// unsigned long long, temperatures, counts and flags as unsigned int.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldNumber {
    UnsignedInt(u32),
    UnsignedLongLong(u64),
    /// An unsigned int labelled NVML_VALUE_TYPE_DOUBLE, as affected drivers send field
    /// 82 ([`Quirk::MemoryTempTypedDouble`]).
    IntTypedDouble(u32),
}

/// NVIDIA's PCI vendor id.
const PCI_VENDOR_NVIDIA: u32 = 0x10de;
/// nvmlProcessInfo_t gpuInstanceId / computeInstanceId when MIG is off (nvml.h: 0xFFFFFFFF).
pub const NO_INSTANCE: u32 = u32::MAX;

/// One GPU as NVML sees it at the current step.
#[derive(Debug)]
pub struct Gpu<'a> {
    pub index: u32,
    pub info: &'a DeviceInfo,
    pub sample: &'a DeviceSample,
    pub model: GpuModel,
    /// The simulated clock, microseconds since 1970.
    pub now_us: u64,
    /// The driver numbers field ids 251-273 the 580.82 way (see [`crate::nvml_h::field`]).
    pub renumbered_fields: bool,
    /// Real-driver behaviours this host reproduces.
    pub quirks: &'a Quirks,
}

fn value<T: Clone>(r: &Reading<T>) -> NvmlResult<T> {
    match r {
        Reading::Value(v) => Ok(v.clone()),
        Reading::Unsupported => Err(Ret::NOT_SUPPORTED),
        Reading::Failed => Err(Ret::UNKNOWN),
    }
}

fn present<T>(o: Option<T>) -> NvmlResult<T> {
    o.ok_or(Ret::NOT_SUPPORTED)
}

fn enabled(on: bool) -> u32 {
    if on {
        enable_state::ENABLED
    } else {
        enable_state::DISABLED
    }
}

/// A counter NVML keeps in 32 bits: saturates rather than wraps.
fn u32_counter(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The bytes of `s` as a C string, NUL included, for a buffer of `capacity` bytes:
/// NVML_ERROR_INSUFFICIENT_SIZE when they do not fit.
pub fn c_string(s: &str, capacity: usize) -> NvmlResult<impl Iterator<Item = u8> + '_> {
    if s.len() >= capacity {
        return Err(Ret::INSUFFICIENT_SIZE);
    }
    Ok(s.bytes().chain([0]))
}

/// Writes `s` into a fixed C char array, truncated to fit with its NUL.
fn put_fixed(buf: &mut [std::ffi::c_char], s: &str) {
    let n = s.len().min(buf.len().saturating_sub(1));
    for (dst, src) in buf.iter_mut().zip(s.bytes().take(n)) {
        *dst = src as std::ffi::c_char;
    }
    if let Some(end) = buf.get_mut(n) {
        *end = 0;
    }
}

/// The PCI device id of each simulated board (lspci `10de:xxxx`).
fn pci_device_id(model: GpuModel) -> u32 {
    let device: u32 = match model {
        GpuModel::H100Sxm => 0x2330,
        GpuModel::H200 => 0x2335,
        GpuModel::A100 => 0x20b2,
        GpuModel::L4 => 0x27b8,
    };
    device << 16 | PCI_VENDOR_NVIDIA
}

impl Gpu<'_> {
    // Inventory.

    pub fn uuid(&self) -> &str {
        &self.info.uuid
    }

    pub fn name(&self) -> &str {
        &self.info.model
    }

    pub fn vbios_version(&self) -> &str {
        &self.info.vbios_version
    }

    /// PCI location, parsed from the inventory's `DDDDDDDD:BB:DD.F` bus id.
    pub fn pci_info(&self) -> PciInfo {
        let bus_id = &self.info.pci_bus_id;
        let mut parts = bus_id.split([':', '.']);
        let mut hex = || {
            parts
                .next()
                .and_then(|p| u32::from_str_radix(p, 16).ok())
                .unwrap_or(0)
        };
        let (domain, bus, device) = (hex(), hex(), hex());
        let mut pci = PciInfo {
            busIdLegacy: [0; 16],
            domain,
            bus,
            device,
            pciDeviceId: pci_device_id(self.model),
            // The simulator does not model board vendors: the subsystem is the device itself.
            pciSubSystemId: pci_device_id(self.model),
            busId: [0; 32],
        };
        put_fixed(&mut pci.busId, bus_id);
        put_fixed(
            &mut pci.busIdLegacy,
            &format!("{domain:04X}:{bus:02X}:{device:02X}.0"),
        );
        pci
    }

    /// Total and used memory (nvmlMemory_v2_t). Used memory is a reading, so a host that
    /// hides `memory_used` hides this whole call, total included.
    pub fn memory(&self) -> NvmlResult<(u64, u64)> {
        let total = present(self.info.memory_total_bytes)?;
        let used = value(&self.sample.memory_used_bytes)?;
        Ok((total, used.min(total)))
    }

    pub fn max_clock(&self, clock_type: u32) -> NvmlResult<u32> {
        match clock_type {
            clock::GRAPHICS => present(self.info.max_graphics_clock_mhz),
            clock::SM => present(self.info.max_sm_clock_mhz),
            clock::MEM => present(self.info.max_memory_clock_mhz),
            clock::VIDEO => Err(Ret::NOT_SUPPORTED),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    pub fn default_power_limit(&self) -> NvmlResult<u32> {
        present(self.info.default_power_limit_milliwatts)
    }

    pub fn temperature_threshold(&self, kind: u32) -> NvmlResult<u32> {
        match kind {
            threshold::SHUTDOWN => present(self.info.shutdown_temperature_celsius),
            threshold::SLOWDOWN => present(self.info.slowdown_temperature_celsius),
            threshold::MEM_MAX => present(self.info.memory_max_temperature_celsius),
            threshold::GPU_MAX => present(self.info.gpu_max_operating_temperature_celsius),
            k if k < threshold::COUNT => Err(Ret::NOT_SUPPORTED),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    pub fn max_pcie_generation(&self) -> NvmlResult<u32> {
        present(self.info.max_pcie_generation)
    }

    pub fn max_pcie_width(&self) -> NvmlResult<u32> {
        present(self.info.max_pcie_width)
    }

    pub fn mig_mode(&self) -> NvmlResult<(u32, u32)> {
        let on = enabled(present(self.info.mig_enabled)?);
        Ok((on, on))
    }

    /// nvml.h: the maximum number of MIG devices that can exist, zero when MIG is not
    /// enabled (the H200 probe: 0 with MIG off). Slots without an instance answer
    /// NOT_FOUND from nvmlDeviceGetMigDeviceHandleByIndex.
    pub fn max_mig_device_count(&self) -> NvmlResult<u32> {
        let on = present(self.info.mig_enabled)?;
        Ok(if on { MAX_MIG_INSTANCES } else { 0 })
    }

    fn deprecated(&self) -> NvmlResult<()> {
        if self.quirks.has(Quirk::Deprecated, self.index) {
            return Err(Ret::DEPRECATED);
        }
        Ok(())
    }

    pub fn ecc_mode(&self) -> NvmlResult<(u32, u32)> {
        let on = enabled(present(self.info.ecc_enabled)?);
        Ok((on, on))
    }

    pub fn architecture(&self) -> u32 {
        match self.info.architecture.as_str() {
            "kepler" => arch::KEPLER,
            "maxwell" => arch::MAXWELL,
            "pascal" => arch::PASCAL,
            "volta" => arch::VOLTA,
            "turing" => arch::TURING,
            "ampere" => arch::AMPERE,
            "ada" => arch::ADA,
            "hopper" => arch::HOPPER,
            "blackwell" => arch::BLACKWELL,
            _ => arch::UNKNOWN,
        }
    }

    // Readings.

    pub fn utilization(&self) -> NvmlResult<Utilization> {
        Ok(Utilization {
            gpu: value(&self.sample.gpu_utilization_percent)?,
            memory: value(&self.sample.memory_utilization_percent)?,
        })
    }

    pub fn clock(&self, clock_type: u32) -> NvmlResult<u32> {
        match clock_type {
            clock::GRAPHICS => value(&self.sample.graphics_clock_mhz),
            clock::SM => value(&self.sample.sm_clock_mhz),
            clock::MEM => value(&self.sample.memory_clock_mhz),
            clock::VIDEO => Err(Ret::NOT_SUPPORTED),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    pub fn applications_clock(&self, clock_type: u32) -> NvmlResult<u32> {
        self.deprecated()?;
        match clock_type {
            clock::GRAPHICS | clock::SM => value(&self.sample.applications_sm_clock_mhz),
            clock::MEM => value(&self.sample.applications_memory_clock_mhz),
            clock::VIDEO => Err(Ret::NOT_SUPPORTED),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    /// nvmlDeviceGetTemperature, deprecated in CUDA 13.
    pub fn temperature(&self, sensor: u32) -> NvmlResult<u32> {
        self.deprecated()?;
        self.temperature_v(sensor)
    }

    /// nvmlDeviceGetTemperatureV, its successor.
    pub fn temperature_v(&self, sensor: u32) -> NvmlResult<u32> {
        if sensor != crate::nvml_h::TEMPERATURE_GPU {
            return Err(Ret::INVALID_ARGUMENT);
        }
        value(&self.sample.temperature_celsius)
    }

    pub fn power_usage(&self) -> NvmlResult<u32> {
        value(&self.sample.power_usage_milliwatts)
    }

    pub fn enforced_power_limit(&self) -> NvmlResult<u32> {
        value(&self.sample.power_limit_milliwatts)
    }

    pub fn total_energy(&self) -> NvmlResult<u64> {
        value(&self.sample.energy_millijoules)
    }

    pub fn clocks_event_reasons(&self) -> NvmlResult<u64> {
        value(&self.sample.throttle_reasons).map(|r| r.bits())
    }

    /// nvmlDeviceGetCurrentClocksThrottleReasons, deprecated in CUDA 13.
    pub fn clocks_throttle_reasons(&self) -> NvmlResult<u64> {
        self.deprecated()?;
        self.clocks_event_reasons()
    }

    pub fn supported_clocks_event_reasons(&self) -> NvmlResult<u64> {
        value(&self.sample.throttle_reasons).map(|_| crate::nvml_h::CLOCKS_EVENT_REASONS_ALL)
    }

    /// nvmlDeviceGetSupportedClocksThrottleReasons, deprecated in CUDA 13.
    pub fn supported_clocks_throttle_reasons(&self) -> NvmlResult<u64> {
        self.deprecated()?;
        self.supported_clocks_event_reasons()
    }

    pub fn pcie_generation(&self) -> NvmlResult<u32> {
        value(&self.sample.pcie_generation)
    }

    pub fn pcie_width(&self) -> NvmlResult<u32> {
        value(&self.sample.pcie_width)
    }

    pub fn pcie_replays(&self) -> NvmlResult<u32> {
        value(&self.sample.pcie_replays).map(u32_counter)
    }

    fn throttle_ns(&self, policy: ThrottlePolicy) -> NvmlResult<u64> {
        present(value(&self.sample.throttle_time)?.get(policy))
    }

    pub fn violation_status(&self, policy: u32) -> NvmlResult<ViolationTime> {
        self.deprecated()?;
        if policy == perf_policy::THERMAL
            && self
                .quirks
                .has(Quirk::ThermalViolationUnsupported, self.index)
        {
            return Err(Ret::NOT_SUPPORTED);
        }
        let policy = match policy {
            perf_policy::POWER => ThrottlePolicy::Power,
            perf_policy::THERMAL => ThrottlePolicy::Thermal,
            perf_policy::SYNC_BOOST => ThrottlePolicy::SyncBoost,
            perf_policy::BOARD_LIMIT => ThrottlePolicy::BoardLimit,
            perf_policy::LOW_UTILIZATION => ThrottlePolicy::LowUtilization,
            perf_policy::RELIABILITY => ThrottlePolicy::Reliability,
            perf_policy::TOTAL_APP_CLOCKS => ThrottlePolicy::TotalAppClocks,
            perf_policy::TOTAL_BASE_CLOCKS => ThrottlePolicy::TotalBaseClocks,
            _ => return Err(Ret::INVALID_ARGUMENT),
        };
        Ok(ViolationTime {
            referenceTime: self.now_us,
            violationTime: self.throttle_ns(policy)?,
        })
    }

    /// The pre-580.82 id of a field id as this driver numbers it.
    fn canonical_field(&self, id: u32) -> u32 {
        if !self.renumbered_fields {
            return id;
        }
        match id {
            // 580.82 moved the clock-event reason fields 251-255 to 269-273 ...
            269..=273 => id - 18,
            // ... and power smoothing from 256-273 down to 251-268.
            251..=268 => id + 5,
            other => other,
        }
    }

    /// The value of one field (nvmlFieldValue_t fieldId, scopeId).
    pub fn field_value(&self, id: u32, scope: u32) -> NvmlResult<FieldNumber> {
        let ull = FieldNumber::UnsignedLongLong;
        let ui = FieldNumber::UnsignedInt;
        let s = self.sample;
        Ok(match self.canonical_field(id) {
            field::ECC_SBE_AGG_TOTAL => {
                ull(self.total_ecc_errors(memory_error::CORRECTED, ecc_counter::AGGREGATE)?)
            }
            field::ECC_DBE_AGG_TOTAL => {
                ull(self.total_ecc_errors(memory_error::UNCORRECTED, ecc_counter::AGGREGATE)?)
            }
            // Throttled time, ns. NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP and _SYNC_BOOST
            // are the same ids as PERF_POLICY_POWER and _SYNC_BOOST.
            field::PERF_POLICY_POWER => ull(self.throttle_ns(ThrottlePolicy::Power)?),
            field::PERF_POLICY_THERMAL => ull(self.throttle_ns(ThrottlePolicy::Thermal)?),
            field::PERF_POLICY_SYNC_BOOST => ull(self.throttle_ns(ThrottlePolicy::SyncBoost)?),
            field::PERF_POLICY_BOARD_LIMIT => ull(self.throttle_ns(ThrottlePolicy::BoardLimit)?),
            field::PERF_POLICY_LOW_UTILIZATION => {
                ull(self.throttle_ns(ThrottlePolicy::LowUtilization)?)
            }
            field::PERF_POLICY_RELIABILITY => ull(self.throttle_ns(ThrottlePolicy::Reliability)?),
            field::PERF_POLICY_TOTAL_APP_CLOCKS => {
                ull(self.throttle_ns(ThrottlePolicy::TotalAppClocks)?)
            }
            field::PERF_POLICY_TOTAL_BASE_CLOCKS => {
                ull(self.throttle_ns(ThrottlePolicy::TotalBaseClocks)?)
            }
            // The simulator keeps throttled time per policy, not per reason bit: both
            // thermal reasons report the thermal policy's time, the power brake the board
            // limit's (the simulated scenarios always raise these bits together).
            field::CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN
            | field::CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN => {
                ull(self.throttle_ns(ThrottlePolicy::Thermal)?)
            }
            field::CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN => {
                ull(self.throttle_ns(ThrottlePolicy::BoardLimit)?)
            }
            field::MEMORY_TEMP => {
                let celsius = value(&s.memory_temperature_celsius)?;
                if self.quirks.has(Quirk::MemoryTempTypedDouble, self.index) {
                    FieldNumber::IntTypedDouble(celsius)
                } else {
                    ui(celsius)
                }
            }
            field::TOTAL_ENERGY_CONSUMPTION => ull(value(&s.energy_millijoules)?),
            field::NVLINK_LINK_COUNT => ui(self.nvlinks()?.len() as u32),
            field::PCIE_REPLAY_COUNTER => ull(value(&s.pcie_replays)?),
            field::NVLINK_THROUGHPUT_DATA_TX | field::NVLINK_THROUGHPUT_DATA_RX
                if self.nvlink5() =>
            {
                return Err(Ret::NOT_SUPPORTED);
            }
            field::NVLINK_THROUGHPUT_DATA_TX => ull(self.nvlink_kib(scope, |l| l.tx_bytes)?),
            field::NVLINK_THROUGHPUT_DATA_RX => ull(self.nvlink_kib(scope, |l| l.rx_bytes)?),
            field::NVLINK_COUNT_XMIT_BYTES | field::NVLINK_COUNT_RCV_BYTES if !self.nvlink5() => {
                return Err(Ret::NOT_SUPPORTED);
            }
            field::NVLINK_COUNT_XMIT_BYTES => ull(self.nvlink5_bytes(scope, |l| l.tx_bytes)?),
            field::NVLINK_COUNT_RCV_BYTES => ull(self.nvlink5_bytes(scope, |l| l.rx_bytes)?),
            field::REMAPPED_COR => ui(value(&s.remapped_rows)?.correctable),
            field::REMAPPED_UNC => ui(value(&s.remapped_rows)?.uncorrectable),
            field::REMAPPED_PENDING => ui(u32::from(value(&s.remapped_rows)?.pending)),
            field::REMAPPED_FAILURE => ui(u32::from(value(&s.remapped_rows)?.failure)),
            field::PCIE_COUNT_TX_BYTES => ull(value(&s.pcie_tx_bytes)?),
            field::PCIE_COUNT_RX_BYTES => ull(value(&s.pcie_rx_bytes)?),
            _ => return Err(Ret::NOT_SUPPORTED),
        })
    }

    /// Fills one nvmlFieldValue_t the caller asked for (its fieldId and scopeId).
    pub fn fill_field_value(&self, fv: &mut FieldValue) {
        fv.timestamp = i64::try_from(self.now_us).unwrap_or(i64::MAX);
        fv.latencyUsec = 0;
        match self.field_value(fv.fieldId, fv.scopeId) {
            Ok(FieldNumber::UnsignedInt(v)) => {
                fv.valueType = value_type::UNSIGNED_INT;
                fv.value = Value { uiVal: v };
                fv.nvmlReturn = Ret::SUCCESS.0;
            }
            Ok(FieldNumber::UnsignedLongLong(v)) => {
                fv.valueType = value_type::UNSIGNED_LONG_LONG;
                fv.value = Value { ullVal: v };
                fv.nvmlReturn = Ret::SUCCESS.0;
            }
            Ok(FieldNumber::IntTypedDouble(v)) => {
                // The integer's bits, the rest of the union zero, under the wrong label.
                fv.valueType = value_type::DOUBLE;
                fv.value = Value {
                    ullVal: u64::from(v),
                };
                fv.nvmlReturn = Ret::SUCCESS.0;
            }
            Err(e) => fv.nvmlReturn = e.0,
        }
    }

    /// The GPU's NVLink links: the simulated model's, or `links=N` of them
    /// ([`Quirk::Links`]), link `k` past the model's carrying the data of link
    /// `k mod` their count under its own id.
    fn nvlinks(&self) -> NvmlResult<Vec<NvLinkSample>> {
        let links = value(&self.sample.nvlinks)?;
        let Some(n) = self.quirks.links(self.index) else {
            return Ok(links);
        };
        if links.is_empty() {
            return Ok(links);
        }
        Ok((0..n)
            .map(|k| NvLinkSample {
                link: k,
                ..links[k as usize % links.len()].clone()
            })
            .collect())
    }

    /// Whether the GPU answers the NVLink5 byte counters ([`Quirk::NvLink5Counters`]).
    fn nvlink5(&self) -> bool {
        self.quirks.has(Quirk::NvLink5Counters, self.index)
    }

    /// An NVLink5 byte counter (nvml.h 13.3 lines 2743-2750: fields 201-225 need the
    /// link id in scopeId; no UINT_MAX aggregate is documented for them, and DCGM sums
    /// the links itself, dcgmlib/src/DcgmCMUtils.cpp NvmlFieldRequiresNvLinkAggregate).
    fn nvlink5_bytes(
        &self,
        scope: u32,
        bytes: impl Fn(&NvLinkSample) -> Option<u64>,
    ) -> NvmlResult<u64> {
        if scope >= crate::nvml_h::NVLINK_MAX_LINKS {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let links = self.nvlinks()?;
        present(bytes(present(links.iter().find(|l| l.link == scope))?))
    }

    /// NVLink data throughput counter in KiB (nvml.h 13.3 line 2602: "NVLink TX Data
    /// throughput in KiB"), for the link in `scope`, or summed over all links for
    /// UINT_MAX (line 2599).
    fn nvlink_kib(
        &self,
        scope: u32,
        bytes: impl Fn(&NvLinkSample) -> Option<u64>,
    ) -> NvmlResult<u64> {
        let links = self.nvlinks()?;
        let total = if scope == field::SCOPE_ALL_LINKS {
            links.iter().filter_map(&bytes).sum()
        } else {
            if scope >= crate::nvml_h::NVLINK_MAX_LINKS {
                return Err(Ret::INVALID_ARGUMENT);
            }
            let link = present(links.iter().find(|l| l.link == scope))?;
            present(bytes(link))?
        };
        Ok(total / 1024)
    }

    /// A link's state. On a GPU with NVLink, the slots past its links (up to
    /// NVML_NVLINK_MAX_LINKS) answer too, as disabled: only the link-count field (91)
    /// says which links exist (DCGM bounds link ids by it). A GPU without NVLink, or
    /// whose host hides it (the H200 VM probe), answers NOT_SUPPORTED for every slot.
    pub fn nvlink_state(&self, link: u32) -> NvmlResult<u32> {
        if link >= crate::nvml_h::NVLINK_MAX_LINKS {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let links = self.nvlinks()?;
        Ok(links
            .iter()
            .find(|l| l.link == link)
            .map_or(enable_state::DISABLED, |l| enabled(l.active)))
    }

    pub fn nvlink_error_counter(&self, link: u32, counter: u32) -> NvmlResult<u64> {
        if link >= crate::nvml_h::NVLINK_MAX_LINKS {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let links = self.nvlinks()?;
        let link = present(links.iter().find(|l| l.link == link))?;
        present(match counter {
            nvlink_error::DL_REPLAY => link.replay_errors,
            nvlink_error::DL_RECOVERY => link.recovery_errors,
            nvlink_error::DL_CRC_FLIT => link.crc_flit_errors,
            nvlink_error::DL_CRC_DATA => link.crc_data_errors,
            nvlink_error::DL_ECC_DATA => None,
            _ => return Err(Ret::INVALID_ARGUMENT),
        })
    }

    /// ECC error totals. The simulator counts since it started, which is both the
    /// volatile (since driver load) and the aggregate (lifetime) count here.
    pub fn total_ecc_errors(&self, error_type: u32, counter: u32) -> NvmlResult<u64> {
        if counter != ecc_counter::VOLATILE && counter != ecc_counter::AGGREGATE {
            return Err(Ret::INVALID_ARGUMENT);
        }
        if !present(self.info.ecc_enabled)? {
            return Err(Ret::NOT_SUPPORTED);
        }
        match error_type {
            memory_error::CORRECTED => value(&self.sample.ecc_corrected_errors),
            memory_error::UNCORRECTED => value(&self.sample.ecc_uncorrected_errors),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    /// ECC errors by location: all of them are in device memory; the on-chip locations
    /// a Hopper or Ampere GPU reports stay at 0, the older ones are not supported.
    pub fn memory_error_counter(
        &self,
        error_type: u32,
        counter: u32,
        location: u32,
    ) -> NvmlResult<u64> {
        let total = self.total_ecc_errors(error_type, counter)?;
        match location {
            memory_location::DEVICE_MEMORY => Ok(total),
            memory_location::L1_CACHE
            | memory_location::L2_CACHE
            | memory_location::REGISTER_FILE
            | memory_location::SRAM => Ok(0),
            l if l < memory_location::COUNT => Err(Ret::NOT_SUPPORTED),
            _ => Err(Ret::INVALID_ARGUMENT),
        }
    }

    /// (correctable, uncorrectable, pending, failure).
    pub fn remapped_rows(&self) -> NvmlResult<(u32, u32, u32, u32)> {
        let r = value(&self.sample.remapped_rows)?;
        Ok((
            r.correctable,
            r.uncorrectable,
            u32::from(r.pending),
            u32::from(r.failure),
        ))
    }

    /// Retired pages for one cause as (address, timestamp µs). The simulator counts
    /// pages; their addresses are made up, one 64 KiB page apart.
    pub fn retired_pages(&self, cause: u32) -> NvmlResult<Vec<(u64, u64)>> {
        let pages = value(&self.sample.retired_pages)?;
        let (count, base) = match cause {
            retirement_cause::MULTIPLE_SINGLE_BIT_ECC_ERRORS => {
                (pages.single_bit_ecc, 0x1_0000_0000)
            }
            retirement_cause::DOUBLE_BIT_ECC_ERROR => (pages.double_bit_ecc, 0x2_0000_0000),
            _ => return Err(Ret::INVALID_ARGUMENT),
        };
        Ok((0..u64::from(count))
            .map(|i| (base + i * 0x1_0000, self.now_us))
            .collect())
    }

    pub fn retired_pages_pending(&self) -> NvmlResult<u32> {
        value(&self.sample.retired_pages).map(|p| enabled(p.pending))
    }

    pub fn compute_processes(&self) -> NvmlResult<Vec<ProcessInfo>> {
        Ok(value(&self.sample.processes)?
            .iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                usedGpuMemory: p.used_memory_bytes.unwrap_or(0),
                gpuInstanceId: NO_INSTANCE,
                computeInstanceId: NO_INSTANCE,
            })
            .collect())
    }

    /// Per-process utilisation samples newer than `last_seen_us`; NVML_ERROR_NOT_FOUND
    /// when there are none. The simulator keeps one sample per step, stamped now.
    pub fn process_utilization(
        &self,
        last_seen_us: u64,
    ) -> NvmlResult<Vec<ProcessUtilizationSample>> {
        let processes = value(&self.sample.processes)?;
        if self.now_us <= last_seen_us {
            return Err(Ret::NOT_FOUND);
        }
        let memory = self.sample.memory_utilization_percent.value().unwrap_or(0);
        // NVML samples only processes that used the GPU since the timestamp: an idle
        // process is left out, and none at all is NOT_FOUND (the H200 probe, idle).
        let samples: Vec<_> = processes
            .iter()
            .filter(|p| p.sm_utilization_percent.unwrap_or(0) > 0)
            .map(|p| ProcessUtilizationSample {
                pid: p.pid,
                timeStamp: self.now_us,
                smUtil: p.sm_utilization_percent.unwrap_or(0),
                memUtil: memory,
                encUtil: 0,
                decUtil: 0,
            })
            .collect();
        if samples.is_empty() {
            return Err(Ret::NOT_FOUND);
        }
        Ok(samples)
    }

    pub fn gpm_supported(&self) -> bool {
        !self.sample.gpm.is_unsupported()
    }

    pub fn gpm_activity(&self) -> NvmlResult<GpmActivity> {
        value(&self.sample.gpm)
    }

    /// Event types this GPU can deliver: XID unless the host hides XIDs; ECC, P-state and
    /// clock events as a data-centre GPU lists them (the mock never raises those).
    pub fn supported_event_types(&self) -> u64 {
        let mut types = event_type::PSTATE | event_type::CLOCK;
        if !matches!(self.sample.xid_errors, Reading::Unsupported) {
            types |= event_type::XID_CRITICAL_ERROR;
        }
        if self.info.ecc_enabled == Some(true) {
            types |= event_type::SINGLE_BIT_ECC_ERROR | event_type::DOUBLE_BIT_ECC_ERROR;
        }
        types
    }
}

/// A GPM metric over an interval whose activity is `activity`: its value in percent, as
/// NVML reports these metrics, and its names (nvmlGpmMetric_t metricInfo).
pub fn gpm_metric(activity: &GpmActivity, metric: u32) -> NvmlResult<(f64, [&'static CStr; 3])> {
    let (ratio, names) = match metric {
        gpm_metric::SM_UTIL => (activity.sm_active, [c"SM_UTIL", c"SM utilization", c"%"]),
        gpm_metric::SM_OCCUPANCY => (
            activity.sm_occupancy,
            [c"SM_OCCUPANCY", c"SM occupancy", c"%"],
        ),
        gpm_metric::ANY_TENSOR_UTIL => (
            activity.tensor_active,
            [c"ANY_TENSOR_UTIL", c"Any tensor utilization", c"%"],
        ),
        gpm_metric::DRAM_BW_UTIL => (
            activity.dram_active,
            [c"DRAM_BW_UTIL", c"DRAM bandwidth utilization", c"%"],
        ),
        _ => return Err(Ret::NOT_SUPPORTED),
    };
    Ok((ratio * 100.0, names))
}

#[cfg(test)]
mod tests {
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;

    use super::*;

    #[test]
    fn a_string_fits_with_its_nul_or_is_insufficient_size() {
        let bytes: Vec<u8> = c_string("H100!", 6).unwrap().collect();
        assert_eq!(bytes, b"H100!\0");
        assert!(matches!(
            c_string("H100 80GB", 6),
            Err(Ret::INSUFFICIENT_SIZE)
        ));
        assert!(matches!(c_string("", 0), Err(Ret::INSUFFICIENT_SIZE)));
    }

    fn with_gpu(spec: &str, renumbered: bool, f: impl FnOnce(&Gpu<'_>)) {
        let mut sim = Simulator::new(spec.parse().unwrap());
        let samples = sim.sample(0);
        f(&Gpu {
            index: 0,
            info: &sim.inventory()[0],
            sample: &samples[0],
            model: sim.spec().model,
            now_us: 1_000_000,
            renumbered_fields: renumbered,
            quirks: &Quirks::default(),
        });
    }

    #[test]
    fn the_pci_bus_id_is_parsed_into_its_parts() {
        with_gpu("gpus=2,model=a100", false, |g| {
            let pci = g.pci_info();
            assert_eq!((pci.domain, pci.bus, pci.device), (0, 0x18, 0));
            assert_eq!(pci.pciDeviceId, 0x20b2_10de);
            let legacy: Vec<u8> = pci.busIdLegacy.iter().map(|c| *c as u8).collect();
            assert_eq!(&legacy[..13], b"0000:18:00.0\0");
        });
    }

    #[test]
    fn drivers_from_580_82_number_the_clock_event_fields_from_269() {
        with_gpu("gpus=1,scenario=thermal", false, |old| {
            assert!(
                old.field_value(field::CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN, 0)
                    .is_ok()
            );
            assert_eq!(old.field_value(269, 0).err(), Some(Ret::NOT_SUPPORTED));
        });
        with_gpu("gpus=1,scenario=thermal", true, |new| {
            assert!(new.field_value(269, 0).is_ok());
            // 251 is power smoothing there, which the mock does not model.
            assert_eq!(new.field_value(251, 0).err(), Some(Ret::NOT_SUPPORTED));
        });
    }

    #[test]
    fn nvlink_throughput_is_in_kib_per_link_or_summed() {
        with_gpu("gpus=1,scenario=training", false, |g| {
            let links = g.sample.nvlinks.get().unwrap();
            let kib = |scope| match g.field_value(field::NVLINK_THROUGHPUT_DATA_TX, scope) {
                Ok(FieldNumber::UnsignedLongLong(v)) => v,
                other => panic!("{other:?}"),
            };
            assert_eq!(kib(2), links[2].tx_bytes.unwrap() / 1024);
            let sum: u64 = links.iter().map(|l| l.tx_bytes.unwrap()).sum();
            assert_eq!(kib(field::SCOPE_ALL_LINKS), sum / 1024);
            assert_eq!(
                g.field_value(field::NVLINK_THROUGHPUT_DATA_TX, 18).err(),
                Some(Ret::NOT_SUPPORTED),
                "an unused link slot"
            );
            assert_eq!(
                g.field_value(field::NVLINK_THROUGHPUT_DATA_TX, 36).err(),
                Some(Ret::INVALID_ARGUMENT)
            );
        });
        with_gpu("gpus=1,model=l4", false, |g| {
            assert_eq!(
                g.field_value(field::NVLINK_THROUGHPUT_DATA_TX, 0).err(),
                Some(Ret::NOT_SUPPORTED)
            );
        });
    }
}
