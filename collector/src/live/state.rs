//! The whole fleet as the page shows it: every host with its tiles, grouped by
//! provider then host, and the numbers at the top. Built from any [`HostSource`];
//! a host whose readings did not change since the last build is not judged again.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use gpulse_exposition::{HostSource, HostView};

use super::tile::{ReasonClass, Tile, TileState};
use crate::cost::pricing::{PriceQuery, Pricing};

/// One host on the page: who and where it is, what it costs, and its GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostEntry {
    /// The agent id: the key deltas name the host by.
    pub id: String,
    pub host: String,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// Whether the agent's stream is open.
    pub connected: bool,
    /// List price of this host's priced GPUs per hour (US$); `None` when none is priced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_per_hour: Option<f64>,
    /// GPUs no catalogue entry prices.
    pub unpriced_gpus: usize,
    pub gpus: Vec<Tile>,
}

/// The numbers at the top of the page, for the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub hosts: usize,
    pub gpus: usize,
    /// GPUs per state (every state named, zero included).
    pub states: BTreeMap<&'static str, usize>,
    /// Throttled GPUs per reason class (every class named).
    pub throttled_by_reason: BTreeMap<&'static str, usize>,
    /// Share of GPUs with a reading that work (busy, throttled or erroring while busy
    /// count as working): 0..1; `None` with no GPU reading.
    pub busy_share: Option<f64>,
    /// Hosts whose agent is disconnected.
    pub hosts_down: usize,
    /// GPUs per worst-finding severity.
    pub findings_by_severity: BTreeMap<&'static str, usize>,
    /// What the connected hosts' priced GPUs cost per hour now, at list price (US$).
    pub usd_per_hour: f64,
    /// GPUs of connected hosts no catalogue entry prices (not in `usd_per_hour`).
    pub unpriced_gpus: usize,
}

/// Every host, sorted by provider, then host name, then agent id.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetState {
    pub summary: Summary,
    pub hosts: Vec<HostEntry>,
}

impl HostEntry {
    pub fn of(view: &HostView, pricing: Option<&Pricing>) -> HostEntry {
        let id = &view.identity;
        let p = &id.provider;
        let mut usd_per_hour = None;
        let mut unpriced_gpus = 0;
        for gpu in &view.gpus {
            let price = pricing.and_then(|pricing| {
                pricing.price(&PriceQuery {
                    provider: &p.provider.value,
                    instance_type: &p.instance_type.value,
                    model: &gpu.info.model,
                    labels: &id.labels,
                })
            });
            match price {
                Some(price) => {
                    *usd_per_hour.get_or_insert(0.0) += price.usd_per_gpu_hour;
                }
                None => unpriced_gpus += 1,
            }
        }
        HostEntry {
            id: id.agent_id.clone(),
            host: id.hostname.clone(),
            provider: p.provider.value.clone(),
            region: p.region.value.clone(),
            zone: p.zone.value.clone(),
            instance_type: p.instance_type.value.clone(),
            connected: view.connected,
            usd_per_hour,
            unpriced_gpus,
            gpus: view
                .gpus
                .iter()
                .map(|g| Tile::of(g, view.connected))
                .collect(),
        }
    }

    /// The host without its tiles: what a delta compares to see whether to resend it.
    pub fn header_eq(&self, other: &HostEntry) -> bool {
        self.id == other.id
            && self.host == other.host
            && self.provider == other.provider
            && self.region == other.region
            && self.zone == other.zone
            && self.instance_type == other.instance_type
            && self.connected == other.connected
            && self.usd_per_hour == other.usd_per_hour
            && self.unpriced_gpus == other.unpriced_gpus
            && self.gpus.len() == other.gpus.len()
    }
}

