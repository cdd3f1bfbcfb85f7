//! The fleet page (/fleet) in a real headless Chromium, fed by a collector over real
//! gRPC: every state the simulator plays, the filter in the URL, a host's view, a live
//! change, a collector that goes away, the colours' contrast, and signing in.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

#[path = "support/chromium.rs"]
mod chromium;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Streaming;

use chromium::{Chromium, elements};
use gpulse_collector::RunningCollector;
use gpulse_collector::config::CollectorConfig;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Learned, ProviderIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message, collector_message};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn start_with(config: CollectorConfig) -> RunningCollector {
    let dir = tempfile::tempdir().unwrap().keep();
    gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..config
    })
    .await
    .unwrap()
}

async fn start() -> RunningCollector {
    start_with(CollectorConfig {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..CollectorConfig::default()
    })
    .await
}

/// One simulated host playing one scenario over a hand-driven agent stream.
struct Agent {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: Streaming<v1::CollectorMessage>,
    sim: Simulator,
    seq: u64,
}

impl Agent {
    async fn connect(c: &RunningCollector, host: &Host) -> Agent {
        let sim = Simulator::new(host.spec.parse().unwrap());
        let identity = HostIdentity {
            agent_id: host.name.into(),
            boot_id: "boot-1".into(),
            hostname: host.name.into(),
            agent_version: "0.1.0".into(),
            provider: ProviderIdentity {
                provider: Learned::from_config(host.provider),
                region: Learned::from_config(host.region),
                zone: Learned::default(),
                instance_type: Learned::from_config(host.instance_type),
            },
            ..HostIdentity::default()
        };
        let (tx, rx) = support::open_agent_stream(c.grpc_addr, &identity, sim.inventory()).await;
        Agent {
            tx,
            rx,
            sim,
            seq: 0,
        }
    }

    /// Sends `count` readings 5 s apart, the newest `ago_ms` before now, and waits for
    /// the acknowledgement.
    async fn play(&mut self, count: i64, ago_ms: i64) {
        let newest = now_ms() - ago_ms;
        let snapshots = (0..count)
            .map(|i| {
                let t = newest - (count - 1 - i) * 5000;
                v1::Snapshot::from(&Snapshot {
                    timestamp_unix_ms: t,
                    gpus: self.sim.sample(t),
                })
            })
            .collect();
        self.seq += 1;
        self.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(v1::Batch {
                    seq: self.seq,
                    snapshots,
                    agent: None,
                })),
            })
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("the collector answers")
            .unwrap()
            .unwrap();
        assert!(
            matches!(reply.msg, Some(collector_message::Msg::Ack(_))),
            "{reply:?}"
        );
    }
}

struct Host {
    name: &'static str,
    provider: &'static str,
    region: &'static str,
    instance_type: &'static str,
    spec: &'static str,
    /// (state, reason) of each GPU.
    expect: &'static [(&'static str, &'static str)],
}

const THROTTLED_THERMAL: (&str, &str) = ("throttled", "thermal");
const BUSY: (&str, &str) = ("busy", "");

