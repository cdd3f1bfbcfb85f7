//! Which provider a host runs on, from its DMI tables (/sys/class/dmi/id), with no
//! network. The signals are those cloud-init's ds-identify uses (tools/ds-identify:
//! dscheck_Ec2, dscheck_GCE, dscheck_Azure, dscheck_Oracle, dscheck_AliYun, and the
//! sys_vendor checks of the Hetzner, DigitalOcean, Vultr, Scaleway, Akamai/Linode and
//! UpCloud datasources), as also used by Datadog's DetectCloudProviderDMI.

use std::path::Path;

/// The DMI fields detection reads, as found under a sysfs root ("" when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmiFacts {
    pub sys_vendor: String,
    pub product_name: String,
    pub product_uuid: String,
    pub product_serial: String,
    pub chassis_asset_tag: String,
    pub board_asset_tag: String,
    /// /sys/hypervisor/uuid (Xen-based EC2 instances).
    pub hypervisor_uuid: String,
}

impl DmiFacts {
    /// Reads the fields under `sysfs_root` (normally "/"); unreadable files read as "".
    pub fn read(sysfs_root: &Path) -> DmiFacts {
        let dmi = sysfs_root.join("sys/class/dmi/id");
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        DmiFacts {
            sys_vendor: read(&dmi.join("sys_vendor")),
            product_name: read(&dmi.join("product_name")),
            product_uuid: read(&dmi.join("product_uuid")),
            product_serial: read(&dmi.join("product_serial")),
            chassis_asset_tag: read(&dmi.join("chassis_asset_tag")),
            board_asset_tag: read(&dmi.join("board_asset_tag")),
            hypervisor_uuid: read(&sysfs_root.join("sys/hypervisor/uuid")),
        }
    }
}

/// Azure's fixed chassis asset tag (cloud-init azure/identity.py, AZURE_CHASSIS_ASSET_TAG).
pub const AZURE_CHASSIS_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
/// Oracle Cloud's chassis asset tag (cloud-init DataSourceOracle.py, _is_platform_viable).
pub const OCI_CHASSIS_ASSET_TAG: &str = "OracleCloud.com";

/// What DMI says about the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmiMatch {
    /// Provider name as gpulse reports it: aws, gcp, azure, oci, alibaba, hetzner, ...
    pub provider: &'static str,
    /// The instance type, where DMI carries it (AWS Nitro: product_name).
    pub instance_type: Option<String>,
    /// The instance id, where DMI carries it (AWS Nitro: board_asset_tag).
    pub instance_id: Option<String>,
}

/// Whether `provider` has an instance metadata service gpulse reads.
pub fn has_metadata_service(provider: &str) -> bool {
    matches!(provider, "aws" | "gcp" | "azure" | "oci")
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The provider DMI names, or `None` (bare metal, on-prem, or a provider DMI cannot tell).
pub fn identify(f: &DmiFacts) -> Option<DmiMatch> {
    let just = |provider| {
        Some(DmiMatch {
            provider,
            instance_type: None,
            instance_id: None,
        })
    };
    // AWS: ds-identify dscheck_Ec2 / ec2_identify: product_uuid (or the Xen hypervisor
    // uuid) starts with "ec2"; Nitro also sets sys_vendor "Amazon EC2", the instance
    // type as product_name and the instance id as board_asset_tag.
    if starts_with_ci(&f.product_uuid, "ec2")
        || starts_with_ci(&f.hypervisor_uuid, "ec2")
        || f.sys_vendor == "Amazon EC2"
    {
        let nitro = f.sys_vendor == "Amazon EC2";
        let instance_type =
            Some(f.product_name.clone()).filter(|p| nitro && p.contains('.') && !p.contains(' '));
        let instance_id = Some(f.board_asset_tag.clone()).filter(|t| t.starts_with("i-"));
        return Some(DmiMatch {
            provider: "aws",
            instance_type,
            instance_id,
        });
    }
    // GCP: dscheck_GCE: product_name "Google Compute Engine" (or "Google"), or a
    // product_serial starting "GoogleCloud-".
    if f.product_name == "Google Compute Engine"
        || f.product_name == "Google"
        || f.product_serial.starts_with("GoogleCloud-")
    {
        return just("gcp");
    }
    if f.chassis_asset_tag == AZURE_CHASSIS_ASSET_TAG {
        return just("azure");
    }
    if f.chassis_asset_tag == OCI_CHASSIS_ASSET_TAG {
        return just("oci");
    }
    // Alibaba: dscheck_AliYun: product_name "Alibaba Cloud ECS".
    if f.product_name == "Alibaba Cloud ECS" {
        return just("alibaba");
    }
    let vendor = f.sys_vendor.to_ascii_lowercase();
    for (needle, provider) in [
        ("hetzner", "hetzner"),
        ("digitalocean", "digitalocean"),
        ("vultr", "vultr"),
        ("scaleway", "scaleway"),
        ("linode", "linode"),
        ("akamai", "linode"),
        ("upcloud", "upcloud"),
    ] {
        if vendor.starts_with(needle) {
            return just(provider);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/dmi/{name}"))
    }

    #[test]
    fn every_fixture_tree_names_its_provider() {
        for (dir, provider) in [
            ("aws", Some("aws")),
            ("aws-xen", Some("aws")),
            ("gcp", Some("gcp")),
            ("azure", Some("azure")),
            ("oci", Some("oci")),
            ("alibaba", Some("alibaba")),
            ("hetzner", Some("hetzner")),
            ("digitalocean", Some("digitalocean")),
            ("vultr", Some("vultr")),
            ("scaleway", Some("scaleway")),
            ("linode", Some("linode")),
            ("upcloud", Some("upcloud")),
            ("bare-metal", None),
            ("empty", None),
        ] {
            let facts = DmiFacts::read(&fixture(dir));
            assert_eq!(
                identify(&facts).map(|m| m.provider),
                provider,
                "{dir}: {facts:?}"
            );
        }
    }

    #[test]
    fn aws_nitro_names_its_instance_type_and_id() {
        let m = identify(&DmiFacts::read(&fixture("aws"))).unwrap();
        assert_eq!(m.instance_type.as_deref(), Some("p5.48xlarge"));
        assert_eq!(m.instance_id.as_deref(), Some("i-0a1b2c3d4e5f60718"));
        let xen = identify(&DmiFacts::read(&fixture("aws-xen"))).unwrap();
        assert_eq!(
            xen.instance_type, None,
            "Xen's product_name is not an instance type"
        );
    }
}