impl Summary {
    pub fn of(hosts: &[HostEntry]) -> Summary {
        let mut s = Summary {
            hosts: hosts.len(),
            states: TileState::ALL.iter().map(|t| (t.name(), 0)).collect(),
            throttled_by_reason: ReasonClass::ALL.iter().map(|r| (r.name(), 0)).collect(),
            findings_by_severity: ["info", "warning", "critical"]
                .into_iter()
                .map(|n| (n, 0))
                .collect(),
            ..Summary::default()
        };
        let (mut reading, mut working) = (0usize, 0usize);
        for host in hosts {
            if !host.connected {
                s.hosts_down += 1;
            } else {
                s.usd_per_hour += host.usd_per_hour.unwrap_or(0.0);
                s.unpriced_gpus += host.unpriced_gpus;
            }
            for tile in &host.gpus {
                s.gpus += 1;
                *s.states.entry(tile.state.name()).or_default() += 1;
                if let Some(r) = tile.reason {
                    *s.throttled_by_reason.entry(r.name()).or_default() += 1;
                }
                if let Some(sev) = tile.severity {
                    *s.findings_by_severity.entry(sev).or_default() += 1;
                }
                match tile.state {
                    TileState::Busy | TileState::Throttled => {
                        reading += 1;
                        working += 1;
                    }
                    TileState::Erroring => {
                        reading += 1;
                        if tile.util.is_some_and(|u| u > 0) {
                            working += 1;
                        }
                    }
                    TileState::Idle | TileState::Lost => reading += 1,
                    TileState::Down | TileState::Unknown => {}
                }
            }
        }
        s.busy_share = (reading > 0).then(|| working as f64 / reading as f64);
        s
    }
}

/// What decides whether a host must be judged again: any new batch moves
/// `last_seen`, any new reading `latest_snapshot`, a closed stream `connected`.
type HostKey = (Option<i64>, i64, bool);

/// Builds fleet states, remembering each host's entry so that only hosts with new
/// readings run the diagnosis rules again.
#[derive(Debug, Default)]
pub struct Builder {
    cache: HashMap<String, (HostKey, HostEntry)>,
}

