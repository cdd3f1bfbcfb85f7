//! Generates the gpulse.v1 client and server code with a pure-Rust protobuf compiler,
//! so the build needs no system protoc.
//!
//! It also generates, from the same descriptors, a walk over every string, repeated
//! field and map an agent can send (every message reachable from `AgentMessage`), so
//! that the collector's checks reach a field the day it is added to the proto, and
//! writes the descriptor set itself for tests that reflect over it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// The message an agent sends: everything reachable from it is untrusted input.
const ROOT: &str = ".gpulse.v1.AgentMessage";
const PACKAGE: &str = "gpulse.v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // gpulse's own protocol, and the kubelet's pod-resources API the agent reads on
    // Kubernetes nodes (a server too, for the test kubelet).
    let files = [
        "gpulse/v1/ingest.proto",
        "kubelet/podresources/v1/api.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("gpulse_v1.bin"), descriptors.encode_to_vec())?;
    std::fs::write(out.join("gpulse_v1_walk.rs"), walk(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// A message of the package, by its full name with a leading dot, and the Rust path
/// prost gives its type.
struct Msg<'a> {
    proto: &'a DescriptorProto,
    rust_path: String,
}

fn messages(set: &FileDescriptorSet) -> BTreeMap<String, Msg<'_>> {
    fn add<'a>(
        out: &mut BTreeMap<String, Msg<'a>>,
        prefix: &str,
        rust_module: &str,
        m: &'a DescriptorProto,
    ) {
        let name = format!("{prefix}.{}", m.name());
        let rust_path = format!("{rust_module}::{}", upper_camel(m.name()));
        let nested_module = format!("{rust_module}::{}", snake(m.name()));
        for n in &m.nested_type {
            add(out, &name, &nested_module, n);
        }
        out.insert(
            name,
            Msg {
                proto: m,
                rust_path,
            },
        );
    }
    let mut out = BTreeMap::new();
    // Only gpulse's own messages: the kubelet's API is one the agent reads, never
    // one an agent sends.
    for file in set.file.iter().filter(|f| f.package() == PACKAGE) {
        for m in &file.message_type {
            add(&mut out, &format!(".{PACKAGE}"), "crate::v1", m);
        }
    }
    out
}

/// prost's type names: UpperCamelCase of the proto name.
fn upper_camel(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// prost's module and field names: snake_case of the proto name.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    assert!(
        !matches!(
            out.as_str(),
            "type" | "match" | "ref" | "mod" | "fn" | "self" | "use" | "in" | "loop" | "move"
        ),
        "field {name} is a Rust keyword: teach the walk prost's r# names"
    );
    out
}

fn is_map(field: &FieldDescriptorProto, all: &BTreeMap<String, Msg<'_>>) -> bool {
    field.r#type() == Type::Message
        && all[field.type_name()]
            .proto
            .options
            .as_ref()
            .is_some_and(|o| o.map_entry())
}

/// Messages reachable from [`ROOT`], in a stable order.
fn reachable<'a>(all: &'a BTreeMap<String, Msg<'a>>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([ROOT]);
    while let Some(name) = queue.pop_front() {
        let (key, _) = all.get_key_value(name).expect("a message of the package");
        if !seen.insert(key.as_str()) {
            continue;
        }
        for f in &all[name].proto.field {
            if f.r#type() == Type::Message {
                queue.push_back(f.type_name());
            }
        }
    }
    seen
}

/// `HelloAgentId` for `.gpulse.v1.Hello.agent_id`.
fn variant(full_name: &str) -> String {
    full_name
        .trim_start_matches(&format!(".{PACKAGE}."))
        .split('.')
        .map(upper_camel)
        .collect()
}

