//! The process-global state behind the exports: the simulated host and its clock,
//! NVML's initialisation count, and the event sets and GPM samples clients hold.
//!
//! One mutex guards it all: NVML is thread-safe, and nothing here is slow except an
//! event wait, which sleeps with the lock released.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gpulse_gpu::health::GpmActivity;
use gpulse_gpu::simulator::{SimSpec, Simulator};
use gpulse_gpu::{DeviceSample, DeviceState, GpuBackend, Reading};

use crate::device::Gpu;
use crate::nvml_h::{NvmlResult, Ret, event_type};
use crate::quirks::{Quirk, Quirks};

/// Environment variable holding the simulator spec, in `--simulate` syntax.
pub const ENV_SPEC: &str = "GPULSE_NVML_MOCK";
/// Environment variable overriding the driver version the library reports.
pub const ENV_DRIVER: &str = "GPULSE_NVML_MOCK_DRIVER";
/// Environment variable naming the real-driver quirks to reproduce (see [`Quirks`]).
pub const ENV_QUIRKS: &str = "GPULSE_NVML_MOCK_QUIRKS";
/// The spec used when [`ENV_SPEC`] is unset: two GPUs of the simulator's default model
/// and scenario (H100 SXM, training).
pub const DEFAULT_SPEC: &str = "gpus=2";
/// Simulated time per step: one second, whatever the caller's sampling interval.
pub const STEP_MS: i64 = 1_000;
/// The simulated clock at the first step: 2026-01-01T00:00:00Z. Fixed, so that every
/// timestamp the library hands out is the same from run to run.
pub const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;

/// Whether a call reads the GPU's inventory or takes part in a reading. Only readings
/// count towards advancing the simulated clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Inventory,
    Reading,
}

/// The simulated host: its GPUs, their latest readings and the simulated clock.
#[derive(Debug)]
struct Host {
    sim: Simulator,
    driver_version: String,
    quirks: Quirks,
    /// Readings taken so far: 1 after configuration, +1 per step.
    steps: u64,
    latest: Vec<DeviceSample>,
    /// The first per-reading call of the current round (GPU index and export), and
    /// whether another one followed it: the same call again starts the next round.
    round_first: Option<(usize, &'static str)>,
    round_other: bool,
}

impl Host {
    fn new(spec: SimSpec, driver_version: Option<String>, quirks: Quirks) -> Host {
        let sim = Simulator::new(spec);
        let driver_version = driver_version
            .or_else(|| sim.inventory().first().map(|d| d.driver_version.clone()))
            .unwrap_or_default();
        let mut host = Host {
            sim,
            driver_version,
            quirks,
            steps: 0,
            latest: Vec::new(),
            round_first: None,
            round_other: false,
        };
        host.step();
        host
    }

    fn from_spec(spec: &str) -> Result<Host, String> {
        let spec: SimSpec = spec.parse().map_err(|e| format!("{e}"))?;
        let quirks = Quirks::parse(&std::env::var(ENV_QUIRKS).unwrap_or_default())
            .map_err(|e| format!("{ENV_QUIRKS}: {e}"))?;
        Ok(Host::new(spec, std::env::var(ENV_DRIVER).ok(), quirks))
    }

    fn from_env() -> Result<Host, String> {
        let spec = std::env::var(ENV_SPEC).unwrap_or_else(|_| DEFAULT_SPEC.to_string());
        Host::from_spec(&spec).map_err(|e| format!("{ENV_SPEC}: {e}"))
    }

    fn now_unix_ms(&self) -> i64 {
        EPOCH_UNIX_MS + (self.steps as i64 - 1) * STEP_MS
    }

    fn step(&mut self) {
        self.steps += 1;
        let now = self.now_unix_ms();
        self.latest = self.sim.sample(now);
        self.round_first = None;
        self.round_other = false;
    }