/// A host per scenario the simulator plays, two GPUs each, on several providers.
#[rustfmt::skip]
const FLEET: &[Host] = &[
    Host { name: "aws-thermal", provider: "aws", region: "us-east-1", instance_type: "p5.48xlarge", spec: "gpus=2,scenario=thermal,seed=1", expect: &[THROTTLED_THERMAL, THROTTLED_THERMAL] },
    Host { name: "aws-training", provider: "aws", region: "us-east-1", instance_type: "p5.48xlarge", spec: "gpus=2,scenario=training,seed=2,pods=2", expect: &[BUSY, BUSY] },
    Host { name: "azure-nvlink", provider: "azure", region: "eastus", instance_type: "Standard_ND96isr_H100_v5", spec: "gpus=8,scenario=nvlink-errors,seed=3", expect: &[("erroring", ""); 8] },
    Host { name: "azure-pcie", provider: "azure", region: "eastus", instance_type: "Standard_ND96isr_H100_v5", spec: "gpus=2,scenario=pcie-degraded,seed=4", expect: &[("erroring", ""), ("erroring", "")] },
    Host { name: "crusoe-idle", provider: "crusoe", region: "us-northcentral1", instance_type: "h200-141gb-sxm-ib.8x", spec: "gpus=2,model=h200,scenario=idle,seed=5", expect: &[("idle", ""), ("idle", "")] },
    Host { name: "cw-lost", provider: "coreweave", region: "us-east-04", instance_type: "gd-8xh100ib-i128", spec: "gpus=2,scenario=lost,seed=6", expect: &[BUSY, ("lost", "")] },
    Host { name: "gcp-appclocks", provider: "gcp", region: "us-central1", instance_type: "a3-highgpu-8g", spec: "gpus=2,scenario=app-clocks,seed=7", expect: &[("throttled", "clocks"), ("throttled", "clocks")] },
    Host { name: "gcp-capped", provider: "gcp", region: "us-central1", instance_type: "a3-highgpu-8g", spec: "gpus=2,scenario=power-cap,seed=8", expect: &[("throttled", "power"), ("throttled", "power")] },
    Host { name: "gcp-syncboost", provider: "gcp", region: "europe-west4", instance_type: "a3-highgpu-8g", spec: "gpus=2,scenario=sync-boost,seed=9", expect: &[("throttled", "clocks"), ("throttled", "clocks")] },
    Host { name: "lambda-hidden", provider: "lambda", region: "us-south-1", instance_type: "gpu_8x_h100_sxm5", spec: "gpus=2,scenario=training,seed=10,hide=energy+pcie_replays", expect: &[BUSY, BUSY] },
    Host { name: "lambda-held", provider: "lambda", region: "us-south-1", instance_type: "gpu_8x_h100_sxm5", spec: "gpus=2,scenario=idle-held,seed=11", expect: &[("idle", ""), ("idle", "")] },
    Host { name: "nebius-xid", provider: "nebius", region: "eu-north1", instance_type: "gpu-h200-sxm", spec: "gpus=2,model=h200,scenario=xid,seed=12", expect: &[("erroring", ""), ("erroring", "")] },
    Host { name: "oci-slowdown", provider: "oci", region: "us-ashburn-1", instance_type: "BM.GPU.H100.8", spec: "gpus=2,scenario=hw-slowdown,seed=13", expect: &[("throttled", "hardware_slowdown"), ("throttled", "hardware_slowdown")] },
    Host { name: "onprem-ecc", provider: "on-prem", region: "dc1", instance_type: "dgx-a100", spec: "gpus=2,model=a100,scenario=ecc,seed=14", expect: &[("erroring", ""), BUSY] },
    Host { name: "onprem-down", provider: "on-prem", region: "dc1", instance_type: "dgx-a100", spec: "gpus=2,model=a100,scenario=training,seed=15", expect: &[("down", ""), ("down", "")] },
];

/// The whole fleet with six readings per host (the findings window), the newest a
/// second ago; the last host's agent has gone away.
async fn fleet(c: &RunningCollector) -> Vec<Agent> {
    let mut agents = Vec::new();
    for host in FLEET {
        let mut a = Agent::connect(c, host).await;
        a.play(6, 1000).await;
        agents.push(a);
    }
    let down = agents.pop().unwrap();
    drop(down);
    let gone = FLEET.last().unwrap().name;
    eventually(|| c.fleet.host(gone).is_some_and(|h| !h.connected)).await;
    agents
}

