//! Captures of real GPUs, and their replay.
//!
//! A capture file is the agent's own wire messages, length-delimited protobuf: one
//! `AgentMessage{Hello}` (identity and inventory), then one `AgentMessage{Batch}` per
//! reading. `gpulse-agent capture` writes one on any host; `--replay FILE` plays it
//! back as if the GPUs were there, so a capture from a real GPU becomes a fixture.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;

use gpulse_gpu::{DeviceInfo, DeviceSample, GpuBackend, HostIdentity, Reading, Snapshot};
use gpulse_proto::v1::{self, agent_message};

use crate::sampler::now_unix_ms;

/// Why a capture could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read capture {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("capture {path} is not a gpulse capture: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("cannot write the capture: {0}")]
    Write(#[from] std::io::Error),
}

fn write_message(out: &mut dyn Write, msg: agent_message::Msg) -> std::io::Result<()> {
    let bytes = v1::AgentMessage { msg: Some(msg) }.encode_length_delimited_to_vec();
    out.write_all(&bytes)
}

/// Reads `backend` every `rate` for `duration` and writes a capture to `out`.
/// Returns the number of readings.
pub fn capture(
    backend: &mut dyn GpuBackend,
    identity: &HostIdentity,
    duration: Duration,
    rate: Duration,
    out: &mut dyn Write,
) -> Result<usize, CaptureError> {
    let hello = gpulse_proto::hello(identity, backend.inventory(), rate.as_millis() as u64);
    write_message(out, agent_message::Msg::Hello(hello))?;
    let started = Instant::now();
    let mut readings = 0;
    loop {
        let now = now_unix_ms();
        let snapshot = Snapshot {
            timestamp_unix_ms: now,
            gpus: backend.sample(now),
        };
        readings += 1;
        write_message(
            out,
            agent_message::Msg::Batch(v1::Batch {
                seq: readings as u64,
                snapshots: vec![v1::Snapshot::from(&snapshot)],
                agent: None,
            }),
        )?;
        if started.elapsed() >= duration {
            break;
        }
        std::thread::sleep(rate.min(duration.saturating_sub(started.elapsed())));
    }
    out.flush()?;
    Ok(readings)
}

/// A capture read back: the host, its GPUs and every snapshot.
#[derive(Debug, Clone)]
pub struct Capture {
    pub identity: HostIdentity,
    pub inventory: Vec<DeviceInfo>,
    pub snapshots: Vec<Snapshot>,
}

impl Capture {
    pub fn read(path: &Path) -> Result<Capture, CaptureError> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| CaptureError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let bad = |reason: String| CaptureError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut buf = bytes.as_slice();
        let mut hello = None;
        let mut snapshots = Vec::new();
        while !buf.is_empty() {
            let m = v1::AgentMessage::decode_length_delimited(&mut buf)
                .map_err(|e| bad(format!("message {}: {e}", snapshots.len() + 1)))?;
            match m.msg {
                Some(agent_message::Msg::Hello(h)) if hello.is_none() => hello = Some(h),
                Some(agent_message::Msg::Batch(b)) if hello.is_some() => {
                    for s in b.snapshots {
                        snapshots.push(Snapshot::try_from(s).map_err(|e| bad(e.to_string()))?);
                    }
                }
                _ => return Err(bad("expected one Hello followed by Batches".into())),
            }
        }
        let hello = hello.ok_or_else(|| bad("empty file".into()))?;
        if snapshots.is_empty() {
            return Err(bad("no readings after the Hello".into()));
        }
        let (identity, inventory) = gpulse_proto::identity_from_hello(hello);
        if let Some((i, s)) = snapshots
            .iter()
            .enumerate()
            .find(|(_, s)| s.gpus.len() != inventory.len())
        {
            return Err(bad(format!(
                "reading {} has {} GPUs but the Hello lists {}",
                i + 1,
                s.gpus.len(),
                inventory.len()
            )));
        }
        Ok(Capture {
            identity,
            inventory,
            snapshots,
        })
    }
}

/// Plays a capture back as a backend, looping at the end. Cumulative counters keep
/// growing across loops, as on a GPU, by offsetting each pass by the capture's span.
#[derive(Debug)]
pub struct Replay {
    capture: Capture,
    next: usize,
    passes: u64,
}

impl Replay {
    pub fn new(capture: Capture) -> Replay {
        Replay {
            capture,
            next: 0,
            passes: 0,
        }
    }
}

