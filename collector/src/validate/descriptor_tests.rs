//! Every string and list an agent can send, found by reflecting over the protocol's
//! descriptors (not a hand-kept list), damaged one at a time in a valid Hello and
//! Batch and sent through what the collector does before storing: the
//! proto-to-domain conversions, validation and the fleet. A string too long or with a
//! control character, a list past its bound and a key listed twice must each be
//! refused, naming the field; a repeated entry of a set must change nothing stored.

use std::collections::BTreeMap;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};

use gpulse_exposition::HostView;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Reading, Snapshot};
use gpulse_proto::v1::{self, agent_message};
use gpulse_proto::walk::{FILE_DESCRIPTOR_SET, RepeatedField, StringField};

use super::wire::{Entries, bound};
use super::{RejectKind, Rejection};
use crate::config::Limits;
use crate::fleet::{ApplyError, Fleet};

const NOW: i64 = 1_800_000_000_000;

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the descriptors build.rs wrote")
}

/// A Hello and a Batch of two snapshots in which every list an agent can send holds
/// at least one entry.
fn fixture() -> (v1::AgentMessage, v1::AgentMessage) {
    let mut sim = Simulator::new(
        "gpus=2,model=a100,scenario=nvlink-errors,seed=3,mig=2,hide=pcie_width,pods=1"
            .parse()
            .expect("a valid spec"),
    );
    let identity = HostIdentity {
        agent_id: "described".into(),
        boot_id: "boot".into(),
        hostname: "described".into(),
        labels: [("team", "ml"), ("cluster", "east")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        ..HostIdentity::default()
    };
    let hello = gpulse_proto::hello(&identity, sim.inventory(), 5_000);
    let snapshots = [NOW - 10_000, NOW - 5_000].map(|t| {
        let mut gpus = sim.sample(t);
        for g in &mut gpus {
            if g.xid_errors.get().is_none_or(Vec::is_empty) {
                g.xid_errors = Reading::Value(vec![(79, 1)]);
            }
            // A field read this time: the `failed` list.
            g.memory_temperature_celsius = Reading::Failed;
        }
        v1::Snapshot::from(&Snapshot {
            timestamp_unix_ms: t,
            gpus,
        })
    });
    let batch = v1::Batch {
        seq: 1,
        snapshots: snapshots.to_vec(),
        agent: None,
    };
    (
        v1::AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        },
        v1::AgentMessage {
            msg: Some(agent_message::Msg::Batch(batch)),
        },
    )
}

/// What the collector stores of a Hello and a Batch, or why it refused them.
fn admit(hello: &DynamicMessage, batch: &DynamicMessage) -> Result<HostView, Rejection> {
    let decode = |m: &DynamicMessage| {
        v1::AgentMessage::decode(m.encode_to_vec().as_slice()).expect("a message that decodes")
    };
    let Some(agent_message::Msg::Hello(h)) = decode(hello).msg else {
        panic!("the Hello fixture holds a Hello");
    };
    let Some(agent_message::Msg::Batch(b)) = decode(batch).msg else {
        panic!("the Batch fixture holds a Batch");
    };
    let fleet = Fleet::new(Limits::default());
    let (identity, inventory) = gpulse_proto::identity_from_hello(h);
    let agent = identity.agent_id.clone();
    let session = fleet.connect(identity, inventory, NOW)?;
    let snapshots = b
        .snapshots
        .into_iter()
        .map(Snapshot::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Rejection::new(RejectKind::UnknownEnum, e.to_string()))?;
    match fleet.apply(&session, b.seq, snapshots, NOW) {
        Ok(_) => Ok(fleet.host(&agent).expect("the agent just connected")),
        Err(ApplyError::Rejected(r)) => Err(r),
        Err(e) => panic!("{e}"),
    }
}

/// Where a field is: which fixture, and the steps from its root to the message
/// holding it (a field, then an index when the field is a list).
#[derive(Debug, Clone)]
struct Site {
    root: usize,
    steps: Vec<(FieldDescriptor, Option<usize>)>,
}

