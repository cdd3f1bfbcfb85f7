//! The NVML mock library against the simulator it wraps: through the unmodified NVML
//! backend (what gpulse reads today), and through nvml-wrapper's own API and raw calls
//! (every other export, so that a backend that reads more finds them right).
//!
//! The library is process-global state and cargo runs these tests on several threads,
//! so each test holds [`serial`] while it configures and reads the library. Expected
//! values always come from a [`Simulator`] built from the same spec and stepped the same
//! number of times, never from figures written here.

#![allow(
    unsafe_code,
    reason = "dlsym of the library's controls, and the raw NVML calls nvml-wrapper does not wrap"
)]

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_ulonglong};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use gpulse_gpu::health::ThrottlePolicy;
use gpulse_gpu::nvml::NvmlBackend;
use gpulse_gpu::simulator::{GpuModel, Scenario, SimSpec, Simulator};
use gpulse_gpu::{
    BackendError, DeviceInfo, DeviceSample, DeviceState, Field, FieldStatus, GpuBackend, Reading,
};
use nvml_wrapper::bitmasks::InitFlags;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, MemoryLocation, PerformancePolicy, RetirementCause,
    TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::{DeviceArchitecture, SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::*;
use nvml_wrapper::{Device, FieldIdScheme, Nvml};
use nvml_wrapper_sys::bindings::{nvmlFieldValue_t, nvmlMemory_v2_t, nvmlProcessInfo_t};

/// The mock's simulated time per step (gpulse_nvml_mock::STEP_MS). The simulator only
/// looks at differences between timestamps, so the reference starts at 0.
const STEP_MS: i64 = 1_000;
const STEP_US: u64 = 1_000_000;
/// Reading rounds per backend comparison: enough for the `lost` GPU to go, XIDs to
/// repeat and counters to move.
const ROUNDS: u64 = 4;

/// nvmlReturn_t codes the raw calls check (nvml.h).
const SUCCESS: u32 = 0;
const UNINITIALIZED: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const NOT_SUPPORTED: u32 = 3;
const INSUFFICIENT_SIZE: u32 = 7;
const ARGUMENT_VERSION_MISMATCH: u32 = 25;

/// The library's tests, one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where cargo put a shared library of this workspace: beside the test binary
/// (target/<profile>/deps, where `cargo test` builds it), or one level up (where
/// `cargo build` copies it).
fn library_path(file: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    let candidates: Vec<PathBuf> = [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(file))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{file} is not in {candidates:?}; build it with \
                 `cargo build -p gpulse-nvml-mock -p gpulse-nvml-mock-legacy` \
                 (`cargo test -p gpulse-nvml-mock` builds both)"
            )
        })
}

/// One of the mock libraries, kept loaded for the whole test process so that its
/// state lives as long as the tests (every dlopen of the same path shares it).
struct MockLib {
    path: PathBuf,
    lib: libloading::Library,
}

impl MockLib {
    fn load(file: &str) -> MockLib {
        let path = library_path(file);
        // SAFETY: the library is ours; loading it runs no initialisers with preconditions.
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
        MockLib { path, lib }
    }

    fn symbol<T>(&self, name: &str) -> libloading::Symbol<'_, T> {
        // SAFETY: every caller names T as the export's C signature (src/abi.rs).
        unsafe { self.lib.get(name.as_bytes()) }
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", self.path.display()))
    }

    fn configure(&self, spec: &str) {
        let spec_c = CString::new(spec).expect("no NUL in a spec");
        let configure =
            self.symbol::<unsafe extern "C" fn(*const c_char) -> c_int>("gpulse_mock_configure");
        // SAFETY: a NUL-terminated string that outlives the call.
        let rc = unsafe { configure(spec_c.as_ptr()) };
        assert_eq!(rc, 0, "gpulse_mock_configure({spec:?})");
    }

    fn set_driver_version(&self, version: Option<&str>) {
        let version = version.map(|v| CString::new(v).expect("no NUL"));
        let set = self.symbol::<unsafe extern "C" fn(*const c_char) -> c_int>(
            "gpulse_mock_set_driver_version",
        );
        let ptr = version.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: NULL or a NUL-terminated string that outlives the call.
        assert_eq!(unsafe { set(ptr) }, 0);
    }

    /// Reproduces real-driver quirks until the next configure (`name[@gpu]+...`).
    fn set_quirks(&self, quirks: &str) {
        let quirks = CString::new(quirks).expect("no NUL");
        let set =
            self.symbol::<unsafe extern "C" fn(*const c_char) -> c_int>("gpulse_mock_set_quirks");
        // SAFETY: a NUL-terminated string that outlives the call.
        assert_eq!(unsafe { set(quirks.as_ptr()) }, 0);
    }

    fn advance(&self, steps: u32) {
        let advance = self.symbol::<extern "C" fn(c_uint) -> c_int>("gpulse_mock_advance");
        assert_eq!(advance(steps), 0);
    }

    fn steps(&self) -> u64 {
        self.symbol::<extern "C" fn() -> c_ulonglong>("gpulse_mock_steps")()
    }

    /// nvml-wrapper on this library.
    fn nvml(&self) -> Nvml {
        Nvml::builder()
            .lib_path(self.path.as_os_str())
            .init()
            .unwrap_or_else(|e| panic!("Nvml::init on {}: {e}", self.path.display()))
    }

    /// The unmodified NVML backend on this library.
    fn backend(&self) -> NvmlBackend {
        NvmlBackend::open(Some(self.path.as_os_str()))
            .unwrap_or_else(|e| panic!("NvmlBackend::open on {}: {e}", self.path.display()))
    }
}

fn mock() -> &'static MockLib {
    static LIB: OnceLock<MockLib> = OnceLock::new();
    LIB.get_or_init(|| MockLib::load("libgpulse_nvml_mock.so"))
}

fn legacy() -> &'static MockLib {
    static LIB: OnceLock<MockLib> = OnceLock::new();
    LIB.get_or_init(|| MockLib::load("libgpulse_nvml_mock_legacy.so"))
}

/// The simulator the library wraps, built from the same spec, and its readings as the
/// library takes them: one per step, the first at configuration.
struct Reference {
    sim: Simulator,
    steps: i64,
    latest: Vec<DeviceSample>,
}

impl Reference {
    fn new(spec: &str) -> Reference {
        let mut r = Reference {
            sim: Simulator::new(spec.parse().expect("a valid spec")),
            steps: 0,
            latest: Vec::new(),
        };
        r.step();
        r
    }

    fn step(&mut self) -> &[DeviceSample] {
        self.latest = self.sim.sample(self.steps * STEP_MS);
        self.steps += 1;
        &self.latest
    }

    /// Steps until the library's count of readings is reached.
    fn at(mut self, steps: u64) -> Reference {
        while (self.steps as u64) < steps {
            self.step();
        }
        self
    }

    fn gpu(&self, index: usize) -> &DeviceSample {
        &self.latest[index]
    }
}

/// The mock configured with `spec`, and the simulator to compare with.
fn configured(lib: &MockLib, spec: &str) -> Reference {
    lib.configure(spec);
    Reference::new(spec)
}

/// Fields compared exactly, reading by reading. XID counts arrive on the backend's event
/// thread, GPM ratios go through percent and back, and processes are attributed from
/// this machine's /proc: those three are checked by their own tests.
const EXACT_FIELDS_EXCLUDED: [Field; 3] = [Field::Xid, Field::Gpm, Field::Processes];

/// A sample cut down to the fields compared exactly.
fn as_backend_reads(sample: &DeviceSample) -> DeviceSample {
    let mut s = sample.clone();
    for f in EXACT_FIELDS_EXCLUDED {
        s.mark(f, FieldStatus::Unsupported);
    }
    s
}

/// An inventory entry as the backend reads it (every field).
fn inventory_as_backend_reads(d: &DeviceInfo) -> DeviceInfo {
    d.clone()
}

/// Opens the backend on `lib` configured with `spec`, reads `ROUNDS` rounds, and checks
/// inventory and every reading against the simulator. `missing` are fields the library
/// cannot answer (an old driver's missing functions): the backend must report them
/// unsupported.
fn assert_backend_matches(lib: &MockLib, spec: &str, missing: &[Field]) -> Vec<Vec<DeviceSample>> {
    assert_backend_matches_with(lib, spec, "", missing, &|_| {})
}

/// As [`assert_backend_matches`], with `adjust` applied to each expected reading.
/// `quirks` are the real-driver behaviours the library reproduces meanwhile.
fn assert_backend_matches_with(
    lib: &MockLib,
    spec: &str,
    quirks: &str,
    missing: &[Field],
    adjust: &dyn Fn(&mut DeviceSample),
) -> Vec<Vec<DeviceSample>> {
    let mut reference = configured(lib, spec);
    lib.set_quirks(quirks);
    let mut backend = lib.backend();
    let got: Vec<_> = backend
        .inventory()
        .iter()
        .map(inventory_as_backend_reads)
        .collect();
    let want: Vec<_> = reference
        .sim
        .inventory()
        .iter()
        .map(inventory_as_backend_reads)
        .collect();
    assert_eq!(got, want, "{spec}: inventory");

    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        if round > 1 {
            reference.step();
        }
        // The backend ignores the timestamp: the library keeps its own clock.
        let got = backend.sample(0);
        assert_eq!(got.len(), reference.latest.len(), "{spec}: GPUs");
        for (index, (got, want)) in got.iter().zip(&reference.latest).enumerate() {
            let mut want = want.clone();
            if want.state == DeviceState::Ok {
                for f in missing {
                    want.mark(*f, FieldStatus::Unsupported);
                }
                adjust(&mut want);
            }
            assert_eq!(
                as_backend_reads(got),
                as_backend_reads(&want),
                "{spec}: round {round}, GPU {index}"
            );
        }
        rounds.push(got);
    }
    assert_eq!(lib.steps(), ROUNDS, "{spec}: one step per reading round");
    rounds
}

// The NVML backend against the library.

