//! The Kubernetes manifests: the built-in kinds validated offline by kubernetes-validate
//! against a fixed Kubernetes version; the Prometheus Operator's kinds by structure; the
//! PrometheusRule against the rule files (it must hold exactly their groups); and the
//! manifests against each other, the configuration the binaries accept, and the images.
//!
//! `GPULSE_BLESS=1 cargo test` rewrites prometheusrule.yaml from the rule files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::common::{
    ALERT_RULES, RECORDING_RULES, VERSION, packaging_dir, prometheus_dir, read, tool, tool_ok, yaml,
};
use crate::container::IMAGE_UID;

/// The Kubernetes version the manifests are validated against: the oldest release
/// still widely run that has every field they use.
const KUBERNETES_VERSION: &str = "1.30.0";
const NAMESPACE: &str = "gpulse";
/// The alert rules' job name for the collector (README.md, "Alerting").
const COLLECTOR_JOB: &str = "gpulse-collector";
const TOKEN_SECRET: &str = "gpulse-token";
const TOKEN_KEY: &str = "token";
const PROMETHEUS_RULE: &str = "prometheusrule.yaml";
const OPERATOR_API: &str = "monitoring.coreos.com/v1";

fn dir() -> PathBuf {
    packaging_dir("kubernetes")
}

/// (file, document) for every manifest the kustomization lists.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in resources() {
        let text = read(&dir().join(&file));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !value.is_null() {
                out.push((file.clone(), value));
            }
        }
    }
    out
}

fn resources() -> Vec<String> {
    yaml(&dir().join("kustomization.yaml"))["resources"]
        .as_sequence()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    manifests()
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

/// The item of a list whose `name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list)
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {list:?}"))
}

#[test]
fn the_kustomization_lists_every_manifest_in_one_namespace() {
    let k = yaml(&dir().join("kustomization.yaml"));
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], NAMESPACE);
    let listed: BTreeSet<String> = resources().into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml's resources");
    for (file, m) in manifests() {
        let kind = s(&m["kind"]);
        if kind == "Namespace" {
            assert_eq!(m["metadata"]["name"], NAMESPACE);
        } else {
            assert_eq!(m["metadata"]["namespace"], NAMESPACE, "{file}: {kind}");
        }
        assert_eq!(
            m["metadata"]["labels"]["app.kubernetes.io/part-of"], "gpulse",
            "{file}"
        );
    }
    // No token is shipped: the Secret is the operator's to create (README.md).
    assert!(
        !manifests().iter().any(|(_, m)| m["kind"] == "Secret"),
        "a Secret with a token everyone knows"
    );
}

