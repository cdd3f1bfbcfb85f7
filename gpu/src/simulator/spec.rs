//! The `--simulate` syntax: `gpus=8,model=h100-sxm,scenario=thermal[,seed=N][,hide=energy+pcie_replays]`.

use std::fmt;
use std::str::FromStr;

use super::{GpuModel, Scenario};
use crate::{BackendError, Field};

/// Default GPU count when `gpus=` is not given: an 8-GPU server, the common shape.
pub const DEFAULT_GPUS: u32 = 8;
/// Upper bound on simulated GPUs per host, as on the largest real servers (NVL16 and friends).
pub const MAX_GPUS: u32 = 16;

/// What to simulate on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSpec {
    /// GPUs on the host, 1..=[`MAX_GPUS`]; default [`DEFAULT_GPUS`].
    pub gpus: u32,
    /// Default `h100-sxm`.
    pub model: GpuModel,
    /// Default `training`.
    pub scenario: Scenario,
    /// Seeds the random walk and the UUIDs; hosts with different seeds have different GPUs. Default 1.
    pub seed: u64,
    /// Fields the simulated host does not expose, as on an opaque cloud host.
    pub hidden: Vec<Field>,
    /// MIG instances per GPU (0: MIG off). Only on models that have MIG (not the L4).
    pub mig: u32,
    /// Pods the simulator plays on the GPUs without a kubelet (0: none, the default):
    /// pod `k` holds GPU `k` (its MIG devices, with MIG on), GPUs past the last pod
    /// are unallocated. 0..=`gpus`.
    pub pods: u32,
    /// The identity of the host playing these GPUs (the agent id), mixed into the UUIDs
    /// so that two agents with the same seed never report the same GPU. Not part of the
    /// `--simulate` syntax; empty (the default) leaves the UUIDs to the seed alone.
    pub host: String,
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            gpus: DEFAULT_GPUS,
            model: GpuModel::H100Sxm,
            scenario: Scenario::Training,
            seed: 1,
            hidden: Vec::new(),
            mig: 0,
            pods: 0,
            host: String::new(),
        }
    }
}

/// MIG instances one GPU can hold (the A100/H100/H200 "1g" profiles: seven).
pub const MAX_MIG_INSTANCES: u32 = 7;

impl SimSpec {
    /// The `--simulate` syntax, from the same lists the parser accepts.
    pub fn help() -> String {
        format!(
            "Simulate GPUs instead of reading NVML: gpus=N,model=M,scenario=S[,seed=N][,hide=field+field][,mig=N][,pods=N], \
             e.g. \"gpus=8,model=h100-sxm,scenario=thermal\". gpus: 1 to {MAX_GPUS} [default: {DEFAULT_GPUS}]. \
             Models: {}. Scenarios: {}. seed: a whole number [default: 1]. hide: fields the host hides ({}). \
             mig: MIG instances per GPU, 0 to {MAX_MIG_INSTANCES}. \
             pods: Kubernetes pods holding the first N GPUs, 0 to gpus, in namespaces {} \
             (a kubelet given with --pod-resources-socket takes precedence)",
            GpuModel::NAMES.map(|(n, _)| n).join(", "),
            Scenario::NAMES.map(|(n, _)| n).join(", "),
            Field::ALL.map(Field::name).join(", "),
            super::pods::NAMESPACES.join(", "),
        )
    }
}