#[test]
fn the_backend_reads_what_the_simulator_produces_in_every_scenario() {
    let _serial = serial();
    let scenarios = Scenario::NAMES
        .iter()
        .map(|(scenario, _)| format!("gpus=2,scenario={scenario},seed=3"));
    let models = GpuModel::NAMES
        .iter()
        .map(|(model, _)| format!("gpus=3,model={model},scenario=thermal,seed=11"));
    for spec in scenarios.chain(models) {
        assert_backend_matches(mock(), &spec, &[]);
    }
}

#[test]
fn fields_an_opaque_host_hides_come_back_unsupported() {
    let _serial = serial();
    let hidden = [
        Field::Energy,
        Field::PcieReplays,
        Field::Temperature,
        Field::ThrottleReasons,
    ];
    let names: Vec<_> = hidden.iter().map(|f| f.name()).collect();
    let spec = format!("gpus=2,scenario=power-cap,hide={}", names.join("+"));
    let rounds = assert_backend_matches(mock(), &spec, &[]);
    for sample in rounds.iter().flatten() {
        for f in hidden {
            assert_eq!(sample.field_status(f), FieldStatus::Unsupported, "{f:?}");
        }
        assert_eq!(sample.field_status(Field::SmClock), FieldStatus::Read);
        assert_eq!(sample.field_status(Field::PowerLimit), FieldStatus::Read);
    }

    // Used memory comes with the total in one NVML call: hiding it hides both.
    mock().configure("gpus=1,hide=memory_used");
    let mut backend = mock().backend();
    assert_eq!(backend.inventory()[0].memory_total_bytes, None);
    assert!(backend.sample(0)[0].memory_used_bytes.is_unsupported());
}

#[test]
fn a_gpu_lost_mid_run_is_lost_while_the_others_carry_on() {
    let _serial = serial();
    let rounds = assert_backend_matches(mock(), "gpus=3,scenario=lost", &[]);
    assert!(rounds[0].iter().all(|s| s.state == DeviceState::Ok));
    for round in &rounds[1..] {
        assert_eq!(round[2].state, DeviceState::Lost);
        assert!(round[..2].iter().all(|s| s.state == DeviceState::Ok));
        assert!(round[..2].iter().all(|s| s.sm_clock_mhz.value().is_some()));
    }
}

#[test]
fn an_old_driver_without_newer_functions_opens_and_reports_them_unsupported() {
    let _serial = serial();
    // Without nvmlDeviceGetFieldValues: no memory temperature, PCIe byte counters,
    // remapped rows or NVLink throughput; NVLink state and errors still come.
    assert_backend_matches_with(
        legacy(),
        "gpus=2,scenario=training",
        "",
        &[
            Field::Energy,
            Field::MemoryTemperature,
            Field::PcieThroughput,
            Field::RemappedRows,
        ],
        &|want| {
            if let Reading::Value(links) = &mut want.nvlinks {
                for l in links {
                    l.tx_bytes = None;
                    l.rx_bytes = None;
                }
            }
        },
    );

    // The symbols are missing, not failing: nvml-wrapper says so when they are called.
    let nvml = legacy().nvml();
    let device = nvml.device_by_index(0).expect("GPU 0");
    let missing = |r: Result<(), NvmlError>| {
        assert!(matches!(r, Err(NvmlError::FailedToLoadSymbol(_))), "{r:?}");
    };
    missing(device.total_energy_consumption().map(drop));
    missing(
        device
            .field_values_for(&[FieldId(NVML_FI_DEV_MEMORY_TEMP)])
            .map(drop),
    );
    missing(device.running_compute_processes().map(drop));
    missing(device.gpm_support().map(drop));
    assert!(nvml.lib().nvmlDeviceGetRemappedRows.is_err());
    // What an old driver has still works.
    assert!(device.current_throttle_reasons().is_ok());
    assert!(device.violation_status(PerformancePolicy::Power).is_ok());
}

#[test]
fn drivers_from_580_82_get_the_renumbered_clock_event_fields() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=1,scenario=thermal").at(4);
    mock().advance(3);
    let thermal_ns = |r: &Reference| value(&r.gpu(0).throttle_time).get(ThrottlePolicy::Thermal);
    let sw_thermal = NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN;

    mock().set_driver_version(Some("580.82.07"));
    let nvml = mock().nvml();
    assert_eq!(ok(nvml.sys_driver_version()), "580.82.07");
    assert_eq!(nvml.field_id_scheme(), FieldIdScheme::V13Update1);
    let device = nvml.device_by_index(0).expect("GPU 0");
    // nvml-wrapper asks for 269; the library answers it as that driver would.
    let fields = device
        .field_values_for(&[FieldId(sw_thermal)])
        .expect("field values");
    assert_eq!(sample_u64(&fields[0]), thermal_ns(&reference));
    // 251 itself is power smoothing on that driver.
    assert_eq!(
        raw_field(&device, sw_thermal, 0).nvmlReturn,
        NOT_SUPPORTED,
        "251 on a 580.82 driver"
    );
    drop(nvml);

    mock().set_driver_version(None);
    let nvml = mock().nvml();
    assert_eq!(nvml.field_id_scheme(), FieldIdScheme::V12);
    let device = nvml.device_by_index(0).expect("GPU 0");
    mock().advance(1);
    assert_eq!(mock().steps(), 5);
    reference.step();
    let raw = raw_field(&device, sw_thermal, 0);
    assert_eq!(Some(ull(&raw)), thermal_ns(&reference));
}

#[test]
fn the_environment_configures_the_library_in_a_fresh_process() {
    for (spec, ok) in [
        ("gpus=3,model=l4,scenario=idle,seed=5", true),
        ("gpus=0", false),
    ] {
        let out = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "environment_child", "--ignored", "--nocapture"])
            .env("GPULSE_NVML_MOCK", spec)
            .env("GPULSE_NVML_MOCK_DRIVER", "535.183.01")
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{spec}: {stdout}\n{stderr}"
        );
        if !ok {
            assert!(
                stderr.contains("GPULSE_NVML_MOCK: invalid simulator spec"),
                "{spec}: the reason is on stderr: {stderr}"
            );
        }
    }
}

#[test]
#[ignore = "run in a child process by the_environment_configures_the_library_in_a_fresh_process"]
fn environment_child() {
    // Only the parent test sets the variable; run alone, there is nothing to check.
    let Ok(spec) = std::env::var("GPULSE_NVML_MOCK") else {
        return;
    };
    let count = mock().symbol::<unsafe extern "C" fn(*mut c_uint) -> u32>("nvmlDeviceGetCount_v2");
    let mut n = 0;
    // SAFETY: a writable count; nothing in this fresh process has initialised NVML yet.
    assert_eq!(unsafe { count(&mut n) }, UNINITIALIZED, "before nvmlInit");
    match spec.parse::<SimSpec>() {
        Ok(parsed) => {
            let init = mock().symbol::<extern "C" fn() -> u32>("nvmlInit_v2");
            let shutdown = mock().symbol::<extern "C" fn() -> u32>("nvmlShutdown");
            assert_eq!(init(), 0, "nvmlInit_v2");
            assert_eq!(shutdown(), 0, "nvmlShutdown");
            assert_eq!(shutdown(), UNINITIALIZED, "one shutdown per init");
            let backend = mock().backend();
            let want: Vec<_> = Simulator::new(parsed)
                .inventory()
                .iter()
                .map(|d| DeviceInfo {
                    driver_version: "535.183.01".to_string(),
                    ..inventory_as_backend_reads(d)
                })
                .collect();
            let got: Vec<_> = backend
                .inventory()
                .iter()
                .map(inventory_as_backend_reads)
                .collect();
            assert_eq!(got, want);
        }
        Err(_) => {
            let err = NvmlBackend::open(Some(mock().path.as_os_str())).expect_err("a bad spec");
            assert!(matches!(err, BackendError::Nvml { .. }), "{err:?}");
        }
    }
}

// nvml-wrapper's API against the library: the ABI, export by export.

/// The value of an NVML call that must succeed.
#[track_caller]
fn ok<T>(r: Result<T, NvmlError>) -> T {
    r.unwrap_or_else(|e| panic!("NVML call failed: {e:?}"))
}

fn value<T: Clone>(r: &Reading<T>) -> T {
    r.get().cloned().expect("the simulator read a value")
}

fn sample_u64(sample: &Result<FieldValueSample, NvmlError>) -> Option<u64> {
    match sample {
        Ok(FieldValueSample {
            value: Ok(SampleValue::U64(v)),
            ..
        }) => Some(*v),
        other => panic!("{other:?}"),
    }
}

fn sample_u32(sample: &Result<FieldValueSample, NvmlError>) -> u32 {
    match sample {
        Ok(FieldValueSample {
            value: Ok(SampleValue::U32(v)),
            ..
        }) => *v,
        other => panic!("{other:?}"),
    }
}

/// nvmlDeviceGetFieldValues for one field with a scope id (which nvml-wrapper's
/// `FieldId` cannot carry).
fn raw_field(device: &Device<'_>, field_id: u32, scope_id: u32) -> nvmlFieldValue_t {
    raw_fields(device, &[(field_id, scope_id)])[0]
}

fn raw_fields(device: &Device<'_>, ids: &[(u32, u32)]) -> Vec<nvmlFieldValue_t> {
    let get = device
        .nvml()
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .expect("nvmlDeviceGetFieldValues");
    let mut values: Vec<nvmlFieldValue_t> = ids
        .iter()
        .map(|&(field_id, scope_id)| {
            // SAFETY: a plain C struct, for which all zeroes is a valid value.
            let mut v: nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            v.fieldId = field_id;
            v.scopeId = scope_id;
            v
        })
        .collect();
    // SAFETY: a live handle and an array of `ids.len()` entries.
    let rc = unsafe { get(device.handle(), values.len() as c_int, values.as_mut_ptr()) };
    assert_eq!(rc, SUCCESS, "nvmlDeviceGetFieldValues");
    values
}