fn walk(set: &FileDescriptorSet) -> String {
    let all = messages(set);
    let mut strings = Vec::new();
    let mut repeated = Vec::new();
    let mut impls = String::new();
    for name in reachable(&all) {
        let msg = &all[name];
        if msg.proto.options.as_ref().is_some_and(|o| o.map_entry()) {
            // Walked where its map is.
            continue;
        }
        let mut body = String::new();
        let mut oneofs: BTreeMap<i32, Vec<&FieldDescriptorProto>> = BTreeMap::new();
        for f in &msg.proto.field {
            let full = format!("{name}.{}", f.name());
            let rust = snake(f.name());
            if f.oneof_index.is_some() && !f.proto3_optional() {
                oneofs.entry(f.oneof_index()).or_default().push(f);
                continue;
            }
            if f.label() == Label::Repeated {
                let v = variant(&full);
                repeated.push((v.clone(), full.clone()));
                writeln!(
                    body,
                    "        v.repeated(RepeatedField::{v}, self.{rust}.len())?;"
                )
                .expect("a String");
                if is_map(f, &all) {
                    let entry = all[f.type_name()].proto;
                    let mut key_value = ["_", "_"];
                    let mut visits = String::new();
                    for (slot, ef) in entry.field.iter().enumerate() {
                        let efull = format!("{}.{}", f.type_name(), ef.name());
                        let binding = ["key", "value"][slot];
                        match ef.r#type() {
                            Type::String => {
                                let ev = variant(&efull);
                                strings.push((ev.clone(), efull));
                                key_value[slot] = binding;
                                writeln!(
                                    visits,
                                    "            v.string(StringField::{ev}, {binding})?;"
                                )
                                .expect("a String");
                            }
                            Type::Message => {
                                key_value[slot] = binding;
                                writeln!(visits, "            {binding}.walk(v)?;")
                                    .expect("a String");
                            }
                            _ => {}
                        }
                    }
                    writeln!(
                        body,
                        "        for ({}, {}) in &self.{rust} {{\n{visits}        }}",
                        key_value[0], key_value[1]
                    )
                    .expect("a String");
                } else {
                    match f.r#type() {
                        Type::String => {
                            strings.push((variant(&full), full.clone()));
                            writeln!(
                                body,
                                "        for s in &self.{rust} {{ v.string(StringField::{}, s)?; }}",
                                variant(&full)
                            )
                            .expect("a String");
                        }
                        Type::Message => {
                            writeln!(body, "        for m in &self.{rust} {{ m.walk(v)?; }}")
                                .expect("a String");
                        }
                        _ => {}
                    }
                }
                continue;
            }
            match f.r#type() {
                Type::String => {
                    let v = variant(&full);
                    strings.push((v.clone(), full.clone()));
                    if f.proto3_optional() {
                        writeln!(
                            body,
                            "        if let Some(s) = &self.{rust} {{ v.string(StringField::{v}, s)?; }}"
                        )
                    } else {
                        writeln!(body, "        v.string(StringField::{v}, &self.{rust})?;")
                    }
                    .expect("a String");
                }
                Type::Message => {
                    writeln!(
                        body,
                        "        if let Some(m) = &self.{rust} {{ m.walk(v)?; }}"
                    )
                    .expect("a String");
                }
                _ => {}
            }
        }
        for (index, members) in oneofs {
            let oneof = msg.proto.oneof_decl[index as usize].name();
            let module = msg.rust_path.rsplit_once("::").expect("a path").0;
            let enum_path = format!(
                "{module}::{}::{}",
                snake(msg.proto.name()),
                upper_camel(oneof)
            );
            writeln!(body, "        match &self.{} {{", snake(oneof)).expect("a String");
            for f in members {
                let arm = format!("Some({enum_path}::{}(x))", upper_camel(f.name()));
                let full = format!("{name}.{}", f.name());
                match f.r#type() {
                    Type::Message => writeln!(body, "            {arm} => x.walk(v)?,"),
                    Type::String => {
                        strings.push((variant(&full), full.clone()));
                        writeln!(
                            body,
                            "            {arm} => v.string(StringField::{}, x)?,",
                            variant(&full)
                        )
                    }
                    _ => writeln!(body, "            {arm} => {{ let _ = x; }}"),
                }
                .expect("a String");
            }
            writeln!(body, "            None => {{}}\n        }}").expect("a String");
        }
        let v = if body.is_empty() { "_v" } else { "v" };
        writeln!(
            impls,
            "impl Walk for {} {{\n    fn walk<V: Visitor + ?Sized>(&self, {v}: &mut V) -> Result<(), V::Error> {{\n{body}        Ok(())\n    }}\n}}\n",
            msg.rust_path
        )
        .expect("a String");
    }
    let mut out =
        String::from("// Generated by proto/build.rs from the gpulse.v1 descriptors.\n\n");
    for (kind, doc, fields) in [
        (
            "StringField",
            "Every string field an agent can send, in a map entry too.",
            &strings,
        ),
        (
            "RepeatedField",
            "Every repeated field and map an agent can send.",
            &repeated,
        ),
    ] {
        writeln!(
            out,
            "/// {doc}\n#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\npub enum {kind} {{"
        )
        .expect("a String");
        for (v, full) in fields {
            writeln!(out, "    /// `{}`", full.trim_start_matches('.')).expect("a String");
            writeln!(out, "    {v},").expect("a String");
        }
        writeln!(out, "}}\n\nimpl {kind} {{\n    /// Grouped by message, in a stable order.\n    pub const ALL: &'static [{kind}] = &[").expect("a String");
        for (v, _) in fields {
            writeln!(out, "        {kind}::{v},").expect("a String");
        }
        writeln!(out, "    ];\n\n    /// The field's full protobuf name, `gpulse.v1.Hello.agent_id`.\n    pub fn full_name(self) -> &'static str {{\n        match self {{").expect("a String");
        for (v, full) in fields {
            writeln!(
                out,
                "            {kind}::{v} => \"{}\",",
                full.trim_start_matches('.')
            )
            .expect("a String");
        }
        writeln!(out, "        }}\n    }}\n}}\n").expect("a String");
    }
    out.push_str(&impls);
    out
}