/// How much a cumulative counter grows per pass of the capture. Counters that grow
/// with time (energy, bytes, throttled time) also grow across the loop's seam by one
/// average step; event counters (replays, errors, XIDs) do not.
fn growth(first: u64, last: u64, readings: usize, continuous: bool) -> u64 {
    // Saturating: a capture is a file, and a damaged one may hold any value.
    let span = last.saturating_sub(first);
    if continuous && readings > 1 {
        span.saturating_add(span / (readings as u64 - 1))
    } else {
        span
    }
}

/// Shifts every cumulative counter of `s` by `passes` times its growth per pass.
fn advance(s: &mut DeviceSample, first: &DeviceSample, last: &DeviceSample, n: usize, passes: u64) {
    let shift = |v: u64, f: Option<u64>, l: Option<u64>, continuous: bool| match f.zip(l) {
        Some((f, l)) => v.saturating_add(growth(f, l, n, continuous).saturating_mul(passes)),
        None => v,
    };
    s.energy_millijoules = s.energy_millijoules.map(|v| {
        shift(
            v,
            first.energy_millijoules.value(),
            last.energy_millijoules.value(),
            true,
        )
    });
    s.pcie_tx_bytes = s.pcie_tx_bytes.map(|v| {
        shift(
            v,
            first.pcie_tx_bytes.value(),
            last.pcie_tx_bytes.value(),
            true,
        )
    });
    s.pcie_rx_bytes = s.pcie_rx_bytes.map(|v| {
        shift(
            v,
            first.pcie_rx_bytes.value(),
            last.pcie_rx_bytes.value(),
            true,
        )
    });
    s.pcie_replays = s.pcie_replays.map(|v| {
        shift(
            v,
            first.pcie_replays.value(),
            last.pcie_replays.value(),
            false,
        )
    });
    s.ecc_corrected_errors = s.ecc_corrected_errors.map(|v| {
        shift(
            v,
            first.ecc_corrected_errors.value(),
            last.ecc_corrected_errors.value(),
            false,
        )
    });
    s.ecc_uncorrected_errors = s.ecc_uncorrected_errors.map(|v| {
        shift(
            v,
            first.ecc_uncorrected_errors.value(),
            last.ecc_uncorrected_errors.value(),
            false,
        )
    });
    if let (Reading::Value(t), Some(ft), Some(lt)) = (
        &mut s.throttle_time,
        first.throttle_time.get(),
        last.throttle_time.get(),
    ) {
        for (policy, ns) in &mut t.nanoseconds {
            *ns = shift(*ns, ft.get(*policy), lt.get(*policy), true);
        }
    }
    if let (Reading::Value(x), Some(fx), Some(lx)) = (
        &mut s.xid_errors,
        first.xid_errors.get(),
        last.xid_errors.get(),
    ) {
        let count = |list: &[(u64, u64)], code: u64| {
            Some(list.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n))
        };
        // Codes first seen later in the capture have a count in every later pass.
        for (code, _) in lx {
            if !x.iter().any(|(c, _)| c == code) {
                x.push((*code, 0));
            }
        }
        for (code, n) in x.iter_mut() {
            *n = shift(*n, count(fx, *code), count(lx, *code), false);
        }
        x.sort_unstable();
    }
    if let (Reading::Value(links), Some(fl), Some(ll)) =
        (&mut s.nvlinks, first.nvlinks.get(), last.nvlinks.get())
    {
        for l in links.iter_mut() {
            let (Some(f), Some(e)) = (
                fl.iter().find(|x| x.link == l.link),
                ll.iter().find(|x| x.link == l.link),
            ) else {
                continue;
            };
            l.tx_bytes = l.tx_bytes.map(|v| shift(v, f.tx_bytes, e.tx_bytes, true));
            l.rx_bytes = l.rx_bytes.map(|v| shift(v, f.rx_bytes, e.rx_bytes, true));
            l.crc_flit_errors = l
                .crc_flit_errors
                .map(|v| shift(v, f.crc_flit_errors, e.crc_flit_errors, false));
            l.crc_data_errors = l
                .crc_data_errors
                .map(|v| shift(v, f.crc_data_errors, e.crc_data_errors, false));
            l.replay_errors = l
                .replay_errors
                .map(|v| shift(v, f.replay_errors, e.replay_errors, false));
            l.recovery_errors = l
                .recovery_errors
                .map(|v| shift(v, f.recovery_errors, e.recovery_errors, false));
        }
    }
}

impl GpuBackend for Replay {
    fn inventory(&self) -> &[DeviceInfo] {
        &self.capture.inventory
    }