fn ull(v: &nvmlFieldValue_t) -> u64 {
    assert_eq!(
        v.nvmlReturn, SUCCESS,
        "field {} scope {}",
        v.fieldId, v.scopeId
    );
    assert_eq!(v.valueType, 3, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG");
    // SAFETY: valueType says the library wrote ullVal.
    unsafe { v.value.ullVal }
}

#[test]
fn the_inventory_through_nvml_wrapper() {
    let _serial = serial();
    for model in ["h100-sxm", "a100", "l4"] {
        let reference = configured(mock(), &format!("gpus=2,model={model},seed=4"));
        let nvml = mock().nvml();
        assert_eq!(ok(nvml.device_count()), 2);
        assert_eq!(
            ok(nvml.sys_driver_version()),
            reference.sim.inventory()[0].driver_version.clone()
        );
        assert!(nvml.sys_nvml_version().is_ok_and(|v| v.starts_with("12.")));
        for info in reference.sim.inventory() {
            let d = nvml.device_by_index(info.index).expect("a device");
            assert_eq!(ok(d.index()), info.index);
            assert_eq!(ok(d.uuid()), info.uuid);
            assert_eq!(ok(d.name()), info.model);
            assert_eq!(ok(d.vbios_version()), info.vbios_version);
            let pci = d.pci_info().expect("PCI info");
            assert_eq!(pci.bus_id, info.pci_bus_id);
            assert_eq!(pci.pci_device_id & 0xffff, 0x10de, "NVIDIA's vendor id");
            assert_eq!(
                d.memory_info().map(|m| m.total).ok(),
                info.memory_total_bytes
            );
            assert_eq!(d.max_clock_info(Clock::SM).ok(), info.max_sm_clock_mhz);
            assert_eq!(
                d.max_clock_info(Clock::Memory).ok(),
                info.max_memory_clock_mhz
            );
            assert_eq!(
                d.max_clock_info(Clock::Graphics).ok(),
                info.max_graphics_clock_mhz
            );
            assert_eq!(
                d.power_management_limit_default().ok(),
                info.default_power_limit_milliwatts
            );
            for (threshold, want) in [
                (
                    TemperatureThreshold::Shutdown,
                    info.shutdown_temperature_celsius,
                ),
                (
                    TemperatureThreshold::Slowdown,
                    info.slowdown_temperature_celsius,
                ),
                (
                    TemperatureThreshold::MemoryMax,
                    info.memory_max_temperature_celsius,
                ),
                (
                    TemperatureThreshold::GpuMax,
                    info.gpu_max_operating_temperature_celsius,
                ),
            ] {
                assert_eq!(
                    d.temperature_threshold(threshold).ok(),
                    want,
                    "{threshold:?}"
                );
            }
            assert_eq!(d.max_pcie_link_gen().ok(), info.max_pcie_generation);
            assert_eq!(d.max_pcie_link_width().ok(), info.max_pcie_width);
            assert_eq!(d.mig_mode().map(|m| m.current == 1).ok(), info.mig_enabled);
            assert_eq!(ok(d.mig_device_count()), 0);
            assert_eq!(
                d.is_ecc_enabled().map(|e| e.currently_enabled).ok(),
                info.ecc_enabled
            );
            let arch = match info.architecture.as_str() {
                "hopper" => DeviceArchitecture::Hopper,
                "ampere" => DeviceArchitecture::Ampere,
                "ada" => DeviceArchitecture::Ada,
                other => panic!("a new architecture {other}: map it in src/device.rs"),
            };
            assert_eq!(ok(d.architecture()), arch);
            // Every slot up to NVML_NVLINK_MAX_LINKS answers on a GPU with NVLink;
            // the link-count field says how many links exist.
            let answering = (0..36)
                .filter(|l| d.link_wrapper_for(*l).is_active().is_ok())
                .count();
            let count = match d
                .field_values_for(&[FieldId(NVML_FI_DEV_NVLINK_LINK_COUNT)])
                .expect("field values")
                .remove(0)
            {
                Ok(FieldValueSample {
                    value: Ok(SampleValue::U32(n)),
                    ..
                }) => n,
                _ => 0,
            };
            assert_eq!(Some(count), info.nvlink_count);
            assert_eq!(answering, if count > 0 { 36 } else { 0 });
            assert!(d.supported_throttle_reasons().is_ok_and(|r| r.is_all()));
            assert!(
                d.supported_event_types()
                    .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR))
            );
        }
    }
}

#[test]
fn readings_through_nvml_wrapper() {
    let _serial = serial();
    for spec in [
        "gpus=2,scenario=pcie-degraded",
        "gpus=2,scenario=app-clocks,model=a100",
    ] {
        let mut reference = configured(mock(), spec);
        let nvml = mock().nvml();
        let devices: Vec<_> = (0..2)
            .map(|i| nvml.device_by_index(i).expect("a device"))
            .collect();
        for step in 1..=3 {
            if step > 1 {
                mock().advance(1);
                reference.step();
            }
            for (d, s) in devices.iter().zip(&reference.latest) {
                let u = d.utilization_rates().expect("utilisation");
                assert_eq!(
                    (u.gpu, u.memory),
                    (
                        value(&s.gpu_utilization_percent),
                        value(&s.memory_utilization_percent)
                    )
                );
                assert_eq!(ok(d.clock_info(Clock::SM)), value(&s.sm_clock_mhz));
                assert_eq!(
                    ok(d.clock_info(Clock::Graphics)),
                    value(&s.graphics_clock_mhz)
                );
                assert_eq!(ok(d.clock_info(Clock::Memory)), value(&s.memory_clock_mhz));
                assert_eq!(
                    ok(d.applications_clock(Clock::SM)),
                    value(&s.applications_sm_clock_mhz)
                );
                assert_eq!(
                    ok(d.applications_clock(Clock::Memory)),
                    value(&s.applications_memory_clock_mhz)
                );
                assert_eq!(
                    ok(d.temperature(TemperatureSensor::Gpu)),
                    value(&s.temperature_celsius)
                );
                assert_eq!(ok(d.power_usage()), value(&s.power_usage_milliwatts));
                assert_eq!(
                    ok(d.enforced_power_limit()),
                    value(&s.power_limit_milliwatts)
                );
                assert_eq!(
                    ok(d.total_energy_consumption()),
                    value(&s.energy_millijoules)
                );
                assert_eq!(
                    ok(d.current_throttle_reasons().map(|r| r.bits())),
                    value(&s.throttle_reasons).bits()
                );
                assert_eq!(ok(d.current_pcie_link_gen()), value(&s.pcie_generation));
                assert_eq!(ok(d.current_pcie_link_width()), value(&s.pcie_width));
                assert_eq!(
                    ok(d.pcie_replay_counter().map(u64::from)),
                    value(&s.pcie_replays)
                );
                assert_eq!(
                    ok(d.memory_info().map(|m| m.used)),
                    value(&s.memory_used_bytes)
                );
            }
        }
    }
}

#[test]
fn violation_status_for_every_policy() {
    let _serial = serial();
    let policies = [
        (PerformancePolicy::Power, ThrottlePolicy::Power),
        (PerformancePolicy::Thermal, ThrottlePolicy::Thermal),
        (PerformancePolicy::SyncBoost, ThrottlePolicy::SyncBoost),
        (PerformancePolicy::BoardLimit, ThrottlePolicy::BoardLimit),
        (
            PerformancePolicy::LowUtilization,
            ThrottlePolicy::LowUtilization,
        ),
        (PerformancePolicy::Reliability, ThrottlePolicy::Reliability),
        (
            PerformancePolicy::TotalAppClocks,
            ThrottlePolicy::TotalAppClocks,
        ),
        (
            PerformancePolicy::TotalBaseClocks,
            ThrottlePolicy::TotalBaseClocks,
        ),
    ];
    for scenario in [
        "thermal",
        "power-cap",
        "hw-slowdown",
        "sync-boost",
        "app-clocks",
        "idle",
    ] {
        let spec = format!("gpus=1,scenario={scenario}");
        let reference = configured(mock(), &spec).at(5);
        mock().advance(4);
        let nvml = mock().nvml();
        let d = nvml.device_by_index(0).expect("GPU 0");
        let times = value(&reference.gpu(0).throttle_time);
        assert!(
            times.nanoseconds.iter().any(|(_, ns)| *ns > 0),
            "{spec}: something throttles"
        );
        for (policy, sim_policy) in policies {
            let v = d.violation_status(policy).expect("violation status");
            assert_eq!(
                Some(v.violation_time),
                times.get(sim_policy),
                "{spec}: {policy:?}"
            );
        }
        // The reference time is the simulated clock: one step further, one step later.
        let before = d.violation_status(PerformancePolicy::Power).expect("now");
        mock().advance(1);
        let after = d
            .violation_status(PerformancePolicy::Power)
            .expect("a step later");
        assert_eq!(
            after.reference_time - before.reference_time,
            STEP_US,
            "{spec}"
        );
    }
}