async fn eventually(mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(
            Instant::now() < until,
            "the condition did not hold within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dump(url: String) -> String {
    tokio::task::spawn_blocking(move || Chromium::new(1400, 1000).dump_dom(&url, &[]))
        .await
        .unwrap()
}

type Attrs = BTreeMap<String, String>;

fn tiles(dom: &str) -> Vec<Attrs> {
    elements(dom, "button", "tile")
}

fn tile_of<'a>(tiles: &'a [Attrs], host: &str, gpu: usize) -> &'a Attrs {
    let gpu = gpu.to_string();
    tiles
        .iter()
        .find(|t| t["data-host"] == host && t["data-gpu"] == gpu)
        .unwrap_or_else(|| panic!("no tile for {host} GPU {gpu}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_the_simulator_plays_shows_on_its_tile_grouped_by_provider() {
    let c = start().await;
    let _agents = fleet(&c).await;
    let dom = dump(format!("http://{}/fleet", c.http_addr)).await;
    let tiles = tiles(&dom);
    let gpus: usize = FLEET.iter().map(|h| h.expect.len()).sum();
    assert_eq!(tiles.len(), gpus, "a tile per GPU");
    for host in FLEET {
        for (gpu, (state, reason)) in host.expect.iter().enumerate() {
            let t = tile_of(&tiles, host.name, gpu);
            assert_eq!(t["data-state"], *state, "{} GPU {gpu}", host.name);
            assert_eq!(
                t.get("data-reason").map_or("", String::as_str),
                *reason,
                "{} GPU {gpu}",
                host.name
            );
            let label = &t["aria-label"];
            assert!(
                label.starts_with(&format!("{} GPU {gpu} ", host.name)),
                "{label}"
            );
            assert!(label.contains(state), "{label}");
            assert_eq!(t["title"], *label, "the title says what the label says");
            assert_eq!(
                t["type"], "button",
                "a tile is a button: focusable, Enter opens it"
            );
        }
    }
    // The severity of the worst finding is marked on the tile and named in its label.
    let lost = tile_of(&tiles, "cw-lost", 1);
    assert_eq!(lost["data-severity"], "critical");
    assert!(lost["aria-label"].contains("gpu lost"), "{lost:?}");
    let thermal = tile_of(&tiles, "aws-thermal", 0);
    assert_eq!(thermal["data-severity"], "warning");
    // Grouped by provider, in order, then by host.
    let providers: Vec<String> = elements(&dom, "section", "provider")
        .into_iter()
        .map(|a| a["data-provider"].clone())
        .collect();
    let mut sorted = providers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(providers, sorted);
    assert_eq!(providers.len(), 9, "{providers:?}");
    let hosts = elements(&dom, "button", "host-name");
    assert_eq!(hosts.len(), FLEET.len(), "every host's name is a button");
    // The numbers at the top.
    let summary = &dom[dom.find("id=\"summary\"").unwrap()..dom.find("id=\"filters\"").unwrap()];
    for needle in [
        &format!("<b>{gpus}</b><span>GPUs</span>"),
        "<b>1</b><span>lost</span>",
        "<b>1 / 15</b><span>hosts with agent down</span>",
        "thermal 2, power 2, hw slowdown 2, clocks 4",
        "/h</b>",
    ] {
        assert!(
            summary.contains(needle),
            "the summary lacks {needle:?}: {summary}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_in_the_url_shows_the_same_view_and_a_bad_one_is_named() {
    let c = start().await;
    let _agents = fleet(&c).await;
    let dom = dump(format!(
        "http://{}/fleet?provider=gcp&state=throttled",
        c.http_addr
    ))
    .await;
    let tiles = tiles(&dom);
    let shown: std::collections::BTreeSet<&str> =
        tiles.iter().map(|t| t["data-host"].as_str()).collect();
    assert_eq!(
        shown.into_iter().collect::<Vec<_>>(),
        ["gcp-appclocks", "gcp-capped", "gcp-syncboost"]
    );
    assert!(tiles.iter().all(|t| t["data-state"] == "throttled"));
    assert!(
        dom.contains("<option value=\"gcp\" selected=\"\">gcp</option>"),
        "the control shows the URL's filter"
    );
    let gpus: usize = FLEET.iter().map(|h| h.expect.len()).sum();
    assert!(
        dom.contains(&format!("<b>{gpus}</b><span>GPUs (6 shown)</span>")),
        "the summary says how many are shown"
    );

    let by_model = dump(format!(
        "http://{}/fleet?model=NVIDIA%20A100-SXM4-80GB&region=dc1",
        c.http_addr
    ))
    .await;
    let models: Vec<Attrs> = crate::tiles(&by_model);
    assert!(
        !models.is_empty() && models.iter().all(|t| t["data-host"].starts_with("onprem-")),
        "{models:?}"
    );

    // GPUs held by pods: the namespace filter keeps those of its namespace, and the
    // tile's label names it.
    let by_namespace = dump(format!("http://{}/fleet?namespace=inference", c.http_addr)).await;
    let held: Vec<Attrs> = crate::tiles(&by_namespace);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0]["data-host"].as_str(), held[0]["data-gpu"].as_str()),
        ("aws-training", "1")
    );
    assert!(
        held[0]["aria-label"].contains("held in namespace inference"),
        "{held:?}"
    );
    assert!(
        by_namespace.contains("<option value=\"ml-training\">ml-training</option>"),
        "every namespace is a choice"
    );

    for (query, named) in [("state=asleep", "state"), ("zone=x", "zone")] {
        let (status, body) = request(c.http_addr, "GET", &format!("/fleet?{query}"), &[], "").await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(named), "{query}: {body}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_link_opens_its_gpus_findings_sources_and_hidden_fields() {
    let c = start().await;
    let _agents = fleet(&c).await;
    let dom = dump(format!("http://{}/fleet?host=aws-thermal", c.http_addr)).await;
    let host = &dom[dom.find("id=\"host\"").unwrap()..];
    assert!(!dom.contains("id=\"host\" hidden"), "the host view is open");
    assert!(
        host.contains("id=\"host-title\">aws-thermal</h2>"),
        "{host}"
    );
    assert!(host.contains("data-kind=\"thermal_throttling\""), "{host}");
    assert!(host.contains("(config)"), "where the provider came from");
    let (_, api) = request(
        c.http_addr,
        "GET",
        "/api/v1/findings?host=aws-thermal",
        &[],
        "",
    )
    .await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let findings = api["findings"].as_array().unwrap();
    assert_eq!(
        host.matches("class=\"finding\"").count(),
        findings.len(),
        "the findings of /api/v1/findings"
    );
    for f in findings {
        let summary = f["summary"].as_str().unwrap();
        assert!(host.contains(&chromium_text(summary)), "{summary}");
    }
    assert_eq!(
        host.matches("<svg").count(),
        2 * 4,
        "four sparklines per GPU"
    );
    assert!(host.contains("SM clock: "), "{host}");
    assert!(
        host.contains("temperature: ")
            && host.contains("power: ")
            && host.contains("utilisation: ")
    );
    // Six readings kept, so six points per line.
    let points = host
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 6, "{points}");

    let hidden = dump(format!("http://{}/fleet?host=lambda-hidden", c.http_addr)).await;
    let row = hidden
        .split("data-field=\"fields not exposed\">")
        .nth(1)
        .unwrap();
    let row = row.split('<').next().unwrap();
    // Retired pages are absent by design on this model (it remaps rows instead): not
    // hidden, by the same rule as the hidden_fields finding.
    assert_eq!(row, "energy, pcie_replays");
    let (_, healthy) = request(
        c.http_addr,
        "GET",
        "/api/v1/fleet/host?host=aws-training",
        &[],
        "",
    )
    .await;
    let healthy: serde_json::Value = serde_json::from_str(&healthy).unwrap();
    assert_eq!(
        healthy["hidden_fields"],
        serde_json::json!([]),
        "a host hiding nothing hides nothing"
    );
    let (status, body) = request(c.http_addr, "GET", "/api/v1/fleet/host?host=nope", &[], "").await;
    assert_eq!(status, 404);
    assert!(body.contains("no host \\\"nope\\\" in the fleet"), "{body}");
    c.shutdown().await;
}

