//! What changed between two fleet states: the page gets a full state once, then only
//! these. Applying a delta to the state it was taken from gives the newer state.

use std::collections::HashMap;

use serde::Serialize;

use super::state::{FleetState, HostEntry, Summary};
use super::tile::Tile;

/// One GPU whose tile changed, on a host that is otherwise the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileChange {
    /// The host's agent id.
    pub host: String,
    pub tile: Tile,
}

/// The change from one fleet state to the next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    /// Always sent: it is small, and the page shows it at the top.
    pub summary: Summary,
    /// Hosts that are new, or whose identity, connection, price or GPU count changed:
    /// sent whole, tiles included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
    /// Tiles that changed on the other hosts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<TileChange>,
    /// Agent ids of hosts that left the fleet (expired).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

impl Delta {
    pub fn between(old: &FleetState, new: &FleetState) -> Delta {
        let before: HashMap<&str, &HostEntry> =
            old.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
        let mut hosts = Vec::new();
        let mut gpus = Vec::new();
        for host in &new.hosts {
            match before.get(host.id.as_str()) {
                Some(prev) if prev.header_eq(host) => {
                    for (was, now) in prev.gpus.iter().zip(&host.gpus) {
                        if was != now {
                            gpus.push(TileChange {
                                host: host.id.clone(),
                                tile: now.clone(),
                            });
                        }
                    }
                }
                _ => hosts.push(host.clone()),
            }
        }
        let now: std::collections::HashSet<&str> =
            new.hosts.iter().map(|h| h.id.as_str()).collect();
        let gone = old
            .hosts
            .iter()
            .filter(|h| !now.contains(h.id.as_str()))
            .map(|h| h.id.clone())
            .collect();
        Delta {
            summary: new.summary.clone(),
            hosts,
            gpus,
            gone,
        }
    }

    /// Whether nothing but the summary is sent.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.gpus.is_empty() && self.gone.is_empty()
    }
}

/// How the page applies a delta, written in Rust so a test can hold it to
/// [`Delta::between`]; fleet.js does the same steps.
#[cfg(test)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Agent id to (header JSON without tiles, tiles by GPU index).
    pub hosts: std::collections::BTreeMap<String, (serde_json::Value, Vec<serde_json::Value>)>,
    pub summary: serde_json::Value,
}

#[cfg(test)]
impl Applied {
    fn split(host: &serde_json::Value) -> (String, serde_json::Value, Vec<serde_json::Value>) {
        let mut header = host.clone();
        let tiles = header
            .as_object_mut()
            .and_then(|o| o.remove("gpus"))
            .and_then(|g| g.as_array().cloned())
            .unwrap_or_default();
        let id = header["id"].as_str().unwrap_or_default().to_string();
        (id, header, tiles)
    }

    /// The page's model after a `full` event.
    pub fn full(state: &serde_json::Value) -> Applied {
        let mut out = Applied {
            summary: state["summary"].clone(),
            ..Applied::default()
        };
        for host in state["hosts"].as_array().into_iter().flatten() {
            let (id, header, tiles) = Self::split(host);
            out.hosts.insert(id, (header, tiles));
        }
        out
    }

    /// Applies a `delta` event.
    pub fn apply(&mut self, delta: &serde_json::Value) {
        self.summary = delta["summary"].clone();
        for id in delta["gone"].as_array().into_iter().flatten() {
            self.hosts.remove(id.as_str().unwrap_or_default());
        }
        for host in delta["hosts"].as_array().into_iter().flatten() {
            let (id, header, tiles) = Self::split(host);
            self.hosts.insert(id, (header, tiles));
        }
        for change in delta["gpus"].as_array().into_iter().flatten() {
            let id = change["host"].as_str().unwrap_or_default();
            let gpu = change["tile"]["gpu"].as_u64().unwrap_or_default();
            if let Some((_, tiles)) = self.hosts.get_mut(id)
                && let Some(slot) = tiles.iter_mut().find(|t| t["gpu"].as_u64() == Some(gpu))
            {
                *slot = change["tile"].clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tile::{ReasonClass, TileState};
    use proptest::prelude::*;

    fn tile(gpu: u32, state: usize, util: u32) -> Tile {
        let state = TileState::ALL[state % TileState::ALL.len()];
        Tile {
            gpu,
            model: "NVIDIA H100 80GB HBM3".into(),
            state,
            reason: (state == TileState::Throttled).then_some(ReasonClass::Power),
            severity: None,
            finding: None,
            util: Some(util),
            // A change of pods alone is a change the page must be sent.
            namespaces: match util % 3 {
                0 => vec![],
                n => vec![format!("ns-{n}")],
            },
        }
    }

    /// A fleet of up to 6 hosts drawn from 8 ids, each with 1 to 4 GPUs.
    fn fleet() -> impl Strategy<Value = FleetState> {
        proptest::collection::btree_map(
            0u8..8,
            (
                any::<bool>(),
                proptest::collection::vec((0usize..7, 0u32..11), 1..5),
            ),
            0..6,
        )
        .prop_map(|hosts| {
            let hosts: Vec<HostEntry> = hosts
                .into_iter()
                .map(|(id, (connected, gpus))| HostEntry {
                    id: format!("agent-{id}"),
                    host: format!("host-{id}"),
                    provider: ["aws", "gcp"][usize::from(id % 2)].into(),
                    region: "r".into(),
                    zone: String::new(),
                    instance_type: "i".into(),
                    connected,
                    usd_per_hour: None,
                    unpriced_gpus: gpus.len(),
                    gpus: gpus
                        .iter()
                        .enumerate()
                        .map(|(i, (s, u))| tile(i as u32, *s, u * 10))
                        .collect(),
                })
                .collect();
            FleetState {
                summary: Summary::of(&hosts),
                hosts,
            }
        })
    }

    proptest! {
        /// Whatever two states, the page that held the first and applies the delta
        /// holds the second: nothing lost, nothing left behind.
        #[test]
        fn a_delta_takes_the_page_from_one_state_to_the_next(old in fleet(), new in fleet()) {
            let delta = Delta::between(&old, &new);
            let mut page = Applied::full(&serde_json::to_value(&old).expect("serialises"));
            page.apply(&serde_json::to_value(&delta).expect("serialises"));
            prop_assert_eq!(page, Applied::full(&serde_json::to_value(&new).expect("serialises")));
        }

        /// A delta between equal states sends nothing but the summary, and a changed
        /// tile is sent alone, not its host.
        #[test]
        fn only_what_changed_is_sent(old in fleet(), host in 0usize..6, gpu in 0usize..4) {
            prop_assert!(Delta::between(&old, &old).is_empty());
            let mut new = old.clone();
            let host = host % old.hosts.len().max(1);
            let Some(h) = new.hosts.get_mut(host) else { return Ok(()) };
            let g = gpu % h.gpus.len();
            h.gpus[g].util = Some(h.gpus[g].util.unwrap_or(0) + 1);
            let delta = Delta::between(&old, &new);
            prop_assert!(delta.hosts.is_empty() && delta.gone.is_empty());
            prop_assert_eq!(delta.gpus.len(), 1);
            prop_assert_eq!(&delta.gpus[0].tile, &new.hosts[host].gpus[g]);
        }
    }
}
