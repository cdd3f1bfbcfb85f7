//! Who holds each GPU, as both views show it: gpulse's one allocation series per
//! device, and dcgm-exporter's pod labels on every series of a held GPU.

use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};

use crate::dcgm::DcgmCompat;
use crate::{ExpositionOptions, HostSource, HostView, render_fleet};

struct Hosts(Vec<HostView>);

impl HostSource for Hosts {
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
        self.0.iter().for_each(f);
    }
}

fn host(agent_id: &str, spec: &str) -> HostView {
    let mut sim = Simulator::new(spec.parse().expect("a valid spec"));
    let identity = HostIdentity {
        agent_id: agent_id.into(),
        ..HostIdentity::default()
    };
    let mut view = HostView::new(identity, sim.inventory().to_vec(), 0);
    view.apply(Snapshot {
        timestamp_unix_ms: 0,
        gpus: sim.sample(0),
    })
    .expect("the simulator's GPUs are in its inventory");
    view
}

fn render(hosts: Vec<HostView>, dcgm: DcgmCompat) -> String {
    let mut out = String::new();
    render_fleet(
        &Hosts(hosts),
        ExpositionOptions {
            nvlink_per_link: false,
            per_process: false,
            dcgm,
        },
        &mut out,
    );
    out
}

fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

#[test]
fn each_device_has_one_allocation_series_and_an_unheld_one_says_so() {
    let view = host("k8s-1", "gpus=3,pods=2");
    let uuids: Vec<String> = view.gpus.iter().map(|g| g.info.uuid.clone()).collect();
    let text = render(vec![view], DcgmCompat::Off);
    let info = series(&text, "gpulse_gpu_allocation_info");
    assert_eq!(info.len(), 3, "{info:#?}");
    let of = |uuid: &str| {
        *info
            .iter()
            .find(|l| l.contains(&format!("uuid=\"{uuid}\"")))
            .expect("a series per GPU")
    };
    assert!(of(&uuids[0]).contains("namespace=\"ml-training\""));
    assert!(of(&uuids[0]).contains("container=\"pytorch\""));
    assert!(of(&uuids[1]).contains("namespace=\"inference\""));
    assert!(
        of(&uuids[2]).contains("namespace=\"\",pod=\"\",container=\"\""),
        "unheld: {}",
        of(&uuids[2])
    );
    assert!(series(&text, "gpulse_gpu_mig_allocation_info").is_empty());
    // gpulse's own GPU series stay as they were: the join adds the pod.
    assert!(
        !series(&text, "gpulse_gpu_temperature_celsius")
            .iter()
            .any(|l| l.contains("pod=")),
    );
}

#[test]
fn mig_devices_have_their_own_allocation_series() {
    let view = host("k8s-mig", "gpus=2,model=a100,mig=2,pods=1");
    let migs: Vec<String> = view.gpus[0]
        .info
        .mig_instances
        .iter()
        .map(|m| m.uuid.clone())
        .collect();
    let text = render(vec![view], DcgmCompat::Off);
    let mig = series(&text, "gpulse_gpu_mig_allocation_info");
    assert_eq!(
        mig.len(),
        4,
        "two MIG devices on each of two GPUs: {mig:#?}"
    );
    for uuid in &migs {
        let l = mig
            .iter()
            .find(|l| l.contains(&format!("mig_uuid=\"{uuid}\"")))
            .expect("a series per MIG device");
        assert!(l.contains("namespace=\"ml-training\""), "{l}");
    }
    // The pod holds the MIG devices, not the whole GPU.
    assert!(
        series(&text, "gpulse_gpu_allocation_info")
            .iter()
            .all(|l| l.contains("pod=\"\"")),
    );
}

#[test]
fn a_host_that_does_not_know_its_pods_shows_no_allocation() {
    let text = render(vec![host("bare", "gpus=2")], DcgmCompat::Also);
    assert!(series(&text, "gpulse_gpu_allocation_info").is_empty());
    assert!(!text.contains("pod="), "no pod label anywhere");
}

#[test]
fn the_dcgm_view_puts_the_holder_on_every_series_of_a_held_gpu_only() {
    let view = host("k8s-1", "gpus=2,pods=1");
    let (held, free) = (
        view.gpus[0].info.uuid.clone(),
        view.gpus[1].info.uuid.clone(),
    );
    let pod = view.gpus[0]
        .latest()
        .unwrap()
        .allocation
        .as_ref()
        .unwrap()
        .holders()[0]
        .pod
        .clone();
    let text = render(vec![view], DcgmCompat::Only);
    let dcgm: Vec<&str> = text.lines().filter(|l| l.starts_with("DCGM_FI_")).collect();
    assert!(dcgm.len() > 40, "{}", dcgm.len());
    for l in &dcgm {
        if l.contains(&held) {
            assert!(
                l.contains(&format!(
                    "container=\"pytorch\",namespace=\"ml-training\",pod=\"{pod}\""
                )),
                "{l}"
            );
        } else {
            assert!(l.contains(&free), "{l}");
            assert!(!l.contains("pod="), "unheld GPUs carry no pod label: {l}");
        }
    }
}

/// The figures docs/metrics.md gives for choosing one allocation series per device
/// over the pod labels on every GPU series: what each costs a fleet of 1,000 hosts of
/// 8 GPUs, in series, and in series created when one GPU changes pods.
#[test]
fn the_allocation_series_costs_one_series_per_gpu() {
    const HOSTS: usize = 1000;
    let view = host("k8s-8", "gpus=8,pods=8");
    let text = render(vec![view], DcgmCompat::Off);
    let per_gpu = |uuid_label: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(uuid_label))
            .count()
    };
    let gpus = 8;
    let gpu_series: usize = (0..gpus).map(|i| per_gpu(&format!("gpu=\"{i}\""))).sum();
    let allocation = series(&text, "gpulse_gpu_allocation_info").len();
    assert_eq!(allocation, gpus, "one allocation series per GPU");
    let without = (gpu_series - allocation) * HOSTS;
    let labels_everywhere = without;
    let joined = gpu_series * HOSTS;
    let per_gpu_series = (gpu_series - allocation) / gpus;
    println!(
        "1,000 hosts x 8 GPUs: {without} per-GPU series today; pod labels on every series: \
         {labels_everywhere} series, {per_gpu_series} new series each time a GPU changes pods; \
         one allocation series per GPU: {joined} series (+{}), 1 new series each time",
        joined - without
    );
    assert!(per_gpu_series > 30, "{per_gpu_series}");
    assert_eq!(joined - without, HOSTS * gpus);
}