/// The images are this version's, never `latest`, and the kustomization can retarget them.
#[test]
fn images_are_this_versions_and_run_as_the_images_user() {
    let k = yaml(&dir().join("kustomization.yaml"));
    let images: BTreeSet<(String, String)> = seq(&k["images"])
        .iter()
        .map(|i| (s(&i["name"]).to_string(), s(&i["newTag"]).to_string()))
        .collect();
    let mut used = BTreeSet::new();
    for (kind, name) in [
        ("DaemonSet", "gpulse-agent"),
        ("Deployment", "gpulse-collector"),
    ] {
        let spec = &object(kind, name)["spec"]["template"]["spec"];
        for c in seq(&spec["containers"]) {
            let image = s(&c["image"]);
            let (repo, tag) = image.split_once(':').expect("a tagged image");
            assert_eq!(tag, VERSION, "{image}");
            assert_eq!(repo, name, "{image}");
            used.insert((repo.to_string(), tag.to_string()));
        }
        let sc = &spec["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(
            sc["runAsUser"].as_u64(),
            Some(u64::from(IMAGE_UID)),
            "{name}"
        );
        assert_eq!(
            sc["runAsGroup"].as_u64(),
            Some(u64::from(IMAGE_UID)),
            "{name}"
        );
        assert_eq!(sc["fsGroup"].as_u64(), Some(u64::from(IMAGE_UID)), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
    }
    assert_eq!(images, used, "kustomization.yaml's images");
}

/// kubernetes-validate, offline, strict (unknown fields fail), on every built-in kind.
#[test]
fn kubernetes_validate_accepts_the_built_in_kinds() {
    let mut files = BTreeSet::new();
    let mut resources = 0;
    for (file, m) in manifests() {
        if s(&m["apiVersion"]) != OPERATOR_API {
            files.insert(file);
            resources += 1;
        }
    }
    let files: Vec<String> = files.into_iter().collect();
    let out = validate(&dir(), &files);
    assert!(out.0, "kubernetes-validate failed:\n{}", out.1);
    assert_eq!(
        out.1.matches(" passed for resource ").count(),
        resources,
        "one pass per resource:\n{}",
        out.1
    );

    // The check sees a mistake: a misspelt field of a DaemonSet.
    let tmp = tempfile::tempdir().unwrap();
    let broken = read(&dir().join("agent-daemonset.yaml"))
        .replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:");
    std::fs::write(tmp.path().join("broken.yaml"), broken).unwrap();
    let out = validate(tmp.path(), &["broken.yaml".to_string()]);
    assert!(!out.0, "a misspelt field passed:\n{}", out.1);
    assert!(out.1.contains("readOnlyRootFileSystem"), "{}", out.1);
}

/// (success, output) of kubernetes-validate on files in `dir`.
fn validate(dir: &Path, files: &[String]) -> (bool, String) {
    let mut args = vec![
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        KUBERNETES_VERSION,
    ];
    args.extend(files.iter().map(String::as_str));
    let out = tool("python3", &args, dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_agent_runs_on_gpu_nodes_with_nvml_and_the_hosts_proc_only() {
    let ds = object("DaemonSet", "gpulse-agent");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["runtimeClassName"], "nvidia");
    assert_eq!(spec["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert!(
        seq(&spec["tolerations"])
            .iter()
            .any(|t| t["key"] == "nvidia.com/gpu" && t["operator"] == "Exists"),
        "tolerates nvidia.com/gpu taints"
    );
    for host_wide in ["hostPID", "hostNetwork", "hostIPC"] {
        assert!(spec[host_wide].is_null(), "{host_wide}");
    }
    let [c] = &seq(&spec["containers"])[..] else {
        panic!("one container")
    };
    let env = &c["env"];
    assert_eq!(named(env, "NVIDIA_VISIBLE_DEVICES")["value"], "all");
    assert_eq!(named(env, "NVIDIA_DRIVER_CAPABILITIES")["value"], "utility");
    assert_eq!(
        named(env, "GPULSE_AGENT_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // It takes no GPU from the device plugin: the toolkit mounts them all for NVML.
    assert!(!format!("{:?}", c["resources"]).contains("nvidia.com/gpu"));
    assert!(
        c["resources"]["requests"].is_mapping() && c["resources"]["limits"]["memory"].is_string()
    );
    locked_down(c, "agent");

    let config = agent_config();
    config.validate().unwrap();
    let mounts = &c["volumeMounts"];
    let volumes = &spec["volumes"];
    let host_path = |mount: &str| {
        let m = seq(mounts)
            .iter()
            .find(|m| m["mountPath"] == mount)
            .unwrap_or_else(|| panic!("nothing mounted at {mount}"));
        assert_eq!(m["readOnly"], true, "{mount} is read-only");
        s(&named(volumes, s(&m["name"]))["hostPath"]["path"]).to_string()
    };
    assert_eq!(host_path(config.proc_root.to_str().unwrap()), "/proc");
    let dmi = config.sysfs_root.join("sys/class/dmi");
    assert_eq!(host_path(dmi.to_str().unwrap()), "/sys/class/dmi");
    // The kubelet's pod-resources socket, where the agent looks for it: its directory
    // alone, read-only.
    let socket = config.pod_resources_socket.clone();
    let socket_dir = socket.parent().expect("a socket in a directory");
    assert_eq!(
        host_path(socket_dir.to_str().unwrap()),
        socket_dir.to_str().unwrap(),
        "{} is mounted from the host at the same path",
        socket.display()
    );
    let hosts: Vec<&str> = seq(volumes)
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        hosts,
        ["/proc", "/sys/class/dmi", "/var/lib/kubelet/pod-resources"],
        "no other host path"
    );
    // The spool is the one writable mount, sized for spool_max_bytes.
    let spool_dir = config.spool_dir.as_deref().expect("a spool");
    let spool = seq(mounts)
        .iter()
        .find(|m| spool_dir.starts_with(s(&m["mountPath"])))
        .unwrap_or_else(|| panic!("nothing mounted above {}", spool_dir.display()));
    assert!(spool["readOnly"].is_null(), "the spool is writable");
    let empty_dir = &named(volumes, s(&spool["name"]))["emptyDir"];
    let limit_mib: u64 = s(&empty_dir["sizeLimit"])
        .strip_suffix("Mi")
        .and_then(|v| v.parse().ok())
        .expect("sizeLimit in Mi");
    assert!(limit_mib << 20 > config.spool_max_bytes, "{limit_mib}Mi");
    for m in seq(mounts) {
        if m["mountPath"] != spool["mountPath"] {
            assert_eq!(m["readOnly"], true, "{:?} is read-only", m["mountPath"]);
        }
    }

    // The collector URL is the Service's gRPC port.
    let svc = object("Service", "gpulse-collector");
    let grpc = named(&svc["spec"]["ports"], "grpc")["port"]
        .as_u64()
        .unwrap();
    assert_eq!(
        config.collector,
        format!("http://gpulse-collector.{NAMESPACE}.svc:{grpc}")
    );
    token_mounted(spec, c, config.auth_token_file.as_deref().expect("a token"));
    config_mounted(spec, c, "gpulse-agent", "agent.toml");
}

/// A container with nothing to escalate with.
fn locked_down(c: &Value, name: &str) {
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    assert!(
        sc["privileged"].is_null() || sc["privileged"] == false,
        "{name}"
    );
    let drop: Vec<&str> = seq(&sc["capabilities"]["drop"]).iter().map(s).collect();
    assert_eq!(drop, ["ALL"], "{name}");
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{name} adds capabilities"
    );
}

/// `file` is the token Secret's key, mounted read-only.
fn token_mounted(spec: &Value, c: &Value, file: &Path) {
    let dir = file.parent().unwrap().to_str().unwrap();
    assert_eq!(file.file_name().unwrap(), TOKEN_KEY);
    let m = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(m["readOnly"], true);
    assert_eq!(
        named(&spec["volumes"], s(&m["name"]))["secret"]["secretName"],
        TOKEN_SECRET
    );
}

/// `--config` names the ConfigMap's key, mounted where the flag points.
fn config_mounted(spec: &Value, c: &Value, config_map: &str, key: &str) {
    let args: Vec<&str> = seq(&c["args"]).iter().map(s).collect();
    let path = format!("/etc/gpulse/{key}");
    assert_eq!(args, ["--config", path.as_str()]);
    let m = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path.as_str())
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    assert_eq!(m["subPath"], key);
    assert_eq!(
        named(&spec["volumes"], s(&m["name"]))["configMap"]["name"],
        config_map
    );
}

fn config_map_file(name: &str, key: &str) -> String {
    s(&object("ConfigMap", name)["data"][key]).to_string()
}

/// The agent's ConfigMap, read as the agent reads it (unknown keys are errors).
fn agent_config() -> gpulse_agent::config::AgentConfig {
    toml::from_str(&config_map_file("gpulse-agent", "agent.toml"))
        .unwrap_or_else(|e| panic!("agent.toml in the ConfigMap: {e}"))
}

fn collector_config() -> gpulse_collector::config::CollectorConfig {
    toml::from_str(&config_map_file("gpulse-collector", "collector.toml"))
        .unwrap_or_else(|e| panic!("collector.toml in the ConfigMap: {e}"))
}

#[test]
fn the_collector_is_one_writer_behind_a_token() {
    let config = collector_config();
    // Listening beyond loopback passes validation only with a token or the opt-out.
    config.validate().unwrap();
    assert!(!config.allow_unauthenticated, "the token is the default");
    assert!(config.grpc_listen.ip().is_unspecified() && config.http_listen.ip().is_unspecified());

    let d = object("Deployment", "gpulse-collector");
    assert_eq!(d["spec"]["replicas"], 1, "one writer of the ledger");
    assert_eq!(
        d["spec"]["strategy"]["type"], "Recreate",
        "never two at once"
    );
    let spec = &d["spec"]["template"]["spec"];
    let [c] = &seq(&spec["containers"])[..] else {
        panic!("one container")
    };
    locked_down(c, "collector");
    token_mounted(spec, c, config.auth_token_file.as_deref().expect("a token"));
    config_mounted(spec, c, "gpulse-collector", "collector.toml");

    // data_dir is the PersistentVolumeClaim.
    let pvc = object("PersistentVolumeClaim", "gpulse-collector-data");
    assert_eq!(seq(&pvc["spec"]["accessModes"])[0], "ReadWriteOnce");
    let data = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == config.data_dir.to_str().unwrap())
        .expect("data_dir is mounted");
    assert_eq!(
        named(&spec["volumes"], s(&data["name"]))["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );

    // SQLite spills large sorts to /tmp, which must be writable under a read-only root.
    let tmp = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .expect("a writable /tmp");
    assert!(named(&spec["volumes"], s(&tmp["name"]))["emptyDir"].is_mapping());

    // The container's ports are the config's, named as the Service and probes use them.
    let ports = &c["ports"];
    for (name, addr) in [("grpc", config.grpc_listen), ("http", config.http_listen)] {
        assert_eq!(
            named(ports, name)["containerPort"].as_u64(),
            Some(u64::from(addr.port()))
        );
    }
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["port"], "http");
    }

    // The Service: named as the rules' job, the ports by name.
    let svc = object("Service", "gpulse-collector");
    assert_eq!(svc["metadata"]["name"], COLLECTOR_JOB);
    let selector = &svc["spec"]["selector"];
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects the collector");
    }
    for name in ["grpc", "http"] {
        let p = named(&svc["spec"]["ports"], name);
        assert_eq!(p["targetPort"], name);
        assert_eq!(p["port"], named(ports, name)["containerPort"]);
    }
    let alerts = read(&prometheus_dir().join(ALERT_RULES));
    assert!(
        alerts.contains(&format!("job=\"{COLLECTOR_JOB}\"")),
        "the rules' job"
    );

    // Only the agents reach the gRPC port.
    let np = object("NetworkPolicy", "gpulse-collector");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], *selector);
    let ingress = seq(&np["spec"]["ingress"]);
    let grpc_rule = ingress
        .iter()
        .find(|r| seq(&r["ports"]).iter().any(|p| p["port"] == "grpc"))
        .expect("a rule for grpc");
    assert_eq!(
        grpc_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "gpulse-agent"
    );
}