impl FromStr for SimSpec {
    type Err = BackendError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| BackendError::InvalidSimSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut out = SimSpec::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                invalid(format!(
                    "{part:?} is not key=value; write e.g. gpus=8,model=h100-sxm,scenario=thermal"
                ))
            })?;
            match key.trim() {
                "gpus" => {
                    out.gpus = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_GPUS).contains(n))
                        .ok_or_else(|| {
                            invalid(format!(
                                "gpus={value}: give a whole number from 1 to {MAX_GPUS}"
                            ))
                        })?
                }
                "model" => {
                    out.model = GpuModel::parse(value).ok_or_else(|| {
                        invalid(format!(
                            "unknown model {value:?}; known models: {}",
                            GpuModel::NAMES.map(|(n, _)| n).join(", ")
                        ))
                    })?
                }
                "scenario" => {
                    out.scenario = Scenario::parse(value).ok_or_else(|| {
                        invalid(format!(
                            "unknown scenario {value:?}; known scenarios: {}",
                            Scenario::NAMES.map(|(n, _)| n).join(", ")
                        ))
                    })?
                }
                "seed" => {
                    out.seed = value
                        .parse()
                        .map_err(|_| invalid(format!("seed={value}: give a whole number")))?
                }
                "mig" => out.mig = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_MIG_INSTANCES)
                    .ok_or_else(|| {
                        invalid(format!(
                            "mig={value}: give the MIG instances per GPU, 0 to {MAX_MIG_INSTANCES}"
                        ))
                    })?,
                "pods" => {
                    out.pods = value.parse().map_err(|_| {
                        invalid(format!(
                            "pods={value}: give the number of pods, 0 to the number of GPUs"
                        ))
                    })?
                }
                "hide" => {
                    out.hidden = value
                        .split('+')
                        .map(|name| {
                            Field::ALL
                                .into_iter()
                                .find(|f| f.name() == name)
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "hide: unknown field {name:?}; known fields: {}",
                                        Field::ALL.map(Field::name).join(", ")
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
                other => {
                    return Err(invalid(format!(
                        "unknown key {other:?}; known keys: gpus, model, scenario, seed, hide, mig, pods"
                    )));
                }
            }
        }
        if out.pods > out.gpus {
            return Err(invalid(format!(
                "pods={}: a pod holds one GPU here, so give 0 to gpus ({})",
                out.pods, out.gpus
            )));
        }
        if out.mig > 0 && out.model == GpuModel::L4 {
            return Err(invalid(
                "mig: the L4 has no MIG mode; use a100, h100-sxm or h200".into(),
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for SimSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gpus={},model={},scenario={},seed={}",
            self.gpus,
            self.model.name(),
            self.scenario.name(),
            self.seed
        )?;
        if !self.hidden.is_empty() {
            let names: Vec<_> = self.hidden.iter().map(|h| h.name()).collect();
            write!(f, ",hide={}", names.join("+"))?;
        }
        if self.mig > 0 {
            write!(f, ",mig={}", self.mig)?;
        }
        if self.pods > 0 {
            write!(f, ",pods={}", self.pods)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_model_scenario_and_key_the_parser_accepts() {
        let help = SimSpec::help();
        for (name, _) in GpuModel::NAMES {
            assert!(help.contains(name), "{name} missing from {help}");
        }
        for (name, _) in Scenario::NAMES {
            assert!(help.contains(name), "{name} missing from {help}");
        }
        for key in [
            "gpus=",
            "model=",
            "scenario=",
            "seed=",
            "hide=",
            "mig=",
            "pods=",
        ] {
            assert!(help.contains(key), "{key} missing from {help}");
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let s: SimSpec = "gpus=8,model=h100-sxm,scenario=thermal".parse().unwrap();
        assert_eq!(s.gpus, 8);
        assert_eq!(s.model, GpuModel::H100Sxm);
        assert_eq!(s.scenario, Scenario::Thermal);
    }

    #[test]
    fn display_round_trips() {
        let s: SimSpec = "gpus=2,model=l4,scenario=pcie-degraded,seed=9,hide=energy+pcie_replays"
            .parse()
            .unwrap();
        assert_eq!(s.to_string().parse::<SimSpec>().unwrap(), s);
        let s: SimSpec = "gpus=2,model=a100,mig=3".parse().unwrap();
        assert_eq!(s.to_string().parse::<SimSpec>().unwrap(), s);
        let s: SimSpec = "gpus=4,mig=2,pods=3".parse().unwrap();
        assert_eq!(s.pods, 3);
        assert_eq!(s.to_string().parse::<SimSpec>().unwrap(), s);
    }

    #[test]
    fn every_bad_spec_names_the_problem() {
        for (spec, needle) in [
            ("gpus=0", "from 1 to 16"),
            ("gpus=x", "gpus=x"),
            ("model=v100", "known models: h100-sxm"),
            ("scenario=melting", "known scenarios: idle"),
            ("seed=-1", "seed=-1"),
            ("colour=red", "unknown key \"colour\""),
            ("thermal", "is not key=value"),
            ("hide=fan", "unknown field \"fan\""),
            ("mig=9", "0 to 7"),
            ("model=l4,mig=2", "no MIG mode"),
            ("gpus=2,pods=3", "0 to gpus (2)"),
            ("pods=x", "pods=x: give the number of pods"),
        ] {
            let err = spec.parse::<SimSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(
                err.contains(spec),
                "{spec}: error should quote the input: {err}"
            );
        }
    }
}
