//! A window of readings of one GPU, with the derived facts the rules share.

use crate::{DeviceInfo, DeviceSample, DeviceState};

/// What a reading says the GPU was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Busy,
    Idle,
    /// Nothing read says: whole-GPU utilisation unsupported (MIG) and no per-process
    /// figures.
    Unknown,
}

/// A reading and when it was taken (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub unix_ms: i64,
    pub sample: DeviceSample,
}

/// Readings of one GPU over a window, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct GpuWindow<'a> {
    pub info: &'a DeviceInfo,
    pub samples: &'a [Timed],
}

/// GPU utilisation (percent) at or above which a reading counts as busy.
pub(crate) const BUSY_UTILIZATION_PERCENT: u32 = 50;
/// GPM SM activity at or above which a reading counts as busy, where GPM exists.
pub(crate) const BUSY_SM_ACTIVE: f64 = 0.30;

impl<'a> GpuWindow<'a> {
    /// Readings in which the GPU answered.
    pub fn answering(&self) -> impl Iterator<Item = &'a DeviceSample> + 'a {
        self.samples
            .iter()
            .map(|t| &t.sample)
            .filter(|s| s.state == DeviceState::Ok)
    }

    /// Whether a reading shows the GPU working. Whole-GPU utilisation (or GPM) says so
    /// where it answers. A GPU in MIG mode answers neither (NVML: not supported), and
    /// that is not idleness: then the processes on its instances say it, busy when one
    /// used the SMs since the last reading, idle when none runs or all were at 0 %, and
    /// unknown when they run without utilisation figures.
    pub fn activity(s: &DeviceSample) -> Activity {
        if let Some(u) = s.gpu_utilization_percent.value() {
            let gpm_busy = s.gpm.value().is_some_and(|g| g.sm_active >= BUSY_SM_ACTIVE);
            return if u >= BUSY_UTILIZATION_PERCENT || gpm_busy {
                Activity::Busy
            } else {
                Activity::Idle
            };
        }
        if let Some(g) = s.gpm.value() {
            return if g.sm_active >= BUSY_SM_ACTIVE {
                Activity::Busy
            } else {
                Activity::Idle
            };
        }
        let Some(procs) = s.processes.get() else {
            return Activity::Unknown;
        };
        if procs
            .iter()
            .any(|p| p.sm_utilization_percent.is_some_and(|u| u > 0))
        {
            Activity::Busy
        } else if procs.iter().all(|p| p.sm_utilization_percent == Some(0)) {
            Activity::Idle
        } else {
            Activity::Unknown
        }
    }

    pub(crate) fn is_busy(s: &DeviceSample) -> bool {
        Self::activity(s) == Activity::Busy
    }

    /// Readings in which the GPU was busy, or may have been (activity unknown): what
    /// the throttling rules judge, as clock-event reasons and temperatures are whole-GPU
    /// readings that answer under MIG too.
    pub fn busy(&self) -> impl Iterator<Item = &'a DeviceSample> + 'a {
        self.answering()
            .filter(|s| Self::activity(s) != Activity::Idle)
    }

    /// Readings in which the GPU was known to be busy.
    pub fn surely_busy(&self) -> impl Iterator<Item = &'a DeviceSample> + 'a {
        self.answering().filter(|s| Self::is_busy(s))
    }

    /// Whether every answering reading shows the GPU idle (none unknown).
    pub fn always_idle(&self) -> bool {
        self.answering()
            .all(|s| Self::activity(s) == Activity::Idle)
    }

    pub fn busy_count(&self) -> usize {
        self.busy().count()
    }

    /// Share of busy readings for which `f` holds (0 when never busy).
    pub fn busy_share(&self, f: impl Fn(&DeviceSample) -> bool) -> f64 {
        let busy = self.busy_count();
        if busy == 0 {
            return 0.0;
        }
        self.busy().filter(|s| f(s)).count() as f64 / busy as f64
    }

    /// Increase of a cumulative counter over the window (resets count from zero).
    /// Saturates: the readings come from an agent, and a counter can hold anything.
    pub fn increase(&self, f: impl Fn(&DeviceSample) -> Option<u64>) -> u64 {
        let mut total = 0u64;
        let mut last: Option<u64> = None;
        for v in self.answering().filter_map(f) {
            if let Some(prev) = last {
                total = total.saturating_add(if v >= prev { v - prev } else { v });
            }
            last = Some(v);
        }
        total
    }

    /// Seconds the window spans.
    pub fn seconds(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => (b.unix_ms - a.unix_ms).max(0) as f64 / 1000.0,
            _ => 0.0,
        }
    }

    /// Mean and max of a reading over busy samples.
    pub fn busy_stats(&self, f: impl Fn(&DeviceSample) -> Option<u32>) -> Option<(f64, u32)> {
        let values: Vec<u32> = self.busy().filter_map(f).collect();
        let max = values.iter().copied().max()?;
        Some((
            values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64,
            max,
        ))
    }

    pub fn last(&self) -> Option<&'a DeviceSample> {
        self.samples.last().map(|t| &t.sample)
    }
}
