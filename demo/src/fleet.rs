//! The simulated fleet: hosts spread over providers, regions and GPU models, each
//! playing one scenario, so every dashboard panel and alert has something to show.
//! The Kubernetes-native clouds' hosts (CoreWeave, Nebius) run simulated pods, so the
//! namespace and pod labels show on day one; the others are not Kubernetes nodes.

use gpulse_gpu::simulator::SimSpec;

#[derive(Debug)]
pub struct DemoHost {
    pub name: &'static str,
    pub provider: &'static str,
    pub region: &'static str,
    pub zone: &'static str,
    pub instance_type: &'static str,
    pub team: &'static str,
    pub spec: SimSpec,
}

/// (name, provider, region, zone, instance type, team, simulator spec without seed)
#[rustfmt::skip]
const HOSTS: [(&str, &str, &str, &str, &str, &str, &str); 18] = [
    ("aws-use1-p5-01", "aws", "us-east-1", "us-east-1a", "p5.48xlarge", "llm", "gpus=8,model=h100-sxm,scenario=training"),
    ("aws-use1-p5-02", "aws", "us-east-1", "us-east-1a", "p5.48xlarge", "llm", "gpus=8,model=h100-sxm,scenario=thermal"),
    ("aws-use1-p5-03", "aws", "us-east-1", "us-east-1b", "p5.48xlarge", "llm", "gpus=8,model=h100-sxm,scenario=sync-boost"),
    ("aws-usw2-p4de-01", "aws", "us-west-2", "us-west-2b", "p4de.24xlarge", "vision", "gpus=8,model=a100,scenario=training"),
    ("gcp-usc1-a3-01", "gcp", "us-central1", "us-central1-a", "a3-highgpu-8g", "llm", "gpus=8,model=h100-sxm,scenario=power-cap"),
    ("gcp-usc1-a3-02", "gcp", "us-central1", "us-central1-a", "a3-highgpu-8g", "vision", "gpus=8,model=h100-sxm,scenario=app-clocks"),
    ("gcp-usc1-g2-01", "gcp", "us-central1", "us-central1-b", "g2-standard-4", "inference", "gpus=1,model=l4,scenario=idle"),
    ("azure-eus-nd-01", "azure", "eastus", "eastus-1", "Standard_ND96isr_H100_v5", "llm", "gpus=8,model=h100-sxm,scenario=pcie-degraded"),
    ("azure-eus-nd-02", "azure", "eastus", "eastus-2", "Standard_ND96isr_H100_v5", "research", "gpus=8,model=h100-sxm,scenario=nvlink-errors"),
    ("cw-use04-h100-01", "coreweave", "us-east-04", "", "gd-8xh100ib-i128", "llm", "gpus=8,model=h100-sxm,scenario=training,pods=6"),
    ("cw-use04-h100-02", "coreweave", "us-east-04", "", "gd-8xh100ib-i128", "llm", "gpus=8,model=h100-sxm,scenario=lost,pods=8"),
    ("lambda-uss1-h100-01", "lambda", "us-south-1", "", "gpu_8x_h100_sxm5", "research", "gpus=8,model=h100-sxm,scenario=training,hide=energy+pcie_replays"),
    ("lambda-uss1-h100-02", "lambda", "us-south-1", "", "gpu_8x_h100_sxm5", "inference", "gpus=8,model=h100-sxm,scenario=idle-held"),
    ("nebius-eun1-h200-01", "nebius", "eu-north1", "", "gpu-h200-sxm", "llm", "gpus=8,model=h200,scenario=xid,pods=5"),
    ("crusoe-usnc1-h200-01", "crusoe", "us-northcentral1", "", "h200-141gb-sxm-ib.8x", "llm", "gpus=8,model=h200,scenario=idle"),
    ("oci-iad-h100-01", "oci", "us-ashburn-1", "", "BM.GPU.H100.8", "vision", "gpus=8,model=h100-sxm,scenario=hw-slowdown"),
    ("onprem-dc1-a100-01", "on-prem", "dc1", "row-4", "dgx-a100", "research", "gpus=8,model=a100,scenario=ecc"),
    ("onprem-dc1-a100-02", "on-prem", "dc1", "row-4", "dgx-a100", "research", "gpus=8,model=a100,scenario=idle"),
];

pub fn hosts() -> Vec<DemoHost> {
    HOSTS
        .iter()
        .enumerate()
        .map(
            |(i, (name, provider, region, zone, instance_type, team, spec))| {
                let mut spec: SimSpec = spec.parse().expect("the demo fleet's specs are valid");
                spec.seed = 1000 + i as u64;
                DemoHost {
                    name,
                    provider,
                    region,
                    zone,
                    instance_type,
                    team,
                    spec,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_fleet_spans_enough_hosts_providers_and_scenarios() {
        let hosts = hosts();
        assert!(hosts.len() >= 12);
        let providers: BTreeSet<_> = hosts.iter().map(|h| h.provider).collect();
        assert!(providers.len() >= 4, "{providers:?}");
        let scenarios: BTreeSet<_> = hosts.iter().map(|h| h.spec.scenario.name()).collect();
        assert_eq!(
            scenarios.len(),
            gpulse_gpu::simulator::Scenario::NAMES.len(),
            "{scenarios:?}"
        );
        let names: BTreeSet<_> = hosts.iter().map(|h| h.name).collect();
        assert_eq!(names.len(), hosts.len());
    }

    #[test]
    fn kubernetes_hosts_run_pods_in_more_than_one_namespace_and_others_none() {
        use gpulse_gpu::GpuBackend;
        use gpulse_gpu::simulator::Simulator;
        let mut namespaces = BTreeSet::new();
        for h in hosts() {
            let kubernetes = matches!(h.provider, "coreweave" | "nebius");
            assert_eq!(h.spec.pods > 0, kubernetes, "{}", h.name);
            for g in Simulator::new(h.spec).sample(0) {
                for holder in g.allocation.iter().flat_map(|a| a.holders()) {
                    namespaces.insert(holder.namespace.clone());
                }
            }
        }
        assert!(namespaces.len() >= 3, "{namespaces:?}");
    }
}
