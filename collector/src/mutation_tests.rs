//! Mutation fuzzing of what agents send. Valid Hello and Batch messages from the
//! simulator are damaged at random, field by field through the protobuf wire format
//! (values replaced with boundaries, NaN, infinities and line-breaking strings, fields
//! dropped or repeated, strings made huge) and bit by bit, and go through everything
//! the collector does with untrusted bytes: protobuf decoding, the proto-to-domain conversions,
//! validation, fleet state and the exposition. Nothing may panic; a refused message
//! must leave the exposition byte for byte as it was; what is accepted must still
//! render one sample per line. (cargo-fuzz needs a nightly toolchain; proptest drives
//! the same idea on the stable one, in every test run.)

use std::time::{SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use prost::Message;

use gpulse_exposition::{ExpositionOptions, render_fleet};
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message};

use crate::config::Limits;
use crate::cost::ledger::{GpuTerms, Ledger, Usage};
use crate::fleet::{ApplyError, Fleet, Session};
use crate::validate::Walked;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A Hello and two batches, encoded as an agent sends them.
fn messages() -> Vec<Vec<u8>> {
    // The scenario with the most of everything on the wire: NVLink errors, processes.
    let mut sim = Simulator::new(
        "gpus=2,model=h100-sxm,scenario=nvlink-errors,seed=11"
            .parse()
            .expect("a valid spec"),
    );
    let identity = HostIdentity {
        agent_id: "fuzzed".into(),
        boot_id: "boot".into(),
        hostname: "fuzzed".into(),
        ..HostIdentity::default()
    };
    let hello = gpulse_proto::hello(&identity, sim.inventory(), 5_000);
    let now = now_ms();
    let mut out = vec![
        v1::AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        }
        .encode_to_vec(),
    ];
    for (seq, t) in [(1u64, now - 10_000), (2, now - 5_000)] {
        let snapshot = Snapshot {
            timestamp_unix_ms: t,
            gpus: sim.sample(t),
        };
        out.push(
            v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(v1::Batch {
                    seq,
                    snapshots: vec![v1::Snapshot::from(&snapshot)],
                    agent: Some(v1::AgentStats {
                        batches_dropped: 3,
                        batches_rejected: 1,
                        spool_errors: 2,
                        buffered_batches: 40,
                        spool_bytes: 250_000,
                    }),
                })),
            }
            .encode_to_vec(),
        );
    }
    out
}

/// A protobuf message as the wire format sees it, so that values can be damaged while
/// the structure still decodes: bytes damaged at random mostly break a length prefix
/// and never get past the decoder.
#[derive(Debug, Clone)]
enum Node {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
    Message(Vec<(u32, Node)>),
}

