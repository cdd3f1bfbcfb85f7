//! Behaviours real drivers show on some GPUs and not on others, switched on per GPU so a
//! test can put a quirky GPU next to a well-behaved one. The H200 on driver 580 that
//! gpulse captured (gpu/fixtures/captures/h200-matmul-2026-12-01) shows none of them,
//! so none is on by default.
//!
//! Syntax (`GPULSE_NVML_MOCK_QUIRKS`, `gpulse_mock_set_quirks`): names joined by `+`,
//! each optionally `@N` for GPU N only: `thermal-violation-unsupported@1+deprecated`.

/// One real-driver behaviour the library can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// nvml.h on nvmlDeviceGetViolationStatus: the thermal policy is not supported on
    /// some GPUs while the other policies answer. Field 75 (PERF_POLICY_THERMAL) still
    /// answers.
    ThermalViolationUnsupported,
    /// Field 82 (MEMORY_TEMP) labelled NVML_VALUE_TYPE_DOUBLE while the union holds an
    /// unsigned integer (DCGM carries a workaround, nvbug 4300930). The H200 probe on
    /// 580.159.04 shows the fixed labelling (unsigned int).
    MemoryTempTypedDouble,
    /// The functions CUDA 13 deprecated, once removed: nvmlDeviceGetTemperature,
    /// ...GetCurrentClocksThrottleReasons, ...GetSupportedClocksThrottleReasons,
    /// ...GetApplicationsClock and ...GetViolationStatus answer NVML_ERROR_DEPRECATED
    /// (26 in nvml.h's nvmlReturn_t); their successors still answer.
    Deprecated,
    /// nvmlDeviceRegisterEvents fails for this GPU with NVML_ERROR_UNKNOWN, though its
    /// supported event types list XIDs.
    EventRegistrationFails,
}

impl Quirk {
    pub const NAMES: [(&'static str, Quirk); 4] = [
        (
            "thermal-violation-unsupported",
            Quirk::ThermalViolationUnsupported,
        ),
        ("memory-temp-double", Quirk::MemoryTempTypedDouble),
        ("deprecated", Quirk::Deprecated),
        ("event-registration-fails", Quirk::EventRegistrationFails),
    ];
}

/// The quirks of a host: each on every GPU, or on one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks(Vec<(Quirk, Option<u32>)>);

impl Quirks {
    pub fn parse(s: &str) -> Result<Quirks, String> {
        let mut out = Vec::new();
        for part in s.split('+').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, gpu) = match part.split_once('@') {
                Some((n, g)) => (
                    n,
                    Some(
                        g.parse::<u32>()
                            .map_err(|_| format!("quirk {part:?}: give a GPU index after @"))?,
                    ),
                ),
                None => (part, None),
            };
            let quirk = Quirk::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, q)| *q)
                .ok_or_else(|| {
                    format!(
                        "unknown quirk {name:?}; known quirks: {}",
                        Quirk::NAMES.map(|(n, _)| n).join(", ")
                    )
                })?;
            out.push((quirk, gpu));
        }
        Ok(Quirks(out))
    }

    /// Whether GPU `index` shows `quirk`.
    pub fn has(&self, quirk: Quirk, index: u32) -> bool {
        self.0
            .iter()
            .any(|(q, gpu)| *q == quirk && gpu.is_none_or(|g| g == index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quirks_apply_to_every_gpu_or_to_one() {
        let q = Quirks::parse("deprecated+thermal-violation-unsupported@1").unwrap();
        assert!(q.has(Quirk::Deprecated, 0) && q.has(Quirk::Deprecated, 5));
        assert!(!q.has(Quirk::ThermalViolationUnsupported, 0));
        assert!(q.has(Quirk::ThermalViolationUnsupported, 1));
        assert!(Quirks::parse("").unwrap().0.is_empty());
        let err = Quirks::parse("melting").unwrap_err();
        assert!(
            err.contains("known quirks: thermal-violation-unsupported"),
            "{err}"
        );
        assert!(Quirks::parse("deprecated@x").is_err());
    }
}
