//! Delivery from the outside: which batches count as new (one rule for /metrics and the
//! ledger), which sequence numbers and Hellos are refused, what the counters say across
//! restarts and failed commits, and what readiness says while the ledger cannot commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// Polls `done` every 100 ms for up to 10 s; panics naming `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gave up after 10 s waiting for {what}");
}

/// A collector on `data_dir` (kept across starts), with `limits`.
async fn start_on(data_dir: &Path, limits: gpulse_collector::config::Limits) -> RunningCollector {
    gpulse_collector::start(CollectorConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        limits,
        ..CollectorConfig::default()
    })
    .await
    .unwrap()
}

fn ledger_file(data_dir: &Path) -> PathBuf {
    data_dir.join(gpulse_collector::cost::store::LEDGER_FILE)
}

/// A seq from the agent's scheme: microseconds since the epoch, now.
fn seq_now() -> u64 {
    now_ms() as u64 * 1000
}

fn batch(seq: u64, snapshots: Vec<v1::Snapshot>) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq,
            snapshots,
            agent: None,
        })),
    }
}

/// The three delivery counters: (received, duplicates, GPU samples).
fn delivery_counters(c: &RunningCollector) -> (f64, f64, f64) {
    (
        counter(c, "gpulse_collector_batches_received_total"),
        counter(c, "gpulse_collector_duplicate_batches_total"),
        counter(c, "gpulse_collector_gpu_samples_received_total"),
    )
}

async fn report(c: &RunningCollector) -> serde_json::Value {
    report_totals(&c.http_addr.to_string()).await["totals"].clone()
}

async fn status_of(c: &RunningCollector, path: &str) -> (u16, String) {
    http_get(&format!("http://{}{path}", c.http_addr), None).await
}

#[tokio::test]
async fn a_reused_seq_with_new_content_is_a_duplicate_for_metrics_and_ledger_alike() {
    let c = start().await;
    let mut sim = sim("gpus=2,scenario=training,seed=41");
    let id = identity("node-r", "m-r");
    let snaps = history(&mut sim, 20, 5000);
    let mut s = open(&c, hello_for(&id, &sim), None).await.unwrap();
    let seq = seq_now();
    assert_eq!(
        s.send(seq, snaps[..10].to_vec()).await,
        collector_message::Msg::Ack(v1::Ack { seq })
    );
    let (view, ledger) = (c.fleet.host("node-r").unwrap(), report(&c).await);
    assert!(ledger["energy_kwh"].as_f64().unwrap() > 0.0, "{ledger}");

    // The same seq again, holding later readings: counters further on, time the first
    // batch did not cover. Acknowledged, and applied nowhere.
    assert_eq!(
        s.send(seq, snaps[10..].to_vec()).await,
        collector_message::Msg::Ack(v1::Ack { seq })
    );
    assert_eq!(delivery_counters(&c), (1.0, 1.0, 20.0));
    assert_eq!(c.fleet.host("node-r").unwrap().gpus, view.gpus);
    assert_eq!(report(&c).await, ledger);
    c.shutdown().await;
}