#[test]
fn field_values_with_nvml_wrapper_and_with_per_link_scopes() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,scenario=thermal").at(3);
    mock().advance(2);
    let nvml = mock().nvml();
    let d = nvml.device_by_index(1).expect("GPU 1");
    let s = reference.gpu(1);
    let t = value(&s.throttle_time);
    let ids = [
        NVML_FI_DEV_MEMORY_TEMP,
        NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
        NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
        NVML_FI_DEV_PCIE_REPLAY_COUNTER,
        NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP,
        NVML_FI_DEV_PERF_POLICY_THERMAL,
        NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST,
        NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT,
        NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION,
        NVML_FI_DEV_PERF_POLICY_RELIABILITY,
        NVML_FI_DEV_PERF_POLICY_TOTAL_APP_CLOCKS,
        NVML_FI_DEV_PERF_POLICY_TOTAL_BASE_CLOCKS,
        NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN,
        NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN,
        NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN,
        NVML_FI_DEV_REMAPPED_COR,
        NVML_FI_DEV_REMAPPED_UNC,
        NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_FAILURE,
        NVML_FI_DEV_ECC_CURRENT,
    ]
    .map(FieldId);
    let v = d.field_values_for(&ids).expect("field values");
    assert_eq!(sample_u32(&v[0]), value(&s.memory_temperature_celsius));
    assert_eq!(sample_u64(&v[1]), Some(value(&s.pcie_tx_bytes)));
    assert_eq!(sample_u64(&v[2]), Some(value(&s.pcie_rx_bytes)));
    assert_eq!(sample_u64(&v[3]), Some(value(&s.pcie_replays)));
    for (i, policy) in [
        ThrottlePolicy::Power,
        ThrottlePolicy::Thermal,
        ThrottlePolicy::SyncBoost,
        ThrottlePolicy::BoardLimit,
        ThrottlePolicy::LowUtilization,
        ThrottlePolicy::Reliability,
        ThrottlePolicy::TotalAppClocks,
        ThrottlePolicy::TotalBaseClocks,
        ThrottlePolicy::Thermal,
        ThrottlePolicy::Thermal,
        ThrottlePolicy::BoardLimit,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(sample_u64(&v[4 + i]), t.get(policy), "{:?}", ids[4 + i]);
    }
    let remapped = value(&s.remapped_rows);
    assert_eq!(sample_u32(&v[15]), remapped.correctable);
    assert_eq!(sample_u32(&v[16]), remapped.uncorrectable);
    assert_eq!(sample_u32(&v[17]), u32::from(remapped.pending));
    assert_eq!(sample_u32(&v[18]), u32::from(remapped.failure));
    assert!(
        matches!(
            v[19],
            Ok(FieldValueSample {
                value: Err(NvmlError::NotSupported),
                ..
            })
        ),
        "an unknown field"
    );

    // NVLink data throughput: KiB per link (scope id = link), or summed over all links
    // with scope id UINT_MAX.
    let links = value(&s.nvlinks);
    let mut ids: Vec<(u32, u32)> = Vec::new();
    for l in &links {
        ids.push((NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, l.link));
        ids.push((NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, l.link));
    }
    ids.push((NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, u32::MAX));
    let raw = raw_fields(&d, &ids);
    for (i, l) in links.iter().enumerate() {
        assert_eq!(
            ull(&raw[2 * i]),
            l.tx_bytes.expect("tx") / 1024,
            "link {}",
            l.link
        );
        assert_eq!(
            ull(&raw[2 * i + 1]),
            l.rx_bytes.expect("rx") / 1024,
            "link {}",
            l.link
        );
    }
    let total: u64 = links.iter().filter_map(|l| l.tx_bytes).sum();
    assert_eq!(ull(&raw[2 * links.len()]), total / 1024);
    assert_eq!(
        raw_field(&d, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 18).nvmlReturn,
        NOT_SUPPORTED,
        "no link 18 on an H100"
    );
    assert_eq!(
        raw_field(&d, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 36).nvmlReturn,
        INVALID_ARGUMENT,
        "past NVML_NVLINK_MAX_LINKS"
    );
    drop(nvml);

    configured(mock(), "gpus=1,model=l4");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(
        raw_field(&d, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0).nvmlReturn,
        NOT_SUPPORTED,
        "an L4 has no NVLink"
    );
}

#[test]
fn nvlink_state_and_error_counters() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,scenario=nvlink-errors").at(10);
    mock().advance(9);
    let nvml = mock().nvml();
    for index in 0..2 {
        let d = nvml.device_by_index(index).expect("a device");
        let links = value(&reference.gpu(index as usize).nvlinks);
        assert!(links.iter().any(|l| !l.active), "a link is down");
        assert!(
            links.iter().any(|l| l.recovery_errors > Some(0)),
            "a link recovers"
        );
        for l in &links {
            let link = d.link_wrapper_for(l.link);
            assert_eq!(ok(link.is_active()), l.active, "link {}", l.link);
            for (counter, want) in [
                (ErrorCounter::DlReplay, l.replay_errors),
                (ErrorCounter::DlRecovery, l.recovery_errors),
                (ErrorCounter::DlCrcFlit, l.crc_flit_errors),
                (ErrorCounter::DlCrcData, l.crc_data_errors),
            ] {
                assert_eq!(
                    link.error_counter(counter).ok(),
                    want,
                    "link {} {counter:?}",
                    l.link
                );
            }
        }
        // An unused slot answers, inactive; past NVML_NVLINK_MAX_LINKS (36) is invalid.
        assert!(!ok(d.link_wrapper_for(18).is_active()));
        assert!(matches!(
            d.link_wrapper_for(36).is_active(),
            Err(NvmlError::InvalidArg)
        ));
    }
    drop(nvml);

    configured(mock(), "gpus=1,model=l4");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert!(matches!(
        d.link_wrapper_for(0).error_counter(ErrorCounter::DlReplay),
        Err(NvmlError::NotSupported)
    ));
}

#[test]
fn ecc_errors_remapped_rows_and_retired_pages() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,scenario=ecc").at(3);
    mock().advance(2);
    let nvml = mock().nvml();
    let get_remapped = nvml
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .expect("nvmlDeviceGetRemappedRows");
    for index in 0..2 {
        let d = nvml.device_by_index(index).expect("a device");
        let s = reference.gpu(index as usize);
        for counter in [EccCounter::Volatile, EccCounter::Aggregate] {
            assert_eq!(
                ok(d.total_ecc_errors(MemoryError::Uncorrected, counter)),
                value(&s.ecc_uncorrected_errors)
            );
            assert_eq!(
                ok(d.total_ecc_errors(MemoryError::Corrected, counter)),
                value(&s.ecc_corrected_errors)
            );
        }
        assert_eq!(
            ok(d.memory_error_counter(
                MemoryError::Uncorrected,
                EccCounter::Aggregate,
                MemoryLocation::Device
            )),
            value(&s.ecc_uncorrected_errors)
        );
        assert_eq!(
            ok(d.memory_error_counter(
                MemoryError::Uncorrected,
                EccCounter::Aggregate,
                MemoryLocation::L2Cache
            )),
            0
        );

        // nvml-wrapper has no method for nvmlDeviceGetRemappedRows: call it raw.
        let (mut corr, mut unc, mut pending, mut failure) = (9, 9, 9, 9);
        // SAFETY: a live handle and four writable counters.
        let rc =
            unsafe { get_remapped(d.handle(), &mut corr, &mut unc, &mut pending, &mut failure) };
        assert_eq!(rc, SUCCESS);
        let r = value(&s.remapped_rows);
        assert_eq!(
            (corr, unc, pending, failure),
            (
                r.correctable,
                r.uncorrectable,
                u32::from(r.pending),
                u32::from(r.failure)
            )
        );

        // Page retirement is the pre-Ampere mechanism: none of the simulated GPUs has it.
        assert!(matches!(
            d.retired_pages(RetirementCause::DoubleBitEccError),
            Err(NvmlError::NotSupported)
        ));
        assert!(matches!(
            d.are_pages_pending_retired(),
            Err(NvmlError::NotSupported)
        ));
    }
    let gpu0 = value(&reference.gpu(0).remapped_rows);
    assert!(
        gpu0.pending && gpu0.uncorrectable == 1,
        "the scenario's remap is seen"
    );
}

#[test]
fn running_processes_with_the_two_call_size_protocol() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,scenario=idle-held");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(1).expect("GPU 1");
    let want = value(&reference.gpu(1).processes);
    assert_eq!(want.len(), 1);
    let got = d.running_compute_processes().expect("processes");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pid, want[0].pid);
    assert_eq!(
        got[0].used_gpu_memory,
        UsedGpuMemory::Used(want[0].used_memory_bytes.expect("memory"))
    );
    assert_eq!(
        (got[0].gpu_instance_id, got[0].compute_instance_id),
        (None, None)
    );

    let get = nvml
        .lib()
        .nvmlDeviceGetComputeRunningProcesses_v3
        .as_ref()
        .expect("nvmlDeviceGetComputeRunningProcesses_v3");
    let mut count = 0;
    // SAFETY: a live handle; NULL asks for the count.
    let rc = unsafe { get(d.handle(), &mut count, std::ptr::null_mut()) };
    assert_eq!((rc, count), (INSUFFICIENT_SIZE, 1), "count query");
    // SAFETY: a plain C struct, for which all zeroes is a valid value.
    let mut infos: Vec<nvmlProcessInfo_t> = vec![unsafe { std::mem::zeroed() }; 4];
    count = infos.len() as c_uint;
    // SAFETY: a live handle and `count` writable entries.
    let rc = unsafe { get(d.handle(), &mut count, infos.as_mut_ptr()) };
    assert_eq!((rc, count, infos[0].pid), (SUCCESS, 1, want[0].pid));
    drop(nvml);

    configured(mock(), "gpus=1,scenario=idle");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(ok(d.running_compute_processes().map(|p| p.len())), 0);
}

#[test]
fn process_utilization_is_not_found_until_a_new_sample() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=1,scenario=training");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    let first = d.process_utilization_stats(None).expect("samples");
    assert_eq!(first.len(), 1);
    let want = &value(&reference.gpu(0).processes)[0];
    assert_eq!(first[0].pid, want.pid);
    assert_eq!(Some(first[0].sm_util), want.sm_utilization_percent);
    let seen = first[0].timestamp;
    assert!(matches!(
        d.process_utilization_stats(seen),
        Err(NvmlError::NotFound)
    ));

    mock().advance(1);
    reference.step();
    let next = d.process_utilization_stats(seen).expect("a newer sample");
    assert_eq!(next[0].timestamp, seen + STEP_US);
    assert_eq!(
        Some(next[0].sm_util),
        value(&reference.gpu(0).processes)[0].sm_utilization_percent
    );
}