impl Builder {
    /// The fleet now.
    pub fn build(&mut self, source: &dyn HostSource, pricing: Option<&Pricing>) -> FleetState {
        let mut hosts = Vec::new();
        let mut next = HashMap::with_capacity(self.cache.len());
        source.for_each_host(&mut |view| {
            let key = (
                view.latest_snapshot_unix_ms,
                view.last_seen_unix_ms,
                view.connected,
            );
            let id = &view.identity.agent_id;
            let entry = match self.cache.remove(id) {
                Some((k, entry)) if k == key => entry,
                _ => HostEntry::of(view, pricing),
            };
            hosts.push(entry.clone());
            next.insert(id.clone(), (key, entry));
        });
        self.cache = next;
        hosts.sort_by(|a, b| (&a.provider, &a.host, &a.id).cmp(&(&b.provider, &b.host, &b.id)));
        FleetState {
            summary: Summary::of(&hosts),
            hosts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{GpuBackend, HostIdentity, Learned, Snapshot};
    use std::sync::Mutex;

    /// Host views in a lock, as the collector's fleet keeps them.
    #[derive(Default)]
    struct Views(Mutex<Vec<HostView>>);

    impl HostSource for Views {
        fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
            for v in self.0.lock().expect("not poisoned").iter() {
                f(v);
            }
        }
    }

    fn host(name: &str, provider: &str, spec: &str) -> (HostView, Simulator) {
        let sim = Simulator::new(spec.parse().expect("a valid spec"));
        let identity = HostIdentity {
            agent_id: name.into(),
            hostname: name.into(),
            provider: gpulse_gpu::ProviderIdentity {
                provider: Learned::from_config(provider),
                instance_type: Learned::from_config("p5.48xlarge"),
                ..Default::default()
            },
            ..HostIdentity::default()
        };
        let view = HostView::new(identity, sim.inventory().to_vec(), 0).with_findings_readings(6);
        (view, sim)
    }

    fn play(view: &mut HostView, sim: &mut Simulator, from: i64, readings: i64) {
        for t in from..from + readings {
            view.apply(Snapshot {
                timestamp_unix_ms: t * 5000,
                gpus: sim.sample(t * 5000),
            })
            .expect("known GPUs");
            view.last_seen_unix_ms = t * 5000;
        }
    }

    #[test]
    fn hosts_group_by_provider_then_name_and_the_summary_counts_every_tile() {
        let views = Views::default();
        for (name, provider, spec) in [
            ("b-thermal", "aws", "gpus=4,scenario=thermal"),
            ("a-idle", "gcp", "gpus=2,scenario=idle"),
            ("a-capped", "aws", "gpus=2,scenario=power-cap"),
        ] {
            let (mut v, mut sim) = host(name, provider, spec);
            play(&mut v, &mut sim, 0, 6);
            views.0.lock().expect("not poisoned").push(v);
        }
        let state = Builder::default().build(&views, None);
        let order: Vec<&str> = state.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(order, ["a-capped", "b-thermal", "a-idle"]);
        let s = &state.summary;
        assert_eq!((s.hosts, s.gpus), (3, 8));
        assert_eq!(s.states["throttled"], 6);
        assert_eq!(s.states["idle"], 2);
        assert_eq!(s.throttled_by_reason["thermal"], 4);
        assert_eq!(s.throttled_by_reason["power"], 2);
        assert_eq!(s.busy_share, Some(6.0 / 8.0));
        assert_eq!(s.states.values().sum::<usize>(), s.gpus);
    }

    #[test]
    fn spend_per_hour_is_the_sum_of_connected_hosts_priced_gpus() {
        let pricing = Pricing::load(None, &Default::default()).expect("the shipped catalogue");
        let views = Views::default();
        let (mut up, mut sim) = host("up", "aws", "gpus=8,model=h100-sxm");
        play(&mut up, &mut sim, 0, 1);
        let (mut gone, mut sim2) = host("gone", "aws", "gpus=8,model=h100-sxm,seed=2");
        play(&mut gone, &mut sim2, 0, 1);
        gone.connected = false;
        let per_gpu = pricing
            .price(&PriceQuery {
                provider: "aws",
                instance_type: "p5.48xlarge",
                model: &up.gpus[0].info.model,
                labels: &Default::default(),
            })
            .expect("p5.48xlarge is in the shipped catalogue")
            .usd_per_gpu_hour;
        views.0.lock().expect("not poisoned").extend([up, gone]);
        let state = Builder::default().build(&views, Some(&pricing));
        assert_eq!(state.summary.hosts_down, 1);
        let want = per_gpu * 8.0;
        assert!((state.summary.usd_per_hour - want).abs() < 1e-9);
        assert_eq!(state.summary.unpriced_gpus, 0);
        let down = state.hosts[0]
            .usd_per_hour
            .expect("a down host still shows its price");
        assert!(!state.hosts[0].connected && (down - want).abs() < 1e-9);
    }

    #[test]
    fn a_host_without_new_readings_keeps_its_entry_and_one_with_new_readings_is_judged_again() {
        let views = Views::default();
        let (mut v, mut sim) = host("h", "aws", "gpus=2,scenario=lost");
        play(&mut v, &mut sim, 0, 1);
        views.0.lock().expect("not poisoned").push(v);
        let mut builder = Builder::default();
        let first = builder.build(&views, None);
        assert_eq!(first.hosts[0].gpus[1].state, TileState::Busy);
        assert_eq!(builder.build(&views, None), first);
        {
            let mut all = views.0.lock().expect("not poisoned");
            play(&mut all[0], &mut sim, 1, 3);
        }
        let later = builder.build(&views, None);
        assert_eq!(later.hosts[0].gpus[1].state, TileState::Lost);
        views.0.lock().expect("not poisoned")[0].connected = false;
        assert_eq!(
            builder.build(&views, None).hosts[0].gpus[0].state,
            TileState::Down
        );
        views.0.lock().expect("not poisoned").clear();
        assert!(builder.build(&views, None).hosts.is_empty());
        assert!(builder.cache.is_empty(), "a host that left is forgotten");
    }
}
