//! Where this host runs: provider, region, zone and instance type, and how each value
//! was learned. The operator's config always wins; then the instance metadata service
//! ([`metadata`]), asked only when the DMI tables ([`dmi`]) name a provider that has one;
//! then DMI itself. Providers DMI cannot tell (CoreWeave, Lambda, Nebius, Crusoe,
//! on-prem) are named in the config.
//!
//! Detection runs once, at start-up: DMI reads are blocking file reads (done off the
//! async runtime), metadata requests are bounded by `provider.metadata_timeout` in all.

pub mod dmi;
pub mod metadata;

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use gpulse_gpu::{IdentitySource, Learned, ProviderIdentity};

use crate::config::{AgentConfig, ProviderConfig};
use dmi::{DmiFacts, DmiMatch};
use metadata::MetadataFacts;

/// Combines what config, the metadata service and DMI say; config wins, then metadata,
/// then DMI. A DMI provider that contradicts the configured one is ignored with all it said.
pub fn merge(
    config: &ProviderConfig,
    dmi: Option<&DmiMatch>,
    md: Option<&MetadataFacts>,
) -> ProviderIdentity {
    let dmi =
        dmi.filter(|m| config.name.is_empty() || config.name.eq_ignore_ascii_case(m.provider));
    let pick = |stated: &str, from_md: Option<&str>, from_dmi: Option<&str>| {
        if !stated.is_empty() {
            Learned::from_config(stated)
        } else if let Some(v) = from_md.filter(|v| !v.is_empty()) {
            Learned {
                value: v.to_string(),
                source: IdentitySource::Metadata,
            }
        } else if let Some(v) = from_dmi.filter(|v| !v.is_empty()) {
            Learned {
                value: v.to_string(),
                source: IdentitySource::Dmi,
            }
        } else {
            Learned::default()
        }
    };
    ProviderIdentity {
        provider: pick(&config.name, None, dmi.map(|m| m.provider)),
        region: pick(&config.region, md.map(|m| m.region.as_str()), None),
        zone: pick(&config.zone, md.map(|m| m.zone.as_str()), None),
        instance_type: pick(
            &config.instance_type,
            md.map(|m| m.instance_type.as_str()),
            dmi.and_then(|m| m.instance_type.as_deref()),
        ),
    }
}

/// Reads DMI under `sysfs_root` off the async runtime.
async fn read_dmi(sysfs_root: PathBuf) -> Option<DmiMatch> {
    tokio::task::spawn_blocking(move || dmi::identify(&DmiFacts::read(&sysfs_root)))
        .await
        .ok()
        .flatten()
}

/// Detects the provider identity as configured (`provider.detect`, `sysfs_root`,
/// `provider.metadata_url`, `provider.metadata_timeout`) and logs what it found.
pub async fn detect(config: &AgentConfig) -> ProviderIdentity {
    let p = &config.provider;
    if !p.detect {
        return merge(p, None, None);
    }
    let found = read_dmi(config.sysfs_root.clone()).await;
    let agrees = found
        .as_ref()
        .is_some_and(|m| p.name.is_empty() || p.name.eq_ignore_ascii_case(m.provider));
    let missing = p.region.is_empty() || p.zone.is_empty() || p.instance_type.is_empty();
    let md = match &found {
        Some(m) if agrees && missing && dmi::has_metadata_service(m.provider) => {
            let budget = p.metadata_timeout;
            match tokio::time::timeout(budget, metadata::fetch(m.provider, &p.metadata_url, budget))
                .await
            {
                Ok(Ok(facts)) => Some(facts),
                Ok(Err(e)) => {
                    info!(
                        provider = m.provider,
                        "instance metadata not read: {e}; region, zone and instance type come from config or stay unknown"
                    );
                    None
                }
                Err(_) => {
                    info!(provider = m.provider, timeout = ?budget, "instance metadata did not answer in time (provider.metadata_timeout); region, zone and instance type come from config or stay unknown");
                    None
                }
            }
        }
        _ => None,
    };
    let id = merge(p, found.as_ref(), md.as_ref());
    info!(
        provider = %id.provider.value,
        provider_source = id.provider.source.name(),
        region = %id.region.value,
        region_source = id.region.source.name(),
        zone = %id.zone.value,
        zone_source = id.zone.source.name(),
        instance_type = %id.instance_type.value,
        instance_type_source = id.instance_type.source.name(),
        instance_id = found.as_ref().and_then(|m| m.instance_id.as_deref()).unwrap_or(""),
        "provider identity"
    );
    id
}