#[test]
fn gpm_metrics_between_two_samples() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=2,model=h200,scenario=training");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(1).expect("GPU 1");
    assert!(ok(d.gpm_support()));
    let first = d.gpm_sample().expect("a GPM sample");
    mock().advance(1);
    reference.step();
    let second = d.gpm_sample().expect("a later GPM sample");
    let ids = [
        GpmMetricId::SmUtil,
        GpmMetricId::SmOccupancy,
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::DramBwUtil,
        GpmMetricId::GraphicsUtil,
    ];
    let got = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &first, &second, &ids).expect("metrics");
    let gpm = value(&reference.gpu(1).gpm);
    for (i, want) in [
        gpm.sm_active,
        gpm.sm_occupancy,
        gpm.tensor_active,
        gpm.dram_active,
    ]
    .into_iter()
    .enumerate()
    {
        let m = got[i].as_ref().expect("a supported metric");
        assert_eq!(m.metric_id, ids[i]);
        assert_eq!(m.value, want * 100.0, "{:?} in percent", ids[i]);
        assert!(!m.metric_info.short_name.is_empty());
    }
    assert!(matches!(got[4], Err(NvmlError::NotSupported)));
    drop((first, second));
    drop(nvml);

    configured(mock(), "gpus=1,model=a100");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert!(!ok(d.gpm_support()), "Ampere has no GPM");
    assert!(matches!(d.gpm_sample(), Err(NvmlError::NotSupported)));
}

#[test]
fn xid_events_arrive_once_per_occurrence() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=2,scenario=xid");
    let nvml = mock().nvml();
    let devices: Vec<_> = (0..2)
        .map(|i| nvml.device_by_index(i).expect("a device"))
        .collect();
    let mut set = nvml.create_event_set().expect("an event set");
    for d in &devices {
        set = d
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .expect("XID events register");
    }
    let mut seen: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for step in 1..=8 {
        if step > 1 {
            mock().advance(1);
            reference.step();
        }
        loop {
            match set.wait(0) {
                Ok(event) => {
                    assert_eq!(event.event_type, EventTypes::CRITICAL_XID_ERROR);
                    let Some(XidError::Value(code)) = event.event_data else {
                        panic!("an XID code: {:?}", event.event_data);
                    };
                    let index = event.device.index().expect("the event's GPU");
                    *seen.entry((index, code)).or_default() += 1;
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => panic!("waiting for events: {e}"),
            }
        }
        let want: BTreeMap<(u32, u64), u64> = reference
            .latest
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                value(&s.xid_errors)
                    .into_iter()
                    .map(move |(code, n)| ((i as u32, code), n))
            })
            .collect();
        assert_eq!(seen, want, "step {step}");
    }
    assert!(
        seen.values().sum::<u64>() > 2,
        "XIDs repeat in the scenario"
    );
    assert!(
        matches!(set.wait(20), Err(NvmlError::Timeout)),
        "nothing new"
    );
    set.release_events().expect("nvmlEventSetFree");
    drop(devices);
    drop(nvml);

    configured(mock(), "gpus=1,scenario=xid,hide=xid");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    let set = nvml.create_event_set().expect("an event set");
    assert!(matches!(
        d.register_events(EventTypes::CRITICAL_XID_ERROR, set),
        Err(e) if matches!(e.error, NvmlError::NotSupported)
    ));
}

#[test]
fn a_lost_gpu_answers_gpu_is_lost_to_every_call() {
    let _serial = serial();
    configured(mock(), "gpus=2,scenario=lost");
    let nvml = mock().nvml();
    let (gpu0, gpu1) = (
        nvml.device_by_index(0).expect("GPU 0"),
        nvml.device_by_index(1).expect("GPU 1"),
    );
    assert!(gpu1.utilization_rates().is_ok(), "answers before it goes");
    mock().advance(1);
    assert!(matches!(gpu1.utilization_rates(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu1.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(
        gpu1.field_values_for(&[FieldId(NVML_FI_DEV_MEMORY_TEMP)]),
        Err(NvmlError::GpuLost)
    ));
    assert!(gpu0.utilization_rates().is_ok(), "the other GPU carries on");
}

#[test]
fn a_reading_round_starts_when_its_first_call_comes_again() {
    let _serial = serial();
    configured(mock(), "gpus=2");
    let nvml = mock().nvml();
    assert_eq!(mock().steps(), 1, "configuration takes the first reading");
    // Handles are kept, as a long-running agent does: only readings drive the clock.
    let gpu0 = nvml.device_by_index(0).expect("GPU 0");
    let gpu1 = nvml.device_by_index(1).expect("GPU 1");
    gpu0.uuid().expect("inventory");
    gpu0.uuid().expect("inventory");
    assert_eq!(mock().steps(), 1, "inventory calls are not readings");
    gpu0.power_usage().expect("first reading of the round");
    gpu0.clock_info(Clock::SM).expect("a reading");
    gpu0.clock_info(Clock::Memory)
        .expect("the same export again, other arguments");
    gpu1.power_usage().expect("another GPU");
    assert_eq!(mock().steps(), 1, "one round so far");
    gpu0.power_usage().expect("the round's first call again");
    assert_eq!(mock().steps(), 2, "a new round");
    gpu0.power_usage().expect("nothing else in between");
    assert_eq!(
        mock().steps(),
        2,
        "the same call twice in a row is not a new round"
    );
}

#[test]
fn the_c_abi_at_its_edges() {
    let _serial = serial();
    configured(mock(), "gpus=2");
    let count = mock().symbol::<unsafe extern "C" fn(*mut c_uint) -> u32>("nvmlDeviceGetCount_v2");
    // "Before nvmlInit" is checked in a fresh process (environment_child): the NVML
    // backend keeps NVML open for the life of the process, so here it may be open.

    let nvml = Nvml::builder()
        .lib_path(mock().path.as_os_str())
        .flags(InitFlags::NO_GPUS)
        .init()
        .expect("nvmlInitWithFlags");
    // SAFETY: NULL where NVML expects a pointer.
    assert_eq!(unsafe { count(std::ptr::null_mut()) }, INVALID_ARGUMENT);
    let error_string = mock().symbol::<extern "C" fn(u32) -> *const c_char>("nvmlErrorString");
    // SAFETY: nvmlErrorString returns static NUL-terminated strings.
    let message = |rc| unsafe { std::ffi::CStr::from_ptr(error_string(rc)) };
    assert_eq!(message(15).to_str(), Ok("GPU is lost"));
    assert_eq!(message(12345).to_str(), Ok("Unknown Error"));

    let d = nvml.device_by_index(0).expect("GPU 0");
    let lib = nvml.lib();
    let name = lib.nvmlDeviceGetName.as_ref().expect("nvmlDeviceGetName");
    let mut small = [0 as c_char; 4];
    // SAFETY: a live handle and a 4-byte buffer.
    let rc = unsafe { name(d.handle(), small.as_mut_ptr(), small.len() as c_uint) };
    assert_eq!(rc, INSUFFICIENT_SIZE, "a name does not fit in 4 bytes");
    let bogus: nvml_wrapper_sys::bindings::nvmlDevice_t = std::ptr::without_provenance_mut(99);
    let mut big = [0 as c_char; 96];
    for handle in [std::ptr::null_mut(), bogus] {
        // SAFETY: the library must refuse these handles without touching them.
        let rc = unsafe { name(handle, big.as_mut_ptr(), big.len() as c_uint) };
        assert_eq!(rc, INVALID_ARGUMENT, "{handle:?}");
    }
    let memory = lib.nvmlDeviceGetMemoryInfo_v2.as_ref().expect("memory");
    // SAFETY: a plain C struct, for which all zeroes is a valid value.
    let mut info: nvmlMemory_v2_t = unsafe { std::mem::zeroed() };
    // SAFETY: a live handle and a writable struct.
    let rc = unsafe { memory(d.handle(), &mut info) };
    assert_eq!(rc, ARGUMENT_VERSION_MISMATCH, "version 0");
    let fields = lib.nvmlDeviceGetFieldValues.as_ref().expect("field values");
    // SAFETY: zero entries: the library must not touch the array.
    let rc = unsafe { fields(d.handle(), 0, std::ptr::NonNull::dangling().as_ptr()) };
    assert_eq!(rc, INVALID_ARGUMENT, "no fields asked for");
    nvml.shutdown().expect("nvmlShutdown");
    // "One shutdown per init" is checked in a fresh process (environment_child).
}

// The three fields the exact comparison leaves out, each checked on its own terms.

/// XID events arrive on the backend's own thread through the NVML event set; once it has
/// drained them, its counts are the simulator's.
#[test]
fn xid_events_reach_the_backend_through_the_event_set() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=2,scenario=xid");
    let mut backend = mock().backend();
    for round in 1..=7 {
        if round > 1 {
            reference.step();
        }
        backend.sample(0);
    }
    let want = value(&reference.gpu(0).xid_errors);
    assert!(
        want.iter().any(|(code, _)| *code == 31),
        "the scenario fired XID 31: {want:?}"
    );
    let uuid = reference.sim.inventory()[0].uuid.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = backend.xid_counts(&uuid).expect("XID events are watched");
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "XID counts {got:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// GPM needs two samples: nothing at the first reading, then the simulator's ratios.
#[test]
fn gpm_ratios_come_from_consecutive_readings() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=1,model=h100-sxm,scenario=training");
    let mut backend = mock().backend();
    assert!(
        backend.sample(0)[0].gpm.is_failed(),
        "no previous GPM sample yet"
    );
    for _ in 0..3 {
        reference.step();
        let got = backend.sample(0)[0]
            .gpm
            .value()
            .expect("GPM from the second reading on");
        let want = value(&reference.gpu(0).gpm);
        for (g, w) in [
            (got.sm_active, want.sm_active),
            (got.sm_occupancy, want.sm_occupancy),
            (got.tensor_active, want.tensor_active),
            (got.dram_active, want.dram_active),
        ] {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }
    configured(mock(), "gpus=1,model=a100,scenario=training");
    let mut backend = mock().backend();
    assert!(
        backend.sample(0)[0].gpm.is_unsupported(),
        "no GPM before Hopper"
    );
}

/// Processes: pid, memory and SM utilisation from NVML, the workload from /proc.
#[test]
fn processes_are_read_and_attributed_to_their_workload() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,scenario=training");
    let want = value(&reference.gpu(1).processes);
    let proc_root = tempfile::tempdir().expect("tempdir");
    let pod = "8e1f2b3c-4d5e-6f70-8192-a3b4c5d6e7f8";
    for p in &want {
        let dir = proc_root.path().join(p.pid.to_string());
        std::fs::create_dir_all(&dir).expect("proc dir");
        std::fs::write(
            dir.join("cgroup"),
            format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-0123456789abcdef.scope\n",
                pod.replace('-', "_")
            ),
        )
        .expect("cgroup");
    }
    let mut backend = NvmlBackend::open_with(
        Some(mock().path.as_os_str()),
        gpulse_gpu::workload::ProcReader::new(proc_root.path()),
    )
    .expect("backend");
    let got = value(&backend.sample(0)[1].processes);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.pid, g.used_memory_bytes), (w.pid, w.used_memory_bytes));
        assert_eq!(g.sm_utilization_percent, w.sm_utilization_percent);
        assert_eq!(
            g.workload_kind,
            gpulse_gpu::health::WorkloadKind::KubernetesPod
        );
        assert_eq!(g.workload, pod);
    }
}