    /// Notes a per-reading call; the first call of a round, made again for the same GPU
    /// after other calls, means the caller is reading the next round: step first.
    /// Independent of how the caller orders its calls or whether it caches handles.
    fn note_reading(&mut self, key: (usize, &'static str)) {
        match self.round_first {
            None => self.round_first = Some(key),
            Some(first) if first == key => {
                if self.round_other {
                    self.step();
                    self.round_first = Some(key);
                }
            }
            Some(_) => self.round_other = true,
        }
    }

    /// The GPU with this index, if there is one.
    fn gpu(&self, index: usize) -> Option<Gpu<'_>> {
        Some(Gpu {
            index: u32::try_from(index).ok()?,
            info: self.sim.inventory().get(index)?,
            sample: self.latest.get(index)?,
            model: self.sim.spec().model,
            now_us: u64::try_from(self.now_unix_ms()).unwrap_or(0) * 1000,
            renumbered_fields: renumbers_field_ids(&self.driver_version),
            quirks: &self.quirks,
        })
    }
}

/// Whether nvml-wrapper (and NVML itself) numbers field ids 251-273 the way drivers
/// from 580.82 on do.
fn renumbers_field_ids(driver_version: &str) -> bool {
    let mut parts = driver_version
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (580, 82)
}

#[derive(Debug, Default)]
struct EventSet {
    /// Registered event types per GPU index.
    registered: BTreeMap<u32, u64>,
    /// XID occurrences delivered per (GPU index, XID code).
    delivered: BTreeMap<(u32, u64), u64>,
}

/// A filled GPM sample: which GPU, and its activity at that step.
#[derive(Debug, Clone, Copy)]
struct GpmRecord {
    index: u32,
    activity: GpmActivity,
}

#[derive(Debug)]
struct State {
    init_count: u32,
    host: Option<Host>,
    /// Next event-set or GPM-sample id; ids are never reused.
    next_id: usize,
    event_sets: BTreeMap<usize, EventSet>,
    gpm_samples: BTreeMap<usize, Option<GpmRecord>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    init_count: 0,
    host: None,
    next_id: 1,
    event_sets: BTreeMap::new(),
    gpm_samples: BTreeMap::new(),
});

/// The state, also after a panic elsewhere left the lock poisoned: every mutation
/// completes before anything that can panic, so the data stays consistent.
fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The host, for a client that initialised NVML.
    fn initialised(&mut self) -> NvmlResult<&mut Host> {
        if self.init_count == 0 {
            return Err(Ret::UNINITIALIZED);
        }
        self.host.as_mut().ok_or(Ret::UNINITIALIZED)
    }

    /// The host, configured from the environment if nothing configured it yet.
    fn host_or_env(&mut self) -> Result<&mut Host, String> {
        if self.host.is_none() {
            self.host = Some(Host::from_env()?);
        }
        self.host
            .as_mut()
            .ok_or_else(|| "no simulated host".to_string())
    }

    fn new_id(&mut self) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// nvmlInit: the first one configures the host from the environment.
pub fn init() -> NvmlResult<()> {
    let mut state = lock();
    if let Err(e) = state.host_or_env() {
        // NVML has no way to say why; the operator reads it on stderr.
        eprintln!("gpulse-nvml-mock: cannot start: {e}");
        return Err(Ret::UNKNOWN);
    }
    state.init_count += 1;
    Ok(())
}

/// nvmlShutdown. The simulated host stays, as a loaded driver does.
pub fn shutdown() -> NvmlResult<()> {
    let mut state = lock();
    if state.init_count == 0 {
        return Err(Ret::UNINITIALIZED);
    }
    state.init_count -= 1;
    Ok(())
}

pub fn driver_version() -> NvmlResult<String> {
    Ok(lock().initialised()?.driver_version.clone())
}

/// NVML's version: the CUDA major version the driver branch ships with, then the
/// driver version ("12.550.127.05").
pub fn nvml_version() -> NvmlResult<String> {
    let driver = driver_version()?;
    let major: u32 = driver
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let cuda = if major >= 580 { 13 } else { 12 };
    Ok(format!("{cuda}.{driver}"))
}

pub fn device_count() -> NvmlResult<u32> {
    Ok(lock().initialised()?.latest.len() as u32)
}

/// nvmlDeviceGetHandleByIndex_v2: the handle of GPU `index` (index + 1).
pub fn handle_by_index(index: u32) -> NvmlResult<usize> {
    let mut state = lock();
    let host = state.initialised()?;
    let index = index as usize;
    if index >= host.latest.len() {
        return Err(Ret::INVALID_ARGUMENT);
    }
    Ok(index + 1)
}

/// MIG device handles: MIG_BASE + parent index * MIG_STRIDE + instance index, apart
/// from GPU handles (index + 1).
const MIG_BASE: usize = 1 << 20;
const MIG_STRIDE: usize = 16;

/// nvmlDeviceGetMigDeviceHandleByIndex: the handle of MIG instance `k` of a GPU;
/// NVML_ERROR_NOT_FOUND for a slot with no instance.
pub fn mig_handle(device: usize, k: u32) -> NvmlResult<usize> {
    let mut state = lock();
    let host = state.initialised()?;
    let index = index_of(device, host)?;
    let instances = host.sim.inventory()[index].mig_instances.len();
    if k >= gpulse_gpu::simulator::MAX_MIG_INSTANCES {
        return Err(Ret::INVALID_ARGUMENT);
    }
    if k as usize >= instances {
        return Err(Ret::NOT_FOUND);
    }
    Ok(MIG_BASE + index * MIG_STRIDE + k as usize)
}

