//! The demo binary as a newcomer runs it.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> String {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn the_demo_says_where_its_data_is_keeps_it_on_request_and_prices_on_prem() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpulse-demo"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--interval", "200ms", "--no-local-gpus", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    let shown = data.display().to_string();
    assert!(
        text.contains(&format!("data:     {shown} (kept after exit)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("report --since 1h --data-dir {shown}")),
        "{text}"
    );
    let addr = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics:  http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap()
        .to_string();

    // Every on-prem GPU gets a bare-metal price once its host has connected.
    let deadline = Instant::now() + Duration::from_secs(20);
    let priced = loop {
        let metrics = get(&addr, "/metrics");
        let onprem: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("gpulse_gpu_priced{") && l.contains("host=\"onprem-"))
            .collect();
        if onprem.len() == 16 || Instant::now() > deadline {
            break onprem.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(priced.len(), 16, "{priced:?}");
    assert!(priced.iter().all(|l| l.ends_with(" 1")), "{priced:?}");

    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        data.join(gpulse_collector::cost::store::LEDGER_FILE)
            .exists(),
        "the ledger stays in --data-dir"
    );
}