/// A GPU in MIG mode: its instances come through their own device handles (UUID,
/// memory, GPU and compute instance ids), and whole-GPU utilisation is unsupported.
#[test]
fn mig_instances_are_listed_and_whole_gpu_utilisation_is_unsupported() {
    let _serial = serial();
    let rounds = assert_backend_matches(mock(), "gpus=2,model=a100,scenario=training,mig=3", &[]);
    let reference = Reference::new("gpus=2,model=a100,scenario=training,mig=3");
    let backend = mock().backend();
    let inventory = backend.inventory();
    assert_eq!(inventory[1].mig_enabled, Some(true));
    assert_eq!(inventory[1].mig_instances.len(), 3);
    assert_eq!(
        inventory[1].mig_instances,
        reference.sim.inventory()[1].mig_instances
    );
    assert!(
        inventory[1]
            .mig_instances
            .iter()
            .all(|m| m.uuid.starts_with("MIG-"))
    );
    assert_eq!(inventory[1].mig_instances[2].gpu_instance_id, Some(3));
    for round in &rounds {
        assert!(
            round[0].gpu_utilization_percent.is_unsupported(),
            "not 0: unsupported"
        );
        assert!(
            round[0].sm_clock_mhz.value().is_some(),
            "the rest still reads"
        );
    }
}

// Real-driver behaviours: each test fails against a backend that ignores the behaviour.