#[test]
fn the_service_monitor_scrapes_the_collector_with_the_token() {
    let sm = object("ServiceMonitor", "gpulse-collector");
    assert_eq!(sm["apiVersion"], OPERATOR_API);
    let svc = object("Service", "gpulse-collector");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"]
    );
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "selects the Service by its labels"
        );
    }
    let [e] = &seq(&sm["spec"]["endpoints"])[..] else {
        panic!("one endpoint")
    };
    named(&svc["spec"]["ports"], s(&e["port"]));
    assert_eq!(e["port"], "http");
    assert_eq!(e["path"], "/metrics");
    assert_eq!(e["authorization"]["type"], "Bearer");
    assert_eq!(e["authorization"]["credentials"]["name"], TOKEN_SECRET);
    assert_eq!(e["authorization"]["credentials"]["key"], TOKEN_KEY);
    // No job relabelling: the job is the Service's name, which the rules expect.
    assert!(sm["spec"]["jobLabel"].is_null() && e["relabelings"].is_null());
    // The DCGM view's instance relabelling, the same as the example scrape
    // configuration's (which a real Prometheus runs in the stack test), in the
    // operator's spelling.
    let operator_spelling = |key: &str| match key {
        "source_labels" => "sourceLabels".to_string(),
        "target_label" => "targetLabel".to_string(),
        k => k.to_string(),
    };
    let example: Vec<Value> = seq(&crate::common::example_metric_relabelling(
        "gpulse-collector",
    ))
    .iter()
    .map(|rule| {
        let mut m = serde_yaml::Mapping::new();
        for (k, v) in rule.as_mapping().unwrap() {
            m.insert(Value::from(operator_spelling(s(k))), v.clone());
        }
        Value::Mapping(m)
    })
    .collect();
    assert!(!example.is_empty());
    assert_eq!(seq(&e["metricRelabelings"]), example.as_slice());
}