/// A message's fields in wire order.
type Fields = Vec<(u32, Node)>;
/// An edit of the field at an index of its message.
type Edit = Box<dyn Fn(&mut Fields, usize)>;

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn parse(mut buf: &[u8]) -> Option<Vec<(u32, Node)>> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let field = u32::try_from(key >> 3).ok().filter(|f| *f > 0)?;
        let node = match key & 7 {
            0 => Node::Varint(read_varint(&mut buf)?),
            1 => {
                let (v, rest) = buf.split_first_chunk::<8>()?;
                buf = rest;
                Node::Fixed64(u64::from_le_bytes(*v))
            }
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                let (v, rest) = buf.split_at_checked(len)?;
                buf = rest;
                match parse(v) {
                    Some(inner) if !inner.is_empty() => Node::Message(inner),
                    _ => Node::Bytes(v.to_vec()),
                }
            }
            5 => {
                let (v, rest) = buf.split_first_chunk::<4>()?;
                buf = rest;
                Node::Fixed32(u32::from_le_bytes(*v))
            }
            _ => return None,
        };
        fields.push((field, node));
    }
    Some(fields)
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[(u32, Node)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, node) in fields {
        let key = u64::from(*field) << 3;
        match node {
            Node::Varint(v) => {
                write_varint(&mut out, key);
                write_varint(&mut out, *v);
            }
            Node::Fixed64(v) => {
                write_varint(&mut out, key | 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Node::Fixed32(v) => {
                write_varint(&mut out, key | 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Node::Bytes(b) => {
                write_varint(&mut out, key | 2);
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Node::Message(inner) => {
                let b = encode(inner);
                write_varint(&mut out, key | 2);
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// Values that break naive code: boundaries, NaN and infinities, negative numbers
/// in unsigned clothing, strings that break exposition lines and labels.
const VARINTS: [u64; 8] = [
    0,
    1,
    u64::MAX,
    u32::MAX as u64,
    i64::MIN as u64,
    1 << 53,
    255,
    65,
];
const FLOATS: [f64; 7] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -1.0,
    1e308,
    0.0,
    1e-320,
];
const STRINGS: [&str; 7] = [
    "",
    "line\nbreak",
    "quote\"back\\slash",
    "GPU-00000000-0000-0000-0000-000000000000",
    "\u{feff}é\u{202e}",
    "{le=\"+Inf\"} 1",
    "gpulse_gpu_info",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value of the n-th field found (depth first) with the v-th
    /// interesting value of its kind.
    Value { nth: u32, v: u8 },
    /// Drop the n-th field.
    Remove { nth: u32 },
    /// Repeat the n-th field (a repeated field gets another entry, a scalar a rival).
    Repeat { nth: u32 },
    /// A long string, over every length limit.
    Long { nth: u32 },
    /// Flip bits of the encoded bytes: whatever still decodes.
    Flip { at: u32, mask: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        8 => (any::<u32>(), any::<u8>()).prop_map(|(nth, v)| Mutation::Value { nth, v }),
        2 => any::<u32>().prop_map(|nth| Mutation::Remove { nth }),
        2 => any::<u32>().prop_map(|nth| Mutation::Repeat { nth }),
        1 => any::<u32>().prop_map(|nth| Mutation::Long { nth }),
        1 => (any::<u32>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
    ]
}

fn count(fields: &[(u32, Node)]) -> u32 {
    fields
        .iter()
        .map(|(_, n)| match n {
            Node::Message(inner) => 1 + count(inner),
            _ => 1,
        })
        .sum()
}

/// Applies `f` to the fields list holding the n-th field and its index there.
fn at_nth(fields: &mut Fields, nth: &mut u32, f: &mut dyn FnMut(&mut Fields, usize)) -> bool {
    for i in 0..fields.len() {
        if *nth == 0 {
            f(fields, i);
            return true;
        }
        *nth -= 1;
        if let Node::Message(inner) = &mut fields[i].1
            && at_nth(inner, nth, f)
        {
            return true;
        }
    }
    false
}

fn damage(bytes: &mut Vec<u8>, m: &Mutation) {
    if let Mutation::Flip { at, mask } = *m {
        if !bytes.is_empty() {
            let i = at as usize % bytes.len();
            bytes[i] ^= mask;
        }
        return;
    }
    let Some(mut fields) = parse(bytes) else {
        return;
    };
    let total = count(&fields);
    if total == 0 {
        return;
    }
    let (nth, edit): (u32, Edit) = match *m {
        Mutation::Value { nth, v } => (
            nth,
            Box::new(move |f, i| {
                let v = usize::from(v);
                f[i].1 = match &f[i].1 {
                    Node::Varint(_) => Node::Varint(VARINTS[v % VARINTS.len()]),
                    Node::Fixed64(_) => Node::Fixed64(FLOATS[v % FLOATS.len()].to_bits()),
                    Node::Fixed32(_) => Node::Fixed32((FLOATS[v % FLOATS.len()] as f32).to_bits()),
                    Node::Bytes(_) | Node::Message(_) if v % 3 == 0 => {
                        Node::Bytes(vec![0xff, 0xfe])
                    }
                    Node::Bytes(_) | Node::Message(_) => {
                        Node::Bytes(STRINGS[v % STRINGS.len()].as_bytes().to_vec())
                    }
                };
            }),
        ),
        Mutation::Remove { nth } => (
            nth,
            Box::new(|f, i| {
                f.remove(i);
            }),
        ),
        Mutation::Repeat { nth } => (
            nth,
            Box::new(|f, i| {
                let copy = f[i].clone();
                f.insert(i, copy);
            }),
        ),
        Mutation::Long { nth } => (
            nth,
            Box::new(|f, i| f[i].1 = Node::Bytes(vec![b'x'; 70_000])),
        ),
        Mutation::Flip { .. } => unreachable!("handled above"),
    };
    let mut n = nth % total;
    at_nth(&mut fields, &mut n, &mut |f, i| edit(f, i));
    *bytes = encode(&fields);
}

fn render(fleet: &Fleet) -> String {
    let mut out = String::new();
    render_fleet(fleet, ExpositionOptions::default(), &mut out);
    out
}

/// Each line is a comment or one `name{labels} value` sample: a damaged string must not
/// break a line or a label.
fn assert_one_sample_per_line(text: &str) {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        assert!(line.starts_with("gpulse_"), "{line:?}");
        let value = line.rsplit(' ').next().expect("a value");
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "{line:?}"
        );
        if let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) {
            // Quotes not escaped by a backslash (itself not escaped) open and close
            // values: `\\"` is an escaped backslash, then a closing quote.
            let mut quotes = 0;
            let mut escaped = false;
            for c in line[open + 1..close].chars() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => quotes += 1,
                    _ => {}
                }
            }
            assert!(!escaped, "a dangling backslash: {line:?}");
            assert_eq!(quotes % 2, 0, "unbalanced quotes: {line:?}");
        }
    }
}

/// A value ending in a backslash is written `\\\\` before its closing quote: balanced.
#[test]
fn the_line_check_reads_an_escaped_backslash_before_a_quote() {
    assert_one_sample_per_line("gpulse_gpu_info{host=\"h\",pci_bus_id=\"00:18.\\\\\"} 1");
    let unbalanced = std::panic::catch_unwind(|| {
        assert_one_sample_per_line("gpulse_gpu_info{host=\"h\\\",gpu=\"0\"} 1")
    });
    assert!(unbalanced.is_err());
}

/// A fleet with the clean Hello and first batch applied.
fn fleet_with_host(clean: &[Vec<u8>]) -> (std::sync::Arc<Fleet>, Session) {
    let fleet = Fleet::new(Limits::default());
    let Some(agent_message::Msg::Hello(hello)) = v1::AgentMessage::decode(clean[0].as_slice())
        .expect("clean")
        .msg
    else {
        panic!("the first message is the Hello");
    };
    let (identity, inventory) = gpulse_proto::identity_from_hello(hello);
    let session = fleet
        .connect(identity, inventory, now_ms())
        .expect("a clean Hello connects");
    let Some(agent_message::Msg::Batch(batch)) = v1::AgentMessage::decode(clean[1].as_slice())
        .expect("clean")
        .msg
    else {
        panic!("then a Batch");
    };
    let snapshots = Walked::from_wire(batch.snapshots, fleet.limits()).expect("clean");
    fleet
        .apply(&session, batch.seq, snapshots, now_ms())
        .expect("a clean batch applies");
    (fleet, session)
}

/// What the cost ledger does with an accepted batch, after the clean first batch: its
/// arithmetic must hold for any value validation lets through.
fn account(snapshots: &[Snapshot]) {
    let clean = messages();
    let Some(agent_message::Msg::Batch(first)) = v1::AgentMessage::decode(clean[1].as_slice())
        .expect("clean")
        .msg
    else {
        panic!("a Batch");
    };
    let terms = GpuTerms {
        max_sm_clock_mhz: Some(1980),
        price: None,
        interval_ms: 5_000,
        boot_id: "boot".into(),
    };
    let mut ledger: Ledger<usize> = Ledger::new();
    let mut rows = Vec::new();
    let first: Vec<Snapshot> = first
        .snapshots
        .into_iter()
        .map(|s| Snapshot::try_from(s).expect("clean"))
        .collect();
    for snap in first.iter().chain(snapshots) {
        for (i, gpu) in snap.gpus.iter().enumerate() {
            ledger.apply(&i, &terms, snap.timestamp_unix_ms, gpu, 300_000, &mut rows);
        }
    }
    let mut total = Usage::default();
    for (_, u) in &rows {
        total.add(u);
        total.add(u);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn damaged_messages_never_panic_and_refused_ones_change_nothing(
        which in prop_oneof![Just(0usize), Just(2usize)],
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let clean = messages();
        let (fleet, session) = fleet_with_host(&clean);
        let before = render(&fleet);
        let mut bytes = clean[which].clone();
        for m in &mutations {
            damage(&mut bytes, m);
        }
        let Ok(message) = v1::AgentMessage::decode(bytes.as_slice()) else {
            return Ok(()); // refused at decoding: nothing reached the fleet
        };
        let now = now_ms();
        let changed = match message.msg {
            Some(agent_message::Msg::Hello(hello)) => {
                let (identity, inventory) = gpulse_proto::identity_from_hello(hello);
                fleet.connect(identity, inventory, now).is_ok()
            }
            Some(agent_message::Msg::Batch(batch)) => {
                // As the ingest service does: walk the batch as it arrived first.
                match Walked::from_wire(batch.snapshots, fleet.limits()) {
                    Err(_) => false,
                    Ok(walked) => match fleet.apply(&session, batch.seq, walked.clone(), now) {
                        Ok(_) => {
                            if let Some(a) = batch.agent {
                                fleet.set_agent_stats(&session, crate::ingest::agent_stats(a));
                            }
                            account(walked.snapshots());
                            true
                        }
                        Err(ApplyError::Rejected(_)) => false,
                        Err(e @ ApplyError::Superseded(_)) => {
                            return Err(TestCaseError::fail(format!("{e}")));
                        }
                    },
                }
            }
            None => false,
        };
        let after = render(&fleet);
        if changed {
            assert_one_sample_per_line(&after);
        } else {
            // last_seen moves on every message, accepted or not; nothing else may.
            let strip = |t: &str| {
                t.lines()
                    .filter(|l| !l.starts_with("gpulse_agent_last_seen_timestamp_seconds"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            prop_assert_eq!(strip(&before), strip(&after));
        }
    }
}
