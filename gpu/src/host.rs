//! Who a host is and where it runs.

use std::collections::BTreeMap;

/// How a provider identity value was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// Not known.
    #[default]
    Unknown,
    /// Named by the operator in the agent's configuration (always wins).
    Config,
    /// Read from the host's DMI tables (/sys/class/dmi/id).
    Dmi,
    /// Read from the provider's instance metadata service.
    Metadata,
}

impl IdentitySource {
    /// Stable name, used as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            IdentitySource::Unknown => "unknown",
            IdentitySource::Config => "config",
            IdentitySource::Dmi => "dmi",
            IdentitySource::Metadata => "metadata",
        }
    }
}

/// A value and how it was learned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Learned {
    pub value: String,
    pub source: IdentitySource,
}

impl Learned {
    pub fn from_config(value: impl Into<String>) -> Learned {
        let value = value.into();
        let source = if value.is_empty() {
            IdentitySource::Unknown
        } else {
            IdentitySource::Config
        };
        Learned { value, source }
    }
}

/// Where a host runs: provider ("aws", "gcp", "coreweave", "on-prem", ...), region, zone
/// and instance type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderIdentity {
    pub provider: Learned,
    pub region: Learned,
    pub zone: Learned,
    pub instance_type: Learned,
}

/// Facts about the host machine itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// /etc/machine-id: stable across reboots, unique per installation.
    pub machine_id: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpu_count: u32,
    pub memory_total_bytes: u64,
}

/// Everything an agent says about itself when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostIdentity {
    /// Stable identity of the agent; defaults to the hostname.
    pub agent_id: String,
    /// /proc/sys/kernel/random/boot_id: changes at every boot.
    pub boot_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub provider: ProviderIdentity,
    pub facts: HostFacts,
    /// Operator-chosen labels (team, cluster, ...).
    pub labels: BTreeMap<String, String>,
    /// Why the agent cannot read this host's GPUs, as a bounded kind
    /// ([`crate::BackendError::kind`]); empty when it can.
    pub gpu_backend_error: String,
}