/// Answers a call on a MIG device handle from the instance's inventory; `None` when
/// `handle` is not a MIG handle (the caller answers it as a GPU).
pub fn with_mig<T>(
    handle: usize,
    f: impl FnOnce(&gpulse_gpu::health::MigInstance) -> NvmlResult<T>,
) -> Option<NvmlResult<T>> {
    let offset = handle.checked_sub(MIG_BASE)?;
    let mut state = lock();
    let host = match state.initialised() {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let instance = host
        .sim
        .inventory()
        .get(offset / MIG_STRIDE)
        .and_then(|d| d.mig_instances.get(offset % MIG_STRIDE));
    Some(instance.map_or(Err(Ret::INVALID_ARGUMENT), f))
}

/// The GPU index a device handle stands for.
fn index_of(handle: usize, host: &Host) -> NvmlResult<usize> {
    handle
        .checked_sub(1)
        .filter(|i| *i < host.latest.len())
        .ok_or(Ret::INVALID_ARGUMENT)
}

/// Answers a per-GPU call: NVML_ERROR_GPU_IS_LOST for a GPU the simulator lost,
/// otherwise what `f` says.
pub fn with_gpu<T>(
    handle: usize,
    access: Access,
    f: impl FnOnce(&Gpu<'_>) -> NvmlResult<T>,
) -> NvmlResult<T> {
    let mut state = lock();
    let host = state.initialised()?;
    let index = index_of(handle, host)?;
    if access == Access::Reading {
        // Each export's closure has its own type: its name identifies the call.
        host.note_reading((index, std::any::type_name_of_val(&f)));
    }
    let gpu = host.gpu(index).ok_or(Ret::INVALID_ARGUMENT)?;
    if gpu.sample.state == DeviceState::Lost {
        return Err(Ret::GPU_IS_LOST);
    }
    f(&gpu)
}

pub fn event_set_create() -> NvmlResult<usize> {
    let mut state = lock();
    state.initialised()?;
    let id = state.new_id();
    state.event_sets.insert(id, EventSet::default());
    Ok(id)
}

pub fn register_events(device: usize, types: u64, set: usize) -> NvmlResult<()> {
    let (index, supported, fails) = with_gpu(device, Access::Inventory, |g| {
        Ok((
            g.index,
            g.supported_event_types(),
            g.quirks.has(Quirk::EventRegistrationFails, g.index),
        ))
    })?;
    if types & !supported != 0 {
        return Err(Ret::NOT_SUPPORTED);
    }
    if fails {
        return Err(Ret::UNKNOWN);
    }
    let mut state = lock();
    let set = state
        .event_sets
        .get_mut(&set)
        .ok_or(Ret::INVALID_ARGUMENT)?;
    *set.registered.entry(index).or_default() |= types;
    Ok(())
}

/// The next undelivered XID occurrence for an event set: (GPU index, XID code).
fn next_xid(state: &mut State, set: usize) -> NvmlResult<Option<(u32, u64)>> {
    state.initialised()?;
    let State {
        host, event_sets, ..
    } = state;
    let latest = &host.as_ref().ok_or(Ret::UNINITIALIZED)?.latest;
    let set = event_sets.get_mut(&set).ok_or(Ret::INVALID_ARGUMENT)?;
    for (&index, &types) in &set.registered {
        if types & event_type::XID_CRITICAL_ERROR == 0 {
            continue;
        }
        let Some(sample) = latest.get(index as usize) else {
            continue;
        };
        // A lost GPU raises nothing more; its readings say it is lost.
        let Reading::Value(xids) = &sample.xid_errors else {
            continue;
        };
        for &(code, count) in xids {
            let delivered = set.delivered.entry((index, code)).or_default();
            if count > *delivered {
                *delivered += 1;
                return Ok(Some((index, code)));
            }
        }
    }
    Ok(None)
}

/// nvmlEventSetWait_v2: one XID occurrence not yet delivered to this set, as
/// (device handle, XID code); NVML_ERROR_TIMEOUT when none arrives within `timeout_ms`.
pub fn event_wait(set: usize, timeout_ms: u32) -> NvmlResult<(usize, u64)> {
    if let Some((index, code)) = next_xid(&mut lock(), set)? {
        return Ok((index as usize + 1, code));
    }
    if timeout_ms > 0 {
        // Events only come with a step, which another thread may take meanwhile.
        std::thread::sleep(Duration::from_millis(u64::from(timeout_ms)));
        if let Some((index, code)) = next_xid(&mut lock(), set)? {
            return Ok((index as usize + 1, code));
        }
    }
    Err(Ret::TIMEOUT)
}

pub fn event_set_free(set: usize) -> NvmlResult<()> {
    let mut state = lock();
    state
        .event_sets
        .remove(&set)
        .map(drop)
        .ok_or(Ret::INVALID_ARGUMENT)
}

pub fn gpm_sample_alloc() -> NvmlResult<usize> {
    let mut state = lock();
    state.initialised()?;
    let id = state.new_id();
    state.gpm_samples.insert(id, None);
    Ok(id)
}

pub fn gpm_sample_free(sample: usize) -> NvmlResult<()> {
    lock()
        .gpm_samples
        .remove(&sample)
        .map(drop)
        .ok_or(Ret::INVALID_ARGUMENT)
}

pub fn gpm_sample_get(device: usize, sample: usize) -> NvmlResult<()> {
    let (index, activity) = with_gpu(device, Access::Reading, |g| {
        Ok((g.index, g.gpm_activity()?))
    })?;
    let mut state = lock();
    let slot = state
        .gpm_samples
        .get_mut(&sample)
        .ok_or(Ret::INVALID_ARGUMENT)?;
    *slot = Some(GpmRecord { index, activity });
    Ok(())
}

/// GPM activity between two samples of the same GPU. The simulator's activity is that
/// of its last step, so the later sample's step is what the interval shows.
pub fn gpm_metrics(sample1: usize, sample2: usize) -> NvmlResult<GpmActivity> {
    let mut state = lock();
    state.initialised()?;
    let filled = |id| {
        state
            .gpm_samples
            .get(&id)
            .copied()
            .flatten()
            .ok_or(Ret::INVALID_ARGUMENT)
    };
    let (first, second) = (filled(sample1)?, filled(sample2)?);
    if first.index != second.index {
        return Err(Ret::INVALID_ARGUMENT);
    }
    Ok(second.activity)
}

/// Replaces the simulated host: from `spec`, or from the environment when `None`. The
/// driver version goes back to the environment's or the simulator's; event sets forget
/// what they delivered.
pub fn configure(spec: Option<&str>) -> Result<(), String> {
    let host = match spec {
        Some(spec) => Host::from_spec(spec)?,
        None => Host::from_env()?,
    };
    let mut state = lock();
    state.host = Some(host);
    for set in state.event_sets.values_mut() {
        set.delivered.clear();
    }
    Ok(())
}

/// Overrides the driver version until the next [`configure`]; `None` restores the
/// environment's or the simulator's.
pub fn set_driver_version(version: Option<&str>) -> Result<(), String> {
    let mut state = lock();
    let host = state.host_or_env()?;
    host.driver_version = match version {
        Some(v) => v.to_string(),
        None => std::env::var(ENV_DRIVER).unwrap_or_else(|_| {
            host.sim
                .inventory()
                .first()
                .map(|d| d.driver_version.clone())
                .unwrap_or_default()
        }),
    };
    Ok(())
}

/// Reproduces `quirks` (see [`Quirks`]; `None`: the environment's) until the next
/// [`configure`].
pub fn set_quirks(quirks: Option<&str>) -> Result<(), String> {
    let quirks = match quirks {
        Some(q) => Quirks::parse(q)?,
        None => Quirks::parse(&std::env::var(ENV_QUIRKS).unwrap_or_default())?,
    };
    let mut state = lock();
    state.host_or_env()?.quirks = quirks;
    Ok(())
}

/// Takes `steps` steps of simulated time.
pub fn advance(steps: u32) -> Result<(), String> {
    let mut state = lock();
    let host = state.host_or_env()?;
    for _ in 0..steps {
        host.step();
    }
    Ok(())
}

/// Readings the simulator has taken: 1 after configuration, +1 per step.
pub fn steps() -> Result<u64, String> {
    Ok(lock().host_or_env()?.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_from_580_82_renumber_field_ids() {
        assert!(!renumbers_field_ids("550.127.05"));
        assert!(!renumbers_field_ids("580.65.06"));
        assert!(renumbers_field_ids("580.82.07"));
        assert!(renumbers_field_ids("590.1"));
        assert!(!renumbers_field_ids("garbage"));
    }
}