/// Diagnoses `rounds` readings of every GPU the backend reads; the kinds found.
fn backend_findings(
    backend: &mut NvmlBackend,
    rounds: usize,
) -> Vec<gpulse_gpu::diagnosis::FindingKind> {
    use gpulse_gpu::diagnosis::{GpuWindow, Timed, diagnose};
    let mut per_gpu: Vec<Vec<Timed>> = vec![Vec::new(); backend.inventory().len()];
    for t in 0..rounds {
        let unix_ms = t as i64 * STEP_MS;
        for (i, sample) in backend.sample(unix_ms).into_iter().enumerate() {
            per_gpu[i].push(Timed { unix_ms, sample });
        }
    }
    let inventory = backend.inventory().to_vec();
    let mut kinds: Vec<_> = inventory
        .iter()
        .zip(&per_gpu)
        .flat_map(|(info, samples)| diagnose(&GpuWindow { info, samples }))
        .map(|f| f.kind)
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Link ids come from the link-count field, not from which slots answer: an A100 has 12
/// links though all 36 slots answer, and a MIG GPU's links reading inactive is no fault.
#[test]
fn links_are_bounded_by_the_link_count_and_mig_links_are_not_down() {
    use gpulse_gpu::diagnosis::FindingKind;
    let _serial = serial();
    for spec in [
        "gpus=2,model=a100,scenario=training",
        "gpus=2,model=a100,scenario=training,mig=3",
        "gpus=2,model=h100-sxm,scenario=training,mig=2",
    ] {
        let reference = configured(mock(), spec);
        let mut backend = mock().backend();
        let want = reference.sim.inventory()[0].nvlink_count;
        assert_eq!(backend.inventory()[0].nvlink_count, want, "{spec}");
        let links = value(&backend.sample(0)[0].nvlinks);
        assert_eq!(Some(links.len() as u32), want, "{spec}");
        let kinds = backend_findings(&mut backend, 10);
        assert!(
            !kinds.contains(&FindingKind::NvlinkDown),
            "{spec}: {kinds:?}"
        );
    }
    // A VM that hides NVLink (the H200 probe: every slot NOT_SUPPORTED): no links.
    configured(mock(), "gpus=1,model=h200,hide=nvlink");
    let mut backend = mock().backend();
    assert_eq!(backend.inventory()[0].nvlink_count, Some(0));
    assert!(backend.sample(0)[0].nvlinks.is_unsupported());
}

/// nvml.h: violation status for the thermal policy is not supported on some GPUs while
/// the other policies answer; its field (75) still gives the thermal time, and the
/// source says the time is mixed.
#[test]
fn thermal_time_comes_from_its_field_where_violation_status_lacks_it() {
    let _serial = serial();
    let spec = "gpus=2,scenario=thermal";
    let quirky = Simulator::new(spec.parse().expect("a spec")).inventory()[1]
        .uuid
        .clone();
    let rounds =
        assert_backend_matches_with(mock(), spec, "thermal-violation-unsupported@1", &[], &|s| {
            if let Reading::Value(t) = &mut s.throttle_time
                && s.uuid == quirky
            {
                t.source = gpulse_gpu::health::ThrottleTimeSource::Mixed;
            }
        });
    let thermal = value(&rounds[3][1].throttle_time).get(ThrottlePolicy::Thermal);
    assert!(thermal.is_some_and(|ns| ns > 0), "{thermal:?}");
}

/// Field 82 labelled double while holding an integer (DCGM's nvbug 4300930 workaround):
/// read as the integer, not as a denormal 0 °C; the H200 driver's uint label too.
#[test]
fn memory_temperature_typed_double_is_read_as_the_integer() {
    let _serial = serial();
    let rounds = assert_backend_matches_with(
        mock(),
        "gpus=2,model=h200,scenario=thermal",
        "memory-temp-double@0",
        &[],
        &|_| {},
    );
    for round in &rounds {
        assert!(round[0].memory_temperature_celsius.value().unwrap_or(0) > 20);
        assert_eq!(
            round[0].memory_temperature_celsius.value().is_some(),
            round[1].memory_temperature_celsius.value().is_some()
        );
    }
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(
        raw_field(&d, NVML_FI_DEV_MEMORY_TEMP, 0).valueType,
        0,
        "double"
    );
    let d = nvml.device_by_index(1).expect("GPU 1");
    assert_eq!(
        raw_field(&d, NVML_FI_DEV_MEMORY_TEMP, 0).valueType,
        1,
        "uint"
    );
}

/// NVML samples only processes that used the GPU since the timestamp: a process that
/// goes idle drops out of the samples, and its utilisation is 0, not its last value.
#[test]
fn a_process_that_goes_idle_reads_zero_not_its_last_utilisation() {
    let _serial = serial();
    configured(mock(), "gpus=1,scenario=training,seed=5");
    let mut backend = mock().backend();
    let busy = value(&backend.sample(0)[0].processes);
    assert!(busy[0].sm_utilization_percent > Some(50), "{busy:?}");
    backend.sample(0);
    // The same process (same seed, same pid), now idle.
    mock().configure("gpus=1,scenario=idle-held,seed=5");
    mock().advance(5);
    let idle = value(&backend.sample(0)[0].processes);
    assert_eq!(idle[0].pid, busy[0].pid);
    assert_eq!(idle[0].sm_utilization_percent, Some(0));
}

/// A GPU whose XID registration fails must not unwatch the GPUs registered before it.
#[test]
fn a_failed_xid_registration_leaves_the_other_gpus_watched() {
    let _serial = serial();
    let mut reference = configured(mock(), "gpus=3,scenario=xid");
    mock().set_quirks("event-registration-fails@1");
    let mut backend = mock().backend();
    for round in 1..=4 {
        if round > 1 {
            reference.step();
        }
        let samples = backend.sample(0);
        assert!(
            samples[1].xid_errors.is_unsupported(),
            "GPU 1 is not watched"
        );
    }
    let uuid = |i: usize| reference.sim.inventory()[i].uuid.clone();
    assert_eq!(backend.xid_counts(&uuid(1)), None);
    for gpu in [0, 2] {
        let want = value(&reference.gpu(gpu).xid_errors);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = backend.xid_counts(&uuid(gpu)).expect("watched");
            if got == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GPU {gpu}: XID counts {got:?}, want {want:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Functions CUDA 13 deprecated answer NVML_ERROR_DEPRECATED once removed: the backend
/// reads their successors (temperature, clock-event reasons, field values for the
/// throttled time) and reports what has none (applications clocks) unsupported.
#[test]
fn deprecated_functions_give_way_to_their_successors() {
    use gpulse_gpu::health::ThrottleTimeSource;
    let _serial = serial();
    assert_backend_matches_with(
        mock(),
        "gpus=2,scenario=thermal",
        "deprecated",
        &[],
        &|want| {
            want.mark(Field::ApplicationsClocks, FieldStatus::Unsupported);
            if let Reading::Value(t) = &mut want.throttle_time {
                t.source = ThrottleTimeSource::FieldValues;
            }
        },
    );
}

/// nvmlDeviceGetMaxMigDeviceCount is the most instances there can be; empty slots
/// answer NOT_FOUND and the backend lists only the instances that exist.
#[test]
fn mig_slots_beyond_the_instances_answer_not_found() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=1,model=h200,mig=2");
    let nvml = mock().nvml();
    let d = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(ok(d.mig_device_count()), 7);
    assert!(d.mig_device_by_index(1).is_ok());
    assert!(matches!(d.mig_device_by_index(2), Err(NvmlError::NotFound)));
    drop(nvml);
    let backend = mock().backend();
    assert_eq!(
        backend.inventory()[0].mig_instances,
        reference.sim.inventory()[0].mig_instances
    );
}

/// Every scenario through the library, with MIG on: the same findings as without,
/// apart from what link states and asynchronous XIDs cannot show alike.
#[test]
fn every_scenario_through_the_library_is_diagnosed_the_same_with_mig_on() {
    use gpulse_gpu::diagnosis::FindingKind;
    let _serial = serial();
    for (scenario, _) in Scenario::NAMES {
        let kinds = |spec: &str| -> Vec<FindingKind> {
            configured(mock(), spec);
            backend_findings(&mut mock().backend(), 12)
                .into_iter()
                .filter(|k| !matches!(k, FindingKind::NvlinkDown | FindingKind::Xid))
                .collect()
        };
        let plain = kinds(&format!("gpus=2,scenario={scenario},seed=4"));
        let mig = kinds(&format!("gpus=2,scenario={scenario},seed=4,mig=3"));
        assert_eq!(mig, plain, "{scenario} with mig=3");
    }
}

/// The nvmlReturn_t of a wrapper call, for comparing with a capture.
fn code<T>(r: &Result<T, NvmlError>) -> u64 {
    match r {
        Ok(_) => 0,
        Err(NvmlError::InvalidArg) => 2,
        Err(NvmlError::NotSupported) => 3,
        Err(NvmlError::NotFound) => 6,
        Err(NvmlError::UnexpectedVariant(c)) => u64::from(*c),
        Err(e) => panic!("an answer the capture never holds: {e:?}"),
    }
}

/// The committed probe of a real H200 (driver 580.159.04, in a VM that hides NVLink)
/// against the library configured as that GPU: every call and field id the backend
/// uses answers with the same return code, so the library cannot drift from the driver.
#[test]
fn the_library_answers_like_the_captured_h200_on_driver_580() {
    let _serial = serial();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gpu/fixtures/captures/h200-matmul-2026-12-01");
    for (file, scenario) in [
        ("nvml-probe-idle.json", "idle"),
        ("nvml-probe-busy.json", "training"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("the committed probe");
        let probe: serde_json::Value = serde_json::from_str(&text).expect("probe JSON");
        let real = &probe["devices"][0];
        let want = |v: &serde_json::Value| -> u64 {
            if v.get("ok").is_some() {
                0
            } else {
                v["code"].as_u64().unwrap_or_else(|| panic!("{file}: {v}"))
            }
        };
        configured(
            mock(),
            &format!("gpus=1,model=h200,scenario={scenario},hide=nvlink"),
        );
        let driver = probe["driver"]["ok"].as_str().expect("the driver version");
        mock().set_driver_version(Some(driver));
        let nvml = mock().nvml();
        assert_eq!(
            ok(nvml.sys_nvml_version()),
            probe["nvml"]["ok"].as_str().expect("the NVML version")
        );
        let d = nvml.device_by_index(0).expect("GPU 0");
        let mismatches = std::cell::RefCell::new(Vec::new());
        let check = |what: String, real: &serde_json::Value, got: u64| {
            if want(real) != got {
                mismatches
                    .borrow_mut()
                    .push(format!("{what}: driver {}, library {got}", want(real)));
            }
        };
        for (key, got) in [
            (
                "nvmlDeviceGetUtilizationRates",
                code(&d.utilization_rates()),
            ),
            ("nvmlDeviceGetPowerUsage", code(&d.power_usage())),
            (
                "nvmlDeviceGetEnforcedPowerLimit",
                code(&d.enforced_power_limit()),
            ),
            (
                "nvmlDeviceGetTotalEnergyConsumption",
                code(&d.total_energy_consumption()),
            ),
            (
                "nvmlDeviceGetCurrentClocksThrottleReasons",
                code(&d.current_throttle_reasons()),
            ),
            (
                "nvmlDeviceGetSupportedClocksThrottleReasons",
                code(&d.supported_throttle_reasons()),
            ),
            (
                "nvmlDeviceGetCurrPcieLinkGeneration",
                code(&d.current_pcie_link_gen()),
            ),
            (
                "nvmlDeviceGetCurrPcieLinkWidth",
                code(&d.current_pcie_link_width()),
            ),
            (
                "nvmlDeviceGetMaxPcieLinkGeneration",
                code(&d.max_pcie_link_gen()),
            ),
            (
                "nvmlDeviceGetMaxPcieLinkWidth",
                code(&d.max_pcie_link_width()),
            ),
            (
                "nvmlDeviceGetPcieReplayCounter",
                code(&d.pcie_replay_counter()),
            ),
            (
                "nvmlDeviceGetPowerManagementDefaultLimit",
                code(&d.power_management_limit_default()),
            ),
            (
                "nvmlDeviceGetMaxMigDeviceCount",
                code(&d.mig_device_count()),
            ),
            ("nvmlDeviceGetMigMode", code(&d.mig_mode())),
            ("nvmlDeviceGetEccMode", code(&d.is_ecc_enabled())),
            ("nvmlDeviceGetArchitecture", code(&d.architecture())),
            (
                "nvmlDeviceGetComputeRunningProcesses",
                code(&d.running_compute_processes()),
            ),
            ("nvmlDeviceGetMemoryInfo", code(&d.memory_info())),
            ("nvmlGpmQueryDeviceSupport", code(&d.gpm_support())),
            (
                "retired_pages",
                code(&d.retired_pages(RetirementCause::MultipleSingleBitEccErrors)),
            ),
            (
                "process_utilization_since_0",
                code(&d.process_utilization_stats(0)),
            ),
            (
                "process_utilization_since_now",
                code(&d.process_utilization_stats(u64::MAX / 2)),
            ),
        ] {
            check(key.to_string(), &real[key], got);
        }
        assert_eq!(ok(d.mig_device_count()), 0, "MIG off: 0, as the driver");
        check(
            "temperature".into(),
            &real["temperature"]["gpu"],
            code(&d.temperature(TemperatureSensor::Gpu)),
        );
        for (name, clock) in [
            ("graphics", Clock::Graphics),
            ("sm", Clock::SM),
            ("mem", Clock::Memory),
        ] {
            check(
                format!("clock {name}"),
                &real["clock_info"][name],
                code(&d.clock_info(clock)),
            );
            check(
                format!("max clock {name}"),
                &real["max_clock_info"][name],
                code(&d.max_clock_info(clock)),
            );
            check(
                format!("applications clock {name}"),
                &real["applications_clock"][name],
                code(&d.applications_clock(clock)),
            );
        }
        for (k, threshold) in [
            (0, TemperatureThreshold::Shutdown),
            (1, TemperatureThreshold::Slowdown),
            (2, TemperatureThreshold::MemoryMax),
            (3, TemperatureThreshold::GpuMax),
        ] {
            check(
                format!("threshold {k}"),
                &real["temperature_thresholds"][k.to_string()],
                code(&d.temperature_threshold(threshold)),
            );
        }
        for (k, policy) in [
            (0, PerformancePolicy::Power),
            (1, PerformancePolicy::Thermal),
            (2, PerformancePolicy::SyncBoost),
            (3, PerformancePolicy::BoardLimit),
            (4, PerformancePolicy::LowUtilization),
            (5, PerformancePolicy::Reliability),
            (10, PerformancePolicy::TotalAppClocks),
            (11, PerformancePolicy::TotalBaseClocks),
        ] {
            check(
                format!("violation status {k}"),
                &real["violation_status"][k.to_string()],
                code(&d.violation_status(policy)),
            );
        }
        for (k, (error, counter)) in [
            ("0/0", (MemoryError::Corrected, EccCounter::Volatile)),
            ("0/1", (MemoryError::Corrected, EccCounter::Aggregate)),
            ("1/0", (MemoryError::Uncorrected, EccCounter::Volatile)),
            ("1/1", (MemoryError::Uncorrected, EccCounter::Aggregate)),
        ] {
            check(
                format!("ecc {k}"),
                &real["ecc_errors"][k],
                code(&d.total_ecc_errors(error, counter)),
            );
        }
        for link in 0..36u32 {
            let l = d.link_wrapper_for(link);
            let slot = &real["nvlink"][link.to_string()];
            check(
                format!("nvlink {link} state"),
                &slot["state"],
                code(&l.is_active()),
            );
            check(
                format!("nvlink {link} replay errors"),
                &slot["replay_errors"],
                code(&l.error_counter(ErrorCounter::DlReplay)),
            );
        }
        // The field ids the backend reads, in this driver's (580.82+) numbering.
        let fields = real["fields"].as_object().expect("fields");
        let by_id = |id: u32| {
            fields
                .iter()
                .find(|(k, _)| k.split(':').next() == Some(&id.to_string()))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("field {id} in the probe"))
        };
        for id in [
            74, 75, 76, 77, 78, 79, 80, 81, 82, 91, 142, 143, 144, 145, 197, 198, 269, 270, 271,
        ] {
            let got = raw_field(&d, id, 0);
            let real = by_id(id);
            if real["return"].as_u64() != Some(u64::from(got.nvmlReturn)) {
                mismatches.borrow_mut().push(format!(
                    "field {id}: driver {}, library {}",
                    real["return"], got.nvmlReturn
                ));
            }
            if id == 82 && real["valueType"].as_u64() != Some(u64::from(got.valueType)) {
                mismatches
                    .borrow_mut()
                    .push(format!("field 82 type: driver {}", real["valueType"]));
            }
        }
        let scoped = real["fields_scoped"].as_object().expect("scoped fields");
        for (key, real) in scoped {
            let Some((id, scope)) = key
                .split_once(':')
                .and_then(|(id, rest)| Some((id.parse::<u32>().ok()?, rest.rsplit_once('@')?.1)))
            else {
                continue;
            };
            if ![138, 139].contains(&id) {
                continue;
            }
            let scope: u32 = scope.parse().expect("a scope id");
            let got = raw_field(&d, id, scope).nvmlReturn;
            if real["return"].as_u64() != Some(u64::from(got)) {
                mismatches.borrow_mut().push(format!(
                    "field {key}: driver {}, library {got}",
                    real["return"]
                ));
            }
        }
        let registered = nvml.create_event_set().and_then(|set| {
            d.register_events(EventTypes::CRITICAL_XID_ERROR, set)
                .map_err(|e| e.error)
        });
        check(
            "register_xid".into(),
            &real["register_xid"],
            code(&registered),
        );
        let mismatches = mismatches.into_inner();
        assert!(mismatches.is_empty(), "{file}: {mismatches:#?}");
    }
}

/// The host's exposition with a series per NVLink link.
fn exposition_per_link(backend: &mut NvmlBackend, samples: Vec<DeviceSample>) -> String {
    use gpulse_exposition::{ExpositionOptions, HostSource, HostView};
    struct One(HostView);
    impl HostSource for One {
        fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
            f(&self.0)
        }
    }
    let mut view = HostView::new(
        gpulse_gpu::HostIdentity::default(),
        backend.inventory().to_vec(),
        0,
    );
    view.apply(gpulse_gpu::Snapshot {
        timestamp_unix_ms: 0,
        gpus: samples,
    })
    .expect("the backend's own GPUs");
    let mut out = String::new();
    gpulse_exposition::render_fleet(
        &One(view),
        ExpositionOptions {
            nvlink_per_link: true,
            per_process: true,
            ..ExpositionOptions::default()
        },
        &mut out,
    );
    out
}

/// A GPU whose link-count field (91) says more than the 18 links every header before
/// CUDA 13.3 allowed: all of them are read, up to NVML_NVLINK_MAX_LINKS (36), and each
/// gets its series.
#[test]
fn a_gpu_with_more_than_18_links_is_read_on_all_of_them() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,model=h100-sxm,scenario=training");
    mock().set_quirks("links=36@1");
    let mut backend = mock().backend();
    assert_eq!(backend.inventory()[0].nvlink_count, Some(18));
    assert_eq!(backend.inventory()[1].nvlink_count, Some(36));
    let samples = backend.sample(0);
    let links = value(&samples[1].nvlinks);
    assert_eq!(
        links.iter().map(|l| l.link).collect::<Vec<_>>(),
        (0..36).collect::<Vec<_>>()
    );
    let model = value(&reference.gpu(1).nvlinks);
    for l in &links {
        let theirs = &model[l.link as usize % model.len()];
        assert_eq!(l.active, theirs.active, "link {}", l.link);
        // Through the KiB counters (fields 138, 139): whole KiB.
        assert_eq!(
            l.tx_bytes,
            theirs.tx_bytes.map(|b| b / 1024 * 1024),
            "link {}",
            l.link
        );
        assert_eq!(l.crc_flit_errors, theirs.crc_flit_errors, "link {}", l.link);
    }
    let text = exposition_per_link(&mut backend, samples);
    for name in [
        "gpulse_gpu_nvlink_link_up{",
        "gpulse_gpu_nvlink_link_transmit_bytes_total{",
        "gpulse_gpu_nvlink_link_receive_bytes_total{",
    ] {
        let per_gpu = |gpu: &str| {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&format!("gpu=\"{gpu}\"")))
                .count()
        };
        assert_eq!(per_gpu("0"), 18, "{name}");
        assert_eq!(per_gpu("1"), 36, "{name}");
    }
    assert!(text.contains("link=\"35\""), "the last link has its series");
}