/// Default for `provider.metadata_timeout`: the whole metadata exchange, all requests.
pub const DEFAULT_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/dmi/{name}"))
    }

    #[test]
    fn config_wins_then_metadata_then_dmi() {
        let dmi = DmiMatch {
            provider: "aws",
            instance_type: Some("p5.48xlarge".into()),
            instance_id: None,
        };
        let md = MetadataFacts {
            region: "us-east-1".into(),
            zone: "us-east-1a".into(),
            instance_type: "p5en.48xlarge".into(),
        };
        let stated = ProviderConfig {
            zone: "use1-az4".into(),
            ..ProviderConfig::default()
        };
        let id = merge(&stated, Some(&dmi), Some(&md));
        assert_eq!(
            (id.provider.value.as_str(), id.provider.source),
            ("aws", IdentitySource::Dmi)
        );
        assert_eq!(id.region.source, IdentitySource::Metadata);
        assert_eq!(
            (id.zone.value.as_str(), id.zone.source),
            ("use1-az4", IdentitySource::Config)
        );
        assert_eq!(id.instance_type.value, "p5en.48xlarge");
        let id = merge(&ProviderConfig::default(), Some(&dmi), None);
        assert_eq!(
            (id.instance_type.value.as_str(), id.instance_type.source),
            ("p5.48xlarge", IdentitySource::Dmi)
        );
        assert_eq!(id.region.source, IdentitySource::Unknown);
        // An operator who says CoreWeave is believed over DMI, entirely.
        let cw = ProviderConfig {
            name: "coreweave".into(),
            ..ProviderConfig::default()
        };
        let id = merge(&cw, Some(&dmi), None);
        assert_eq!(id.provider.source, IdentitySource::Config);
        assert_eq!(id.instance_type.source, IdentitySource::Unknown);
    }

    fn config(root: &str, url: &str) -> AgentConfig {
        AgentConfig {
            sysfs_root: fixture(root),
            provider: ProviderConfig {
                metadata_url: url.to_string(),
                metadata_timeout: Duration::from_secs(2),
                ..ProviderConfig::default()
            },
            ..AgentConfig::default()
        }
    }

    #[tokio::test]
    async fn a_gcp_host_is_detected_from_dmi_and_its_metadata_service() {
        let router = Router::new()
            .route(
                "/computeMetadata/v1/instance/zone",
                get(|| async { "projects/9/zones/europe-west4-b" }),
            )
            .route(
                "/computeMetadata/v1/instance/machine-type",
                get(|| async { "projects/9/machineTypes/a3-ultragpu-8g" }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let id = detect(&config("gcp", &format!("http://{addr}"))).await;
        assert_eq!(
            (id.provider.value.as_str(), id.provider.source),
            ("gcp", IdentitySource::Dmi)
        );
        assert_eq!(
            (id.region.value.as_str(), id.region.source),
            ("europe-west4", IdentitySource::Metadata)
        );
        assert_eq!(id.instance_type.value, "a3-ultragpu-8g");
    }

    #[tokio::test]
    async fn bare_metal_asks_no_metadata_service_and_a_silent_one_is_survived() {
        // Nothing listens on this port: a bare-metal host must not even try it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let id = detect(&config("bare-metal", &url)).await;
        assert_eq!(id, ProviderIdentity::default());
        // An AWS host whose metadata service refuses: DMI's answers stand.
        let id = detect(&config("aws", &url)).await;
        assert_eq!(id.provider.value, "aws");
        assert_eq!(id.instance_type.source, IdentitySource::Dmi);
        assert_eq!(id.region.source, IdentitySource::Unknown);
    }

    #[tokio::test]
    async fn detection_can_be_turned_off() {
        let mut c = config("aws", "http://127.0.0.1:9");
        c.provider.detect = false;
        c.provider.name = "on-prem".into();
        let id = detect(&c).await;
        assert_eq!(id.provider.source, IdentitySource::Config);
        assert_eq!(id.instance_type.source, IdentitySource::Unknown);
    }
}
