//! A window of readings of one GPU, with the derived facts the rules share.

use crate::{DeviceInfo, DeviceSample, DeviceState};

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

    pub(crate) fn is_busy(s: &DeviceSample) -> bool {
        s.gpu_utilization_percent
            .value()
            .is_some_and(|u| u >= BUSY_UTILIZATION_PERCENT)
            || s.gpm.value().is_some_and(|g| g.sm_active >= BUSY_SM_ACTIVE)
    }

    /// Readings in which the GPU was busy.
    pub fn busy(&self) -> impl Iterator<Item = &'a DeviceSample> + 'a {
        self.answering().filter(|s| Self::is_busy(s))
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