/// NVLink5 byte counters (fields 202, 204, in bytes) are read where the driver answers
/// them; the older KiB counters (138, 139) elsewhere.
#[test]
fn nvlink5_byte_counters_are_read_where_the_driver_answers_them() {
    let _serial = serial();
    let reference = configured(mock(), "gpus=2,model=h100-sxm,scenario=training");
    mock().set_quirks("nvlink5-counters@0");
    let nvml = mock().nvml();
    let (new, old) = (
        nvml.device_by_index(0).expect("GPU 0"),
        nvml.device_by_index(1).expect("GPU 1"),
    );
    let codes = |d: &Device<'_>| {
        raw_fields(d, &[(202, 3), (204, 3), (138, 3), (139, 3)])
            .iter()
            .map(|v| v.nvmlReturn)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        codes(&new),
        [SUCCESS, SUCCESS, NOT_SUPPORTED, NOT_SUPPORTED]
    );
    assert_eq!(
        codes(&old),
        [NOT_SUPPORTED, NOT_SUPPORTED, SUCCESS, SUCCESS]
    );
    drop(nvml);

    let mut backend = mock().backend();
    let samples = backend.sample(0);
    // The raw reads above took reading rounds of their own.
    let reference = reference.at(mock().steps());
    // GPU 0 answers only the NVLink5 fields, GPU 1 only the older ones: each reads
    // its counts through the one it has (exact bytes, or whole KiB).
    for (gpu, exact) in [(0, true), (1, false)] {
        let got = value(&samples[gpu].nvlinks);
        let want = value(&reference.gpu(gpu).nvlinks);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            let bytes = |b: Option<u64>| if exact { b } else { b.map(|b| b / 1024 * 1024) };
            assert_eq!(g.tx_bytes, bytes(w.tx_bytes), "GPU {gpu} link {}", g.link);
            assert_eq!(g.rx_bytes, bytes(w.rx_bytes), "GPU {gpu} link {}", g.link);
            assert!(g.tx_bytes.is_some(), "GPU {gpu} link {}", g.link);
        }
    }
}

/// `nvmlGpmMetric_t` (40 bytes on LP64).
#[derive(Clone, Copy)]
#[repr(C)]
struct RawGpmMetric {
    metric_id: c_uint,
    nvml_return: c_uint,
    value: f64,
    names: [*mut c_char; 3],
}

/// `nvmlGpmMetricsGet_t` as a header with `N` metrics declares it: 98 in CUDA 12.6,
/// 210 in 12.9 to 13.1, 333 in 13.2 and 13.3, all with version 1.
#[repr(C)]
struct RawGpmMetricsGet<const N: usize> {
    version: c_uint,
    num_metrics: c_uint,
    sample1: *mut std::ffi::c_void,
    sample2: *mut std::ffi::c_void,
    metrics: [RawGpmMetric; N],
}

/// The 12.6 layout with bytes after it that the library must leave alone.
#[repr(C)]
struct GuardedGpmMetricsGet {
    get: RawGpmMetricsGet<98>,
    guard: [u8; 4096],
}

/// The library answers the CUDA 13.3 layout (333 metrics) and a caller built on an
/// older header (98 or nvml-wrapper's 210) within its own array: the version is 1 in
/// every header, so numMetrics is all that bounds the array.
#[test]
fn gpm_metrics_follow_every_header_layout() {
    use std::ffi::c_void;
    let _serial = serial();
    let reference = configured(mock(), "gpus=1,model=h200,scenario=training");
    let nvml = mock().nvml();
    let gpu0 = nvml.device_by_index(0).expect("GPU 0");
    // SAFETY: the handle is only passed back to the library while `nvml` lives.
    let device = unsafe { gpu0.handle() }.cast::<c_void>();
    let alloc =
        mock().symbol::<unsafe extern "C" fn(*mut *mut c_void) -> c_uint>("nvmlGpmSampleAlloc");
    let get = mock()
        .symbol::<unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_uint>("nvmlGpmSampleGet");
    let metrics = mock().symbol::<unsafe extern "C" fn(*mut c_void) -> c_uint>("nvmlGpmMetricsGet");
    let mut samples = [std::ptr::null_mut(); 2];
    for s in &mut samples {
        // SAFETY: a writable handle; then that handle, allocated, and a live device.
        unsafe {
            assert_eq!(alloc(s), SUCCESS);
            assert_eq!(get(device, *s), SUCCESS);
        }
    }
    let sm_util = value(&reference.gpu(0).gpm).sm_active * 100.0;
    let metric = RawGpmMetric {
        metric_id: 2, // NVML_GPM_METRIC_SM_UTIL
        nvml_return: 99,
        value: -1.0,
        names: [std::ptr::null_mut(); 3],
    };

    // The 13.3 layout, full.
    let mut full = Box::new(RawGpmMetricsGet::<333> {
        version: 1,
        num_metrics: 333,
        sample1: samples[0],
        sample2: samples[1],
        metrics: [metric; 333],
    });
    // SAFETY: a versioned request whose array holds num_metrics entries.
    assert_eq!(unsafe { metrics((&raw mut *full).cast()) }, SUCCESS);
    for m in &full.metrics {
        assert_eq!((m.nvml_return, m.value), (SUCCESS, sm_util));
    }
    full.num_metrics = 334;
    // SAFETY: as above; the library refuses before reading the entries.
    assert_eq!(
        unsafe { metrics((&raw mut *full).cast()) },
        INVALID_ARGUMENT
    );

    // The 12.6 layout: four metrics asked, nothing written past them.
    let mut old = Box::new(GuardedGpmMetricsGet {
        get: RawGpmMetricsGet::<98> {
            version: 1,
            num_metrics: 4,
            sample1: samples[0],
            sample2: samples[1],
            metrics: [metric; 98],
        },
        guard: [0xa5; 4096],
    });
    // SAFETY: a versioned request whose array holds more than num_metrics entries.
    assert_eq!(unsafe { metrics((&raw mut old.get).cast()) }, SUCCESS);
    assert!(old.get.metrics[..4].iter().all(|m| m.value == sm_util));
    assert!(old.get.metrics[4..].iter().all(|m| m.nvml_return == 99));
    assert!(old.guard.iter().all(|b| *b == 0xa5));

    let free = mock().symbol::<unsafe extern "C" fn(*mut c_void) -> c_uint>("nvmlGpmSampleFree");
    for s in samples {
        // SAFETY: a sample this test allocated, freed once.
        assert_eq!(unsafe { free(s) }, SUCCESS);
    }
    drop(nvml);

    // The backend, on nvml-wrapper's 210-entry layout, reads GPM from this library.
    let mut backend = mock().backend();
    backend.sample(0);
    assert!(!backend.sample(0)[0].gpm.is_unsupported());
}