/// Text as Chromium serialises it inside an element.
fn chromium_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_an_open_page_and_a_gone_collector_leaves_it_stale() {
    let c = start().await;
    let host = Host {
        name: "cw-falls-off",
        provider: "coreweave",
        region: "us-east-04",
        instance_type: "gd-8xh100ib-i128",
        spec: "gpus=2,scenario=lost,seed=21",
        expect: &[],
    };
    let mut agent = Agent::connect(&c, &host).await;
    // One reading: every GPU still answers.
    agent.play(1, 6000).await;
    let browser = Chromium::new(1200, 800);
    let url = format!("http://{}/fleet", c.http_addr);
    // The stream never ends while the collector runs, so Chromium dumps the page only
    // once the collector is gone: then the page has applied the change and gone stale.
    let child = browser.spawn_dump_dom(&url, 8000);
    let hub = c.fleet_page.clone();
    eventually(|| hub.viewers() > 0).await;
    let before = hub.seq();
    agent.play(3, 1000).await;
    // Published, and one more tick for it to be written to the page.
    eventually(|| hub.seq() >= before + 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shutdown().await;
    let dom = tokio::task::spawn_blocking(move || Chromium::finish(child))
        .await
        .unwrap();
    let tiles = tiles(&dom);
    assert_eq!(tile_of(&tiles, "cw-falls-off", 1)["data-state"], "lost");
    assert!(
        dom.contains(" cw-falls-off/1=lost"),
        "the page applied the delta: {}",
        &dom[dom.find("id=\"event-log\"").unwrap()..]
    );
    assert!(
        dom.contains("data-host=\"cw-falls-off\" data-gpu=\"1\" data-state=\"lost\""),
        "the change is listed"
    );
    let status = &dom[dom.find("id=\"status\"").unwrap()..];
    assert!(
        status.contains("data-live=\"stale\"") && status.contains("showing the last state"),
        "{}",
        &status[..200.min(status.len())]
    );
    let deltas = dom.matches("data-kind=\"delta\"").count();
    assert!(deltas >= 1, "deltas arrived without a reload");
    assert_eq!(
        dom.matches("data-kind=\"full\"").count(),
        1,
        "the page resumed from its own state: no second full state"
    );
}

fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_of_the_page_is_a_real_image() {
    let c = start().await;
    let _agents = fleet(&c).await;
    let file = artefacts().join("fleet.png");
    let url = format!("http://{}/fleet", c.http_addr);
    let shot = file.clone();
    let png = tokio::task::spawn_blocking(move || Chromium::new(1280, 760).screenshot(&url, &shot))
        .await
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 760));
    assert!(
        png.len() > 30_000,
        "{} bytes: an empty page is smaller",
        png.len()
    );
    eprintln!("fleet page screenshot: {}", file.display());
    if std::env::var_os("GPULSE_BLESS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet-page.png");
        std::fs::write(&docs, &png).unwrap();
        eprintln!("blessed {}", docs.display());
    }
    c.shutdown().await;
}

