//! Who this host is: hostname, machine id, boot id, host facts and the provider
//! identity stated in the configuration.

use std::path::Path;

use gpulse_gpu::{HostFacts, HostIdentity, Learned, ProviderIdentity};

use crate::config::AgentConfig;

/// Reads a one-line system file, or "" when it is absent (containers, other OSes).
fn read_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where the agent reads host identity files; a test points it at a fixture tree.
#[derive(Debug, Clone)]
pub struct SystemPaths {
    pub machine_id: &'static str,
    pub boot_id: &'static str,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            machine_id: "/etc/machine-id",
            boot_id: "/proc/sys/kernel/random/boot_id",
        }
    }
}

/// The identity this agent announces in its Hello.
pub fn host_identity(config: &AgentConfig, paths: &SystemPaths) -> HostIdentity {
    let hostname = sysinfo::System::host_name().unwrap_or_else(|| "unknown-host".to_string());
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpu_model = system
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let p = &config.provider;
    HostIdentity {
        agent_id: config
            .agent_id
            .clone()
            .unwrap_or_else(|| sanitize_id(&hostname)),
        boot_id: read_id(Path::new(paths.boot_id)),
        hostname,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        provider: ProviderIdentity {
            provider: Learned::from_config(&p.name),
            region: Learned::from_config(&p.region),
            zone: Learned::from_config(&p.zone),
            instance_type: Learned::from_config(&p.instance_type),
        },
        facts: HostFacts {
            machine_id: read_id(Path::new(paths.machine_id)),
            os: sysinfo::System::long_os_version().unwrap_or_default(),
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
            cpu_model,
            cpu_count: system.cpus().len() as u32,
            memory_total_bytes: system.total_memory(),
        },
        labels: config.labels.clone(),
        gpu_backend_error: String::new(),
    }
}

/// Hostnames become agent ids: anything outside the id alphabet becomes '-'.
fn sanitize_id(hostname: &str) -> String {
    let id: String = hostname
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "unknown-host".to_string()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_provider_and_says_so() {
        let config = AgentConfig {
            agent_id: Some("gpu-node-7".into()),
            provider: crate::config::ProviderConfig {
                name: "lambda".into(),
                region: "us-south-1".into(),
                ..Default::default()
            },
            ..AgentConfig::default()
        };
        let id = host_identity(&config, &SystemPaths::default());
        assert_eq!(id.agent_id, "gpu-node-7");
        assert_eq!(id.provider.provider.value, "lambda");
        assert_eq!(
            id.provider.provider.source,
            gpulse_gpu::IdentitySource::Config
        );
        assert_eq!(id.provider.zone.source, gpulse_gpu::IdentitySource::Unknown);
        assert!(!id.hostname.is_empty());
    }

    #[test]
    fn missing_identity_files_read_as_empty() {
        let paths = SystemPaths {
            machine_id: "/nonexistent/machine-id",
            boot_id: "/nonexistent/boot_id",
        };
        let id = host_identity(&AgentConfig::default(), &paths);
        assert_eq!(id.facts.machine_id, "");
        assert_eq!(id.boot_id, "");
    }

    #[test]
    fn hostnames_become_valid_ids() {
        assert_eq!(sanitize_id("gpu node/1"), "gpu-node-1");
        assert_eq!(sanitize_id(""), "unknown-host");
    }
}