#[tokio::test]
async fn a_seq_no_agent_can_have_numbered_yet_is_refused_and_the_boot_goes_on() {
    let c = start().await;
    let mut sim = sim("gpus=1,seed=42");
    let mut s = open(&c, hello_for(&identity("node-s", "m-s"), &sim), None)
        .await
        .unwrap();
    let t0 = now_ms();
    for ahead in [u64::MAX, seq_now() + 3_600_000_000] {
        match s.send(ahead, vec![snapshot(&mut sim, t0)]).await {
            collector_message::Msg::Reject(r) => {
                assert_eq!((r.seq, r.reason.as_str()), (ahead, "out_of_range"));
                assert!(r.message.contains(&ahead.to_string()), "{}", r.message);
            }
            other => panic!("seq {ahead}: expected a reject, got {other:?}"),
        }
    }
    assert_eq!(rejected(&c, "out_of_range"), 2.0);
    // The agent's own numbers still count as new.
    let seq = seq_now();
    for (i, seq) in [seq, seq + 1].into_iter().enumerate() {
        assert_eq!(
            s.send(seq, vec![snapshot(&mut sim, t0 + 5000 * (i as i64 + 1))])
                .await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    assert_eq!(delivery_counters(&c), (2.0, 0.0, 2.0));
    c.shutdown().await;
}

#[tokio::test]
async fn without_machine_ids_another_host_cannot_take_a_connected_agents_id() {
    let c = start().await;
    let sim = sim("gpus=1,seed=43");
    let mut holder = identity("node-e", "");
    holder.boot_id = "boot-of-host-1".into();
    let _held = open(&c, hello_for(&holder, &sim), None).await.unwrap();
    let mut other = identity("node-e", "");
    other.boot_id = "boot-of-host-2".into();
    let err = open(&c, hello_for(&other, &sim), None).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("boot-of-host-1"),
        "{}",
        err.message()
    );
    other.boot_id = String::new();
    let err = open(&c, hello_for(&other, &sim), None).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert_eq!(rejected(&c, "agent_id_conflict"), 2.0);
    // The holding host itself reconnects (its old stream not yet seen gone).
    open(&c, hello_for(&holder, &sim), None).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn departed_agents_never_keep_a_new_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let limits = gpulse_collector::config::Limits {
        max_agents: 2,
        ..Default::default()
    };
    let c = start_on(dir.path(), limits).await;
    let sim = sim("gpus=1,seed=44");
    for i in 0..8 {
        let s = open(
            &c,
            hello_for(&identity(&format!("gone-{i}"), "m"), &sim),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("gone-{i} refused: {e:?}"));
        drop(s);
        eventually("the agent to be seen gone", || {
            counter(&c, "gpulse_collector_agents_connected") == 0.0
        })
        .await;
    }
    assert_eq!(counter(&c, "gpulse_collector_agents_known"), 2.0);
    assert_eq!(counter(&c, "gpulse_collector_agents_evicted_total"), 6.0);
    // Connected agents are what the limit bounds.
    let _a = open(&c, hello_for(&identity("a", "m-a"), &sim), None)
        .await
        .unwrap();
    let _b = open(&c, hello_for(&identity("b", "m-b"), &sim), None)
        .await
        .unwrap();
    let err = open(&c, hello_for(&identity("c", "m-c"), &sim), None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("connected"), "{}", err.message());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_replays_count_as_duplicates_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim("gpus=2,scenario=training,seed=45");
    let hello = hello_for(&identity("node-t", "m-t"), &sim);
    let snaps = history(&mut sim, 4, 5000);
    let base = seq_now();
    let first = start_on(dir.path(), Default::default()).await;
    let mut s = open(&first, hello.clone(), None).await.unwrap();
    for i in 0..3 {
        let seq = base + i;
        assert_eq!(
            s.send(seq, vec![snaps[i as usize].clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    drop(s);
    first.shutdown().await;

    // The agent missed the last two acks: it replays them, then sends a new batch.
    let second = start_on(dir.path(), Default::default()).await;
    let mut s = open(&second, hello, None).await.unwrap();
    for i in 1..4 {
        let seq = base + i;
        assert_eq!(
            s.send(seq, vec![snaps[i as usize].clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    assert_eq!(delivery_counters(&second), (1.0, 2.0, 2.0));
    assert!(counter(&second, "gpulse_collector_received_bytes_total") > 0.0);
    second.shutdown().await;
}

/// Holds SQLite's write lock on the ledger as another process could: every commit of
/// the collector fails (after its busy timeout) until it is released.
struct LedgerLock(rusqlite::Connection);

impl LedgerLock {
    fn take(data_dir: &Path) -> LedgerLock {
        let conn = rusqlite::Connection::open(ledger_file(data_dir)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        LedgerLock(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

/// A collector with one batch committed, whose next batch's commit failed because the
/// ledger is locked; the lock, still held, is returned.
async fn a_failed_commit(
    data_dir: &Path,
    seq: u64,
    snaps: &[v1::Snapshot],
    hello: v1::Hello,
) -> (RunningCollector, LedgerLock) {
    let c = start_on(data_dir, Default::default()).await;
    let mut s = open(&c, hello, None).await.unwrap();
    assert_eq!(
        s.send(seq, vec![snaps[0].clone()]).await,
        collector_message::Msg::Ack(v1::Ack { seq })
    );
    let lock = LedgerLock::take(data_dir);
    s.tx.send(batch(seq + 1, vec![snaps[1].clone()]))
        .await
        .unwrap();
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    (c, lock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_commit_failed_counts_nowhere_and_its_resend_counts_as_new() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim("gpus=2,scenario=training,seed=46");
    let hello = hello_for(&identity("node-f", "m-f"), &sim);
    let snaps = history(&mut sim, 3, 5000);
    let base = seq_now();
    let (c, lock) = a_failed_commit(dir.path(), base, &snaps, hello.clone()).await;
    assert_eq!(
        delivery_counters(&c),
        (1.0, 0.0, 2.0),
        "a failed commit counts nowhere"
    );
    lock.release();
    let mut s = open(&c, hello, None).await.unwrap();
    for i in 1..3 {
        let seq = base + i;
        assert_eq!(
            s.send(seq, vec![snaps[i as usize].clone()]).await,
            collector_message::Msg::Ack(v1::Ack { seq })
        );
    }
    assert_eq!(
        delivery_counters(&c),
        (3.0, 0.0, 6.0),
        "the resend of a batch whose commit failed is new"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_ledger_cannot_commit_the_collector_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim("gpus=1,seed=47");
    let hello = hello_for(&identity("node-g", "m-g"), &sim);
    let snaps = history(&mut sim, 2, 5000);
    let (c, lock) = a_failed_commit(dir.path(), seq_now(), &snaps, hello).await;
    let (code, body) = status_of(&c, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ledger cannot commit"), "{body}");
    assert_eq!(
        status_of(&c, "/healthz").await.0,
        200,
        "the process is alive"
    );

    // Once the ledger takes writes again, readiness says so before any agent sends.
    lock.release();
    let mut tries = 0;
    while status_of(&c, "/readyz").await.0 != 200 {
        tries += 1;
        assert!(
            tries < 50,
            "still not ready 10 s after the ledger was released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.shutdown().await;
}