/// The PrometheusRule as it must be: the rule files' groups, alerts first.
fn expected_prometheus_rule() -> Value {
    let mut groups = Vec::new();
    for file in [ALERT_RULES, RECORDING_RULES] {
        groups.extend(
            seq(&yaml(&prometheus_dir().join(file))["groups"])
                .iter()
                .cloned(),
        );
    }
    let mut labels = Mapping::new();
    labels.insert("app.kubernetes.io/name".into(), "gpulse".into());
    labels.insert("app.kubernetes.io/part-of".into(), "gpulse".into());
    let mut metadata = Mapping::new();
    metadata.insert("name".into(), "gpulse".into());
    metadata.insert("namespace".into(), NAMESPACE.into());
    metadata.insert("labels".into(), Value::Mapping(labels));
    let mut spec = Mapping::new();
    spec.insert("groups".into(), Value::Sequence(groups));
    let mut rule = Mapping::new();
    rule.insert("apiVersion".into(), OPERATOR_API.into());
    rule.insert("kind".into(), "PrometheusRule".into());
    rule.insert("metadata".into(), Value::Mapping(metadata));
    rule.insert("spec".into(), Value::Mapping(spec));
    Value::Mapping(rule)
}

#[test]
fn the_prometheus_rule_holds_exactly_the_rule_files_groups() {
    let path = dir().join(PROMETHEUS_RULE);
    let expected = expected_prometheus_rule();
    if std::env::var_os("GPULSE_BLESS").is_some() {
        let body = serde_yaml::to_string(&expected).unwrap();
        let header = "# Generated from packaging/prometheus/gpulse-alerts.yml and \
                      gpulse-recording.yml\n# by `GPULSE_BLESS=1 cargo test -p gpulse-packaging`; \
                      a test fails when they drift.\n# Add the label your Prometheus selects \
                      rules by (kube-prometheus-stack: release: <its release name>).\n";
        std::fs::write(&path, format!("{header}{body}")).unwrap();
    }
    let committed = yaml(&path);
    let groups = |v: &Value| -> Vec<String> {
        seq(&v["spec"]["groups"])
            .iter()
            .map(|g| s(&g["name"]).to_string())
            .collect()
    };
    assert_eq!(
        groups(&committed),
        groups(&expected),
        "{PROMETHEUS_RULE}: group names; regenerate with GPULSE_BLESS=1"
    );
    assert!(
        committed == expected,
        "{PROMETHEUS_RULE} differs from the rule files; regenerate with GPULSE_BLESS=1 \
         cargo test -p gpulse-packaging, and review the diff"
    );

    // promtool reads the groups as a rule file.
    let tmp = tempfile::tempdir().unwrap();
    let mut file = Mapping::new();
    file.insert("groups".into(), committed["spec"]["groups"].clone());
    std::fs::write(
        tmp.path().join("rules.yml"),
        serde_yaml::to_string(&Value::Mapping(file)).unwrap(),
    )
    .unwrap();
    let out = tool_ok("promtool", &["check", "rules", "rules.yml"], tmp.path());
    let total = crate::common::rules(&committed["spec"]).len();
    assert!(
        out.contains(&format!("SUCCESS: {total} rules found")),
        "{out}"
    );
}