/// The first place each field (by full name) occurs in the fixtures, with its field.
fn sites(roots: &[DynamicMessage]) -> BTreeMap<String, (Site, FieldDescriptor)> {
    fn visit(m: &DynamicMessage, site: Site, out: &mut BTreeMap<String, (Site, FieldDescriptor)>) {
        for f in m.descriptor().fields() {
            out.entry(f.full_name().to_string())
                .or_insert_with(|| (site.clone(), f.clone()));
            if !m.has_field(&f) || f.is_map() {
                continue;
            }
            let step = |index| {
                let mut s = site.clone();
                s.steps.push((f.clone(), index));
                s
            };
            match &*m.get_field(&f) {
                Value::Message(inner) => visit(inner, step(None), out),
                Value::List(items) => {
                    if let Some(Value::Message(first)) = items.first() {
                        visit(first, step(Some(0)), out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    for (root, m) in roots.iter().enumerate() {
        visit(
            m,
            Site {
                root,
                steps: Vec::new(),
            },
            &mut out,
        );
    }
    out
}

/// Every field of every message reachable from AgentMessage, map entries included.
fn reachable_fields(pool: &DescriptorPool) -> Vec<FieldDescriptor> {
    let mut seen: Vec<MessageDescriptor> = Vec::new();
    let mut queue = vec![
        pool.get_message_by_name("gpulse.v1.AgentMessage")
            .expect("the root message"),
    ];
    let mut out = Vec::new();
    while let Some(m) = queue.pop() {
        if seen.contains(&m) {
            continue;
        }
        seen.push(m.clone());
        for f in m.fields() {
            if let Kind::Message(inner) = f.kind() {
                queue.push(inner);
            }
            out.push(f);
        }
    }
    out
}

fn holder<'a>(roots: &'a mut [DynamicMessage], site: &Site) -> &'a mut DynamicMessage {
    let mut m = &mut roots[site.root];
    for (f, index) in &site.steps {
        let v = m.get_field_mut(f);
        let v = match index {
            Some(i) => &mut v.as_list_mut().expect("a list")[*i],
            None => v,
        };
        m = v.as_message_mut().expect("a message");
    }
    m
}

fn short(full_name: &str) -> &str {
    full_name.trim_start_matches("gpulse.v1.")
}

struct Case {
    roots: Vec<DynamicMessage>,
    sites: BTreeMap<String, (Site, FieldDescriptor)>,
    baseline: HostView,
}

impl Case {
    fn new() -> Case {
        let pool = pool();
        let root = pool
            .get_message_by_name("gpulse.v1.AgentMessage")
            .expect("the root message");
        let (hello, batch) = fixture();
        let roots = [hello, batch].map(|m| {
            DynamicMessage::decode(root.clone(), m.encode_to_vec().as_slice())
                .expect("the fixture decodes")
        });
        let baseline = admit(&roots[0], &roots[1])
            .unwrap_or_else(|r| panic!("the fixture is valid: {}", r.message));
        Case {
            sites: sites(&roots),
            roots: roots.to_vec(),
            baseline,
        }
    }

    /// The fixtures with `change` made to the message holding field `full_name`.
    fn admit_with(
        &self,
        full_name: &str,
        change: impl FnOnce(&mut DynamicMessage, &FieldDescriptor),
    ) -> Result<HostView, Rejection> {
        let (site, field) = self
            .sites
            .get(full_name)
            .unwrap_or_else(|| panic!("the fixture holds no {full_name}: give it one"));
        let mut roots = self.roots.clone();
        change(holder(&mut roots, site), field);
        admit(&roots[0], &roots[1])
    }
}

const HUGE: usize = 1 << 20;
const CONTROL: &str = "ok\u{1b}[2J\r\0";

#[test]
fn every_string_field_is_bounded_and_refused_with_control_characters() {
    let case = Case::new();
    let strings: Vec<_> = reachable_fields(&pool())
        .into_iter()
        .filter(|f| f.kind() == Kind::String)
        .collect();
    assert!(strings.len() >= 20, "{} string fields", strings.len());
    for f in strings {
        let name = f.full_name().to_string();
        assert!(
            StringField::ALL.iter().any(|s| s.full_name() == name),
            "{name} has no StringField: the generated walk misses it"
        );
        for bad in ["x".repeat(HUGE), CONTROL.to_string()] {
            let set = |m: &mut DynamicMessage, field: &FieldDescriptor| {
                if m.descriptor().is_map_entry() {
                    unreachable!("map entries are reached through their map");
                }
                m.set_field(field, Value::String(bad.clone()));
            };
            let verdict = if let Some(map) = name
                .strip_suffix(".LabelsEntry.key")
                .or_else(|| name.strip_suffix(".LabelsEntry.value"))
            {
                let is_key = name.ends_with(".key");
                case.admit_with(&format!("{map}.labels"), |m, field| {
                    let labels = m.get_field_mut(field).as_map_mut().expect("a map");
                    if is_key {
                        labels.insert(MapKey::String(bad.clone()), Value::String("v".into()));
                    } else {
                        for v in labels.values_mut() {
                            *v = Value::String(bad.clone());
                        }
                    }
                })
            } else {
                case.admit_with(&name, set)
            };
            let r = verdict.err().unwrap_or_else(|| {
                panic!(
                    "{name} of {} bytes starting {:?} was stored",
                    bad.len(),
                    &bad[..2]
                )
            });
            assert!(
                r.message.contains(short(&name)),
                "{name}: the refusal does not name the field: {}",
                &r.message[..r.message.len().min(300)]
            );
            assert!(
                r.message.len() < 1024,
                "{name}: the refusal echoes the value"
            );
        }
    }
}

/// A list grown past its bound; entries keep distinct keys where the key can be.
fn grow(list: &mut Vec<Value>, to: usize, key: Option<&str>) {
    let first = list.first().cloned().expect("a list with an entry");
    let mut i = 0u64;
    while list.len() < to {
        i += 1;
        let mut entry = first.clone();
        if let (Some(key), Value::Message(m)) = (key, &mut entry) {
            let field = m
                .descriptor()
                .get_field_by_name(key)
                .expect("the key field exists");
            let distinct = match m.get_field(&field).into_owned() {
                Value::U32(_) => Some(Value::U32(i as u32)),
                Value::U64(_) => Some(Value::U64(i)),
                Value::String(s) => Some(Value::String(format!("{s}-{i}"))),
                _ => None,
            };
            if let Some(v) = distinct {
                m.set_field(&field, v);
            }
        }
        list.push(entry);
    }
}

#[test]
fn every_repeated_field_and_map_has_a_bound_that_is_enforced() {
    let case = Case::new();
    let limits = Limits::default();
    let lists: Vec<_> = reachable_fields(&pool())
        .into_iter()
        .filter(|f| f.is_list() || f.is_map())
        .filter(|f| !f.parent_message().is_map_entry())
        .collect();
    assert!(lists.len() >= 10, "{} lists", lists.len());
    for f in lists {
        let name = f.full_name().to_string();
        let field = RepeatedField::ALL
            .iter()
            .find(|r| r.full_name() == name)
            .unwrap_or_else(|| panic!("{name} has no RepeatedField: the generated walk misses it"));
        let b = bound(*field, &limits);
        let verdict = case.admit_with(&name, |m, field| {
            let value = m.get_field_mut(field);
            if let Some(map) = value.as_map_mut() {
                for i in 0..=b.max {
                    map.insert(MapKey::String(format!("k{i}")), Value::String("v".into()));
                }
            } else {
                let key = match b.entries {
                    Entries::Keyed { field, .. } => Some(field),
                    _ => None,
                };
                grow(value.as_list_mut().expect("a list"), b.max + 1, key);
            }
        });
        match b.entries {
            Entries::Set => assert_eq!(
                verdict.as_ref().map_err(|r| &r.message),
                Ok(&case.baseline),
                "{name}: a set's repeated entries must merge into what was stored"
            ),
            _ => {
                let r = verdict.err().unwrap_or_else(|| {
                    panic!(
                        "{name} with {} entries was stored (bound {})",
                        b.max + 1,
                        b.max
                    )
                });
                assert_eq!(r.kind, b.kind, "{name}: {}", r.message);
                assert!(r.message.contains(short(&name)), "{name}: {}", r.message);
            }
        }
    }
}

#[test]
fn every_keyed_list_refuses_a_key_listed_twice() {
    let case = Case::new();
    let limits = Limits::default();
    let mut keyed = 0;
    for field in RepeatedField::ALL {
        let Entries::Keyed {
            field: key,
            duplicate,
        } = bound(*field, &limits).entries
        else {
            continue;
        };
        keyed += 1;
        let name = field.full_name();
        let verdict = case.admit_with(name, |m, f| {
            // The second entry becomes a copy of the first (pushing one could make
            // the list too long, as a full list of throttle policies is).
            let list = m.get_field_mut(f).as_list_mut().expect("a list");
            let first = list.first().cloned().expect("a list with an entry");
            match list.get_mut(1) {
                Some(second) => *second = first,
                None => list.push(first),
            }
        });
        let r = verdict
            .err()
            .unwrap_or_else(|| panic!("{name} listing one {key} twice was stored"));
        assert_eq!(r.kind, duplicate, "{name}: {}", r.message);
    }
    assert!(keyed >= 7, "{keyed} keyed lists");
}
