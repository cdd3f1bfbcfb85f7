//! Behaviours real drivers show on some GPUs and not on others, switched on per GPU so a
//! test can put a quirky GPU next to a well-behaved one. The H200 on driver 580 that
//! gpulse captured (gpu/fixtures/captures/h200-matmul-2026-12-01) shows none of them,
//! so none is on by default.
//!
//! Syntax (`GPULSE_NVML_MOCK_QUIRKS`, `gpulse_mock_set_quirks`): names joined by `+`,
//! each optionally `@N` for GPU N only: `thermal-violation-unsupported@1+deprecated`.
//! `links=N` takes a number: `links=36@0`.

/// One real-driver behaviour the library can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// nvml.h 12.6.77 line 6153, on nvmlDeviceGetViolationStatus: "Violation for thermal
    /// capping is not supported at this time", while the other policies answer. Field 75
    /// (PERF_POLICY_THERMAL, 13.3.29 line 2476) still answers.
    ThermalViolationUnsupported,
    /// Field 82 (MEMORY_TEMP, nvml.h 13.3.29 line 2485) labelled NVML_VALUE_TYPE_DOUBLE
    /// while the union holds an unsigned integer: DCGM reads uiVal whatever the label
    /// ("nvbugs/4300930 affecting r545", dcgmlib/src/DcgmCacheManager.cpp,
    /// DcgmCacheManager::BufferOrCacheLatestGpuValue). The H200 probe on 580.159.04
    /// shows the fixed labelling (unsigned int).
    MemoryTempTypedDouble,
    /// The functions CUDA 13 deprecated, once removed: nvmlDeviceGetTemperature,
    /// ...GetCurrentClocksThrottleReasons, ...GetSupportedClocksThrottleReasons,
    /// ...GetApplicationsClock and ...GetViolationStatus answer NVML_ERROR_DEPRECATED
    /// (26, nvml.h 13.3.29 line 1324; nvmlDeviceGetViolationStatus's doc there: "This
    /// API will be removed in CUDA 14.0", lines 7660-7661);
    /// their successors still answer.
    Deprecated,
    /// nvmlDeviceRegisterEvents fails for this GPU with NVML_ERROR_UNKNOWN, though its
    /// supported event types list XIDs.
    EventRegistrationFails,
    /// The GPU has this many NVLink links (1 to NVML_NVLINK_MAX_LINKS, 36 in the CUDA
    /// 13.3 header, nvml.h line 455; 18 in every header before it): field 91
    /// (NVML_FI_DEV_NVLINK_LINK_COUNT, nvml.h 13.3 line 2503) says so and every link
    /// answers its state, counters and throughput. The simulated models stop at 18;
    /// link `k` past the model's links carries the data of link `k mod` their count.
    Links(u32),
    /// The NVLink5 generation's counters: fields 202 and 204
    /// (NVML_FI_DEV_NVLINK_COUNT_XMIT_BYTES, _RCV_BYTES, "Total Tx/Rx bytes on the link
    /// in NVLink5", nvml.h 13.3 lines 2748, 2750, scoped by link id, line 2745) answer in
    /// bytes, and the older throughput fields 138, 139 (..._THROUGHPUT_DATA_TX/RX, KiB,
    /// lines 2602-2603) answer NOT_SUPPORTED. Without it, the reverse: 202 and 204 answer
    /// NOT_SUPPORTED, as on NVLink4 and older. Which of the two a given NVLink5 driver
    /// answers for 138/139 is not documented; the library keeps them apart so that a
    /// client is tested on each.
    NvLink5Counters,
}

impl Quirk {
    /// The quirks without a parameter, by name.
    pub const NAMES: [(&'static str, Quirk); 5] = [
        (
            "thermal-violation-unsupported",
            Quirk::ThermalViolationUnsupported,
        ),
        ("memory-temp-double", Quirk::MemoryTempTypedDouble),
        ("deprecated", Quirk::Deprecated),
        ("event-registration-fails", Quirk::EventRegistrationFails),
        ("nvlink5-counters", Quirk::NvLink5Counters),
    ];

    /// `links=N`: N from 1 to NVML_NVLINK_MAX_LINKS (36, nvml.h 13.3 line 455).
    fn parse_links(name: &str) -> Option<Result<Quirk, String>> {
        let n = name.strip_prefix("links=")?;
        Some(
            n.parse::<u32>()
                .ok()
                .filter(|n| (1..=crate::nvml_h::NVLINK_MAX_LINKS).contains(n))
                .map(Quirk::Links)
                .ok_or_else(|| {
                    format!(
                        "quirk {name:?}: give a link count from 1 to {}",
                        crate::nvml_h::NVLINK_MAX_LINKS
                    )
                }),
        )
    }
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
            if let Some(links) = Quirk::parse_links(name) {
                out.push((links?, gpu));
                continue;
            }
            let quirk = Quirk::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, q)| *q)
                .ok_or_else(|| {
                    format!(
                        "unknown quirk {name:?}; known quirks: {}, links=N",
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

    /// The link count `links=N` gives GPU `index`, if any (the last one named wins).
    pub fn links(&self, index: u32) -> Option<u32> {
        self.0.iter().rev().find_map(|(q, gpu)| match q {
            Quirk::Links(n) if gpu.is_none_or(|g| g == index) => Some(*n),
            _ => None,
        })
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

    #[test]
    fn a_link_count_is_per_gpu_and_bounded_by_the_header() {
        let q = Quirks::parse("links=36@1+nvlink5-counters").unwrap();
        assert_eq!(q.links(0), None);
        assert_eq!(q.links(1), Some(36));
        assert!(q.has(Quirk::NvLink5Counters, 0));
        for bad in ["links=0", "links=37", "links=x"] {
            let err = Quirks::parse(bad).unwrap_err();
            assert!(err.contains("from 1 to 36"), "{bad}: {err}");
        }
    }
}