/// WCAG 2 relative luminance of "#rrggbb".
fn luminance(hex: &str) -> f64 {
    let channel = |i: usize| {
        let c = f64::from(u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()) / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2)
}

fn contrast(a: &str, b: &str) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

#[test]
fn state_colours_meet_the_contrast_minimums() {
    assert!(
        (contrast("#000000", "#ffffff") - 21.0).abs() < 1e-9,
        "WCAG's own example"
    );
    let css = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/live/assets/fleet.css"),
    )
    .unwrap();
    let vars: BTreeMap<&str, &str> = css
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim().trim_end_matches(';')))
        .collect();
    let bg = vars["bg"];
    let ink = vars["tile-ink"];
    let filled = [
        "busy",
        "idle",
        "thermal",
        "hardware_slowdown",
        "power",
        "clocks",
        "lost",
        "erroring",
    ];
    let outlined = ["down", "unknown"];
    for name in filled.iter().chain(&outlined) {
        let colour = vars[&*format!("c-{name}")];
        let tile = contrast(colour, bg);
        assert!(
            tile >= 3.0,
            "{name} tile {colour} on {bg}: {tile:.2}:1 is under 3:1"
        );
    }
    for name in filled {
        let colour = vars[&*format!("c-{name}")];
        let text = contrast(ink, colour);
        assert!(
            text >= 4.5,
            "severity mark {ink} on {name} {colour}: {text:.2}:1 is under 4.5:1"
        );
    }
    for text in ["fg", "muted"] {
        let r = contrast(vars[text], bg);
        assert!(r >= 4.5, "{text} on the background: {r:.2}:1");
        assert!(
            contrast(vars[text], vars["panel"]) >= 4.5,
            "{text} on a panel"
        );
    }
    // Every state the page can show has its colour.
    for state in ["busy", "idle", "lost", "erroring", "down", "unknown"] {
        assert!(
            css.contains(&format!(".tile[data-state=\"{state}\"]")),
            "{state}"
        );
    }
}