    fn sample(&mut self, _now_unix_ms: i64) -> Vec<DeviceSample> {
        let snaps = &self.capture.snapshots;
        let mut gpus = snaps[self.next].gpus.clone();
        if self.passes > 0 {
            let (first, last) = (&snaps[0].gpus, &snaps[snaps.len() - 1].gpus);
            for (k, s) in gpus.iter_mut().enumerate() {
                if let (Some(f), Some(l)) = (first.get(k), last.get(k)) {
                    advance(s, f, l, snaps.len(), self.passes);
                }
            }
        }
        self.next += 1;
        if self.next == snaps.len() {
            self.next = 0;
            self.passes += 1;
        }
        gpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::simulator::Simulator;

    #[test]
    fn a_capture_reads_back_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.gpulse");
        let mut sim = Simulator::new("gpus=2,scenario=thermal".parse().unwrap());
        let identity = HostIdentity {
            agent_id: "cap".into(),
            ..HostIdentity::default()
        };
        let mut file = std::fs::File::create(&path).unwrap();
        let n = capture(
            &mut sim,
            &identity,
            Duration::from_millis(30),
            Duration::from_millis(10),
            &mut file,
        )
        .unwrap();
        drop(file);
        let cap = Capture::read(&path).unwrap();
        assert_eq!(cap.snapshots.len(), n);
        assert_eq!(cap.inventory, sim.inventory());
        let mut replay = Replay::new(cap.clone());
        let first_pass: Vec<_> = (0..n).map(|_| replay.sample(0)).collect();
        assert_eq!(first_pass[0], cap.snapshots[0].gpus);
        let second = replay.sample(0);
        assert!(
            second[0].energy_millijoules.value() > first_pass[n - 1][0].energy_millijoules.value(),
            "energy keeps growing across loops"
        );
    }

    /// A capture holds the allocation its host knew; the committed H200 capture,
    /// written before samples carried one, still reads, and knows of no pods.
    #[test]
    fn allocations_are_captured_and_older_captures_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.gpulse");
        let mut sim = Simulator::new("gpus=2,pods=1".parse().unwrap());
        let mut file = std::fs::File::create(&path).unwrap();
        capture(
            &mut sim,
            &HostIdentity::default(),
            Duration::ZERO,
            Duration::from_millis(10),
            &mut file,
        )
        .unwrap();
        drop(file);
        let cap = Capture::read(&path).unwrap();
        let gpus = &cap.snapshots[0].gpus;
        let held = gpus[0].allocation.as_ref().unwrap();
        assert_eq!(held.holders().len(), 1);
        assert_eq!(held.holders()[0].device_uuid, cap.inventory[0].uuid);
        assert!(gpus[1].allocation.as_ref().unwrap().is_empty());
        assert_eq!(Replay::new(cap.clone()).sample(0), *gpus);

        let old = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../gpu/fixtures/captures/h200-matmul-2026-12-01.gpulse");
        let cap = Capture::read(&old).unwrap();
        assert!(
            cap.snapshots
                .iter()
                .flat_map(|s| &s.gpus)
                .all(|g| g.allocation.is_none())
        );
    }

    #[test]
    fn a_file_that_is_not_a_capture_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.gpulse");
        std::fs::write(&path, b"not protobuf at all").unwrap();
        let err = Capture::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("junk.gpulse") && err.contains("not a gpulse capture"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// A damaged capture file is refused with a reason, or plays back: never a panic,
        /// however many times it loops.
        #[test]
        fn a_damaged_capture_is_refused_or_replays(
            edits in proptest::collection::vec((proptest::prelude::any::<u32>(), 1u8..), 1..4),
            cut in proptest::option::of(proptest::prelude::any::<u32>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cap.gpulse");
            let mut sim = Simulator::new("gpus=2,scenario=nvlink-errors".parse().unwrap());
            let mut file = std::fs::File::create(&path).unwrap();
            capture(
                &mut sim,
                &HostIdentity::default(),
                Duration::from_millis(3),
                Duration::from_millis(1),
                &mut file,
            )
            .unwrap();
            drop(file);
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, mask) in edits {
                let i = at as usize % bytes.len();
                bytes[i] ^= mask;
            }
            if let Some(at) = cut {
                bytes.truncate(at as usize % bytes.len());
            }
            std::fs::write(&path, &bytes).unwrap();
            match Capture::read(&path) {
                Err(e) => proptest::prop_assert!(e.to_string().contains("cap.gpulse"), "{}", e),
                Ok(cap) => {
                    let n = cap.snapshots.len();
                    let gpus = cap.inventory.len();
                    let mut replay = Replay::new(cap);
                    for _ in 0..3 * n {
                        proptest::prop_assert_eq!(replay.sample(0).len(), gpus);
                    }
                }
            }
        }
    }
}