/// One HTTP/1.1 request; (status, body with headers first when `head` is set).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    sock.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    sock.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (status, head.to_string(), body.to_string())
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// Reads an event stream until `until` has been seen; the raw text so far.
async fn read_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    until: &str,
) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    // HTTP/1.0: the stream comes unchunked, as the events are written.
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains(until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {until:?} within 20 s: {text}"))
            .unwrap();
        assert!(n > 0, "the stream ended before {until:?}: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_full_state_then_deltas_and_resumes_after_the_last_event() {
    let c = start().await;
    let host = &FLEET[5];
    let mut agent = Agent::connect(&c, host).await;
    agent.play(1, 6000).await;
    let first = read_stream(c.http_addr, "/fleet/events", &[], "}\n\n").await;
    assert!(first.contains("content-type: text/event-stream"), "{first}");
    let full = first.find("event: full").unwrap();
    let id_line = first[full..]
        .lines()
        .find(|l| l.starts_with("id: "))
        .unwrap();
    let id = id_line.trim_start_matches("id: ").to_string();
    assert!(first[full..].contains("\"cw-lost\""), "{first}");
    // Resuming after that event: no full state again, the next delta carries the change.
    agent.play(3, 1000).await;
    let resumed = read_stream(
        c.http_addr,
        "/fleet/events",
        &[("Last-Event-ID", &id)],
        "\"state\":\"lost\"",
    )
    .await;
    assert!(!resumed.contains("event: full"), "{resumed}");
    assert!(resumed.contains("event: delta"), "{resumed}");
    // An id from another collector process gets a full state.
    let other = read_stream(
        c.http_addr,
        "/fleet/events",
        &[("Last-Event-ID", "abc-1")],
        "event: full",
    )
    .await;
    assert!(other.contains("\"cw-lost\""));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_signs_in_once_and_its_stream_takes_the_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let token = "fleet-page-token-0123456789";
    let file = dir.path().join("token");
    std::fs::write(&file, token).unwrap();
    let c = start_with(CollectorConfig {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        auth_token_file: Some(file),
        ..CollectorConfig::default()
    })
    .await;
    let addr = c.http_addr;
    let (status, page) = request(addr, "GET", "/fleet?provider=aws", &[], "").await;
    assert_eq!(status, 401);
    assert!(
        page.contains("<form method=\"post\" action=\"/fleet/session\">"),
        "{page}"
    );
    assert!(
        page.contains("value=\"/fleet?provider=aws\""),
        "it returns to the same view"
    );
    for path in [
        "/fleet/events",
        "/api/v1/fleet",
        "/api/v1/fleet/host?host=x",
    ] {
        let (status, body) = request(addr, "GET", path, &[], "").await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, body) = exchange(
        addr,
        "POST",
        "/fleet/session",
        &form,
        "token=wrong-token-0123456789&next=%2Ffleet",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, head, _) = exchange(
        addr,
        "POST",
        "/fleet/session",
        &form,
        &format!("token={token}&next=%2Ffleet%3Fprovider%3Daws"),
    )
    .await;
    assert_eq!(status, 303, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /fleet?provider=aws"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("a cookie: {head}"));
    assert!(
        !cookie.contains(token),
        "the cookie does not carry the token: {cookie}"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap();
    let with_cookie = [("Cookie", pair)];
    let (status, _) = request(addr, "GET", "/fleet", &with_cookie, "").await;
    assert_eq!(status, 200);
    let stream = read_stream(addr, "/fleet/events", &with_cookie, "event: full").await;
    assert!(stream.starts_with("HTTP/1.0 200"), "{stream}");
    // Leaving the page elsewhere is refused: the form sends back to /fleet only.
    let (_, head, _) = exchange(
        addr,
        "POST",
        "/fleet/session",
        &form,
        &format!("token={token}&next=https%3A%2F%2Fevil.example"),
    )
    .await;
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("location: /fleet")),
        "{head}"
    );
    let bearer = format!("Bearer {token}");
    let (status, _) = request(
        addr,
        "GET",
        "/api/v1/fleet",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    c.shutdown().await;
}

/// The figures of docs/benchmarks.md: 1,000 hosts of 8 GPUs, applied straight to the
/// fleet (gRPC is measured elsewhere). Run with
/// `cargo test --release -p gpulse-collector --test fleet_page -- --ignored --nocapture scale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: a minute of CPU"]
async fn scale_1000_hosts_of_8_gpus() {
    let c = start().await;
    let scenarios = [
        "training",
        "thermal",
        "power-cap",
        "idle",
        "training",
        "xid",
        "training",
        "idle-held",
    ];
    let t0 = now_ms() - 40_000;
    let mut hosts = Vec::new();
    for i in 0..1000u64 {
        let name = format!("host-{i:04}");
        let spec = format!(
            "gpus=8,scenario={},seed={i}",
            scenarios[i as usize % scenarios.len()]
        );
        let mut sim = Simulator::new(spec.parse().unwrap());
        let identity = HostIdentity {
            agent_id: name.clone(),
            hostname: name,
            provider: ProviderIdentity {
                provider: Learned::from_config(
                    ["aws", "gcp", "azure", "coreweave"][i as usize % 4],
                ),
                region: Learned::from_config("r1"),
                zone: Learned::default(),
                instance_type: Learned::from_config("p5.48xlarge"),
            },
            ..HostIdentity::default()
        };
        let session = c
            .fleet
            .connect(identity, sim.inventory().to_vec(), now_ms())
            .unwrap();
        let snaps: Vec<Snapshot> = (0..6)
            .map(|k| Snapshot {
                timestamp_unix_ms: t0 + k * 5000,
                gpus: sim.sample(t0 + k * 5000),
            })
            .collect();
        c.fleet.apply(&session, 1, snaps, now_ms()).unwrap();
        hosts.push((session, sim));
    }
    let hub = c.fleet_page.clone();
    let started = Instant::now();
    let full = tokio::task::spawn_blocking({
        let hub = hub.clone();
        move || hub.full_fresh()
    })
    .await
    .unwrap();
    let first_build = started.elapsed();
    // One sampling interval: every host sends its next reading.
    for (session, sim) in &mut hosts {
        let t = t0 + 30_000;
        let snap = Snapshot {
            timestamp_unix_ms: t,
            gpus: sim.sample(t),
        };
        c.fleet.apply(session, 2, vec![snap], now_ms()).unwrap();
    }
    let mut viewer = hub.viewer(Some(full.seq));
    let started = Instant::now();
    tokio::task::spawn_blocking({
        let hub = hub.clone();
        move || hub.refresh()
    })
    .await
    .unwrap();
    let rebuild = started.elapsed();
    let delta = viewer.next().await.unwrap();
    let quiet = {
        let hub2 = hub.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || hub2.refresh())
            .await
            .unwrap();
        (started.elapsed(), viewer.next().await.unwrap().json.len())
    };
    let changed = delta.json.matches("\"tile\":").count();
    eprintln!(
        "full state: {} bytes, first build {:?}; after one interval: {changed} of 8000 tiles changed, \
         delta {} bytes, rebuild {:?}; with no new readings: delta {} bytes, rebuild {:?}",
        full.json.len(),
        first_build,
        delta.json.len(),
        rebuild,
        quiet.1,
        quiet.0,
    );
    let url = format!("http://{}/fleet", c.http_addr);
    let started = Instant::now();
    let dom = tokio::task::spawn_blocking(move || Chromium::new(1400, 1000).dump_dom(&url, &[]))
        .await
        .unwrap();
    let wall = started.elapsed();
    let render = dom
        .split("data-render-ms=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(tiles(&dom).len(), 8000);
    eprintln!(
        "page: {} bytes of HTML, first render {render} ms in Chromium, Chromium run {wall:?}",
        dom.len()
    );
    c.shutdown().await;
}
