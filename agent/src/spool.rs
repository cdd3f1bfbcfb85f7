//! The disk spool: every batch is written here before it is sent, and stays until the
//! collector acknowledges it, so an agent that restarts (or a host that reboots) while
//! the collector is away still delivers what it measured.
//!
//! Layout: a directory of segment files, `<first seq, 20 digits>.seg`, each opening with
//! [`MAGIC`] and holding records `[payload length: u32 LE][CRC-32 of payload: u32 LE]
//! [payload: a protobuf gpulse.v1.Batch]`, and a file `acked` holding the highest
//! acknowledged seq. A segment is deleted once every batch in it is acknowledged. When
//! the spool passes its size limit the oldest segment goes (its unacknowledged batches
//! are counted as dropped by the caller).
//!
//! Crash safety: a record is written and `fdatasync`ed before `append` returns. A torn
//! record at the end of the newest segment (power cut mid-write) is cut off at start-up;
//! a damaged record elsewhere ends that segment's readable part and is counted. The
//! `acked` file is replaced atomically but not synced: losing it only resends batches
//! the collector already has, which it recognises and acknowledges without applying.
//!
//! A batch the collector refused is forgotten in memory but stays in its segment until
//! the segment is acknowledged past it; after a restart it is sent and refused again.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use gpulse_proto::v1;
use prost::Message;
use tracing::warn;

/// The first bytes of every segment: the format and its version.
pub const MAGIC: &[u8; 8] = b"GPSPOOL1";
/// Bytes before each payload: length and CRC-32.
const RECORD_HEADER: u64 = 8;
/// A record longer than this is damage, not data: the collector refuses messages over
/// 16 MiB (its default max_message_bytes), so a batch never comes near it.
const MAX_RECORD_BYTES: u32 = 64 << 20;
/// The smallest size limit accepted: a few segments of a large fleet host's batches.
pub const MIN_SPOOL_BYTES: u64 = 1 << 20;
/// Segments per spool at its size limit: small enough that deleting the oldest keeps
/// most of the spool, large enough that the directory stays short.
const SEGMENTS_AT_LIMIT: u64 = 16;
/// The name of the file holding the highest acknowledged seq.
const ACKED_FILE: &str = "acked";

/// Why the spool could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool {path}: {source}; check that the directory exists, is writable by the agent and its disk is not full"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool segment {path} is not a gpulse spool file (no {MAGIC:?} header); move it out of spool_dir"
    )]
    NotASpool { path: PathBuf },
    #[error("spool segment {path}: the record at byte {offset} is damaged ({reason})")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one batch lies.
#[derive(Debug, Clone, Copy)]
struct Record {
    seq: u64,
    /// Offset of the payload in its segment.
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    /// Records not yet acknowledged or forgotten, in seq order.
    records: VecDeque<Record>,
    /// Highest seq ever written to this segment.
    last_seq: u64,
    bytes: u64,
    /// Found damaged: nothing more is appended to it.
    sealed: bool,
}

/// What opening the spool found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged batches found, to be sent.
    pub batches: usize,
    /// Damaged records skipped (with what followed them in their segment).
    pub damaged: u64,
    /// Bytes of a torn record cut off the end of the newest segment.
    pub truncated_bytes: u64,
}

/// Unacknowledged batches on disk, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    acked: Option<u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, holding at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        // Batches name processes, pods and jobs: the spool is the agent's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let acked_path = dir.join(ACKED_FILE);
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&acked_path)(e)),
        };
        let mut paths: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let first = path
                .extension()
                .filter(|e| *e == "seg")
                .and(path.file_stem())
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(first) = first {
                paths.push((first, path));
            }
        }
        paths.sort();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(MIN_SPOOL_BYTES),
            segment_bytes: (max_bytes.max(MIN_SPOOL_BYTES) / SEGMENTS_AT_LIMIT).max(64 << 10),
            segments: VecDeque::new(),
            acked,
            bytes: 0,
        };
        let mut recovery = Recovery::default();
        let newest = paths.len().saturating_sub(1);
        let mut last_seq = acked;
        for (i, (first, path)) in paths.into_iter().enumerate() {
            let mut segment = scan(&path, first, i == newest, &mut recovery)?;
            // Seqs only grow; anything else is damage (or a file from elsewhere).
            let floor = last_seq;
            segment.records.retain(|r| floor.is_none_or(|f| r.seq > f));
            last_seq = Some(segment.last_seq.max(last_seq.unwrap_or(0)));
            if segment.records.is_empty() && i != newest {
                std::fs::remove_file(&segment.path).map_err(io(&segment.path))?;
                continue;
            }
            recovery.batches += segment.records.len();
            spool.bytes += segment.bytes;
            spool.segments.push_back(segment);
        }
        Ok((spool, recovery))
    }

    /// Writes a batch (its seq must be above every spooled one) and syncs it to disk.
    /// Returns the seqs of unacknowledged batches removed to stay under the size limit.
    pub fn append(&mut self, batch: &v1::Batch) -> Result<Vec<u64>, SpoolError> {
        let payload = batch.encode_to_vec();
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_BYTES)
            .ok_or_else(|| SpoolError::Damaged {
                path: self.dir.clone(),
                offset: 0,
                reason: "batch larger than a spool record may be",
            })?;
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.sealed || s.bytes >= self.segment_bytes);
        if rotate {
            self.segments
                .push_back(create_segment(&self.dir, batch.seq)?);
            self.bytes += MAGIC.len() as u64;
        }
        let segment = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let offset = segment.bytes;
        let written = segment
            .file
            .write_all_at(&record, offset)
            .and_then(|()| segment.file.sync_data());
        if let Err(e) = written {
            // Leave no half record behind for the next append to follow.
            let _ = segment.file.set_len(offset);
            return Err(io(&segment.path)(e));
        }
        segment.records.push_back(Record {
            seq: batch.seq,
            offset: offset + RECORD_HEADER,
            len,
        });
        segment.last_seq = batch.seq;
        segment.bytes += record.len() as u64;
        self.bytes += record.len() as u64;

        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one segment");
            self.bytes -= oldest.bytes;
            dropped.extend(oldest.records.iter().map(|r| r.seq));
            std::fs::remove_file(&oldest.path).map_err(io(&oldest.path))?;
        }
        Ok(dropped)
    }

    /// The seq of the first spooled batch above `after` (the oldest when `None`).
    pub fn first_after(&self, after: Option<u64>) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| after.is_none_or(|a| s.last_seq > a))
            .flat_map(|s| s.records.iter())
            .map(|r| r.seq)
            .find(|seq| after.is_none_or(|a| *seq > a))
    }

    /// Whether `seq` is spooled and unacknowledged.
    pub fn contains(&self, seq: u64) -> bool {
        self.locate(seq).is_some()
    }

    fn locate(&self, seq: u64) -> Option<(&Segment, Record)> {
        self.segments.iter().find_map(|s| {
            let i = s.records.binary_search_by_key(&seq, |r| r.seq).ok()?;
            Some((s, s.records[i]))
        })
    }

    /// Reads a spooled batch back.
    pub fn read(&self, seq: u64) -> Result<Option<v1::Batch>, SpoolError> {
        let Some((segment, record)) = self.locate(seq) else {
            return Ok(None);
        };
        // Header and payload in one read: the CRC sits just before the payload.
        let mut bytes = vec![0; RECORD_HEADER as usize + record.len as usize];
        segment
            .file
            .read_exact_at(&mut bytes, record.offset - RECORD_HEADER)
            .map_err(io(&segment.path))?;
        let damaged = |reason| SpoolError::Damaged {
            path: segment.path.clone(),
            offset: record.offset - RECORD_HEADER,
            reason,
        };
        let (header, payload) = bytes.split_at(RECORD_HEADER as usize);
        if crc32fast::hash(payload).to_le_bytes() != header[4..8] {
            return Err(damaged("checksum mismatch"));
        }
        let batch = v1::Batch::decode(payload).map_err(|_| damaged("not a batch"))?;
        if batch.seq != seq {
            return Err(damaged("seq differs from the index"));
        }
        Ok(Some(batch))
    }

    /// Forgets every batch up to and including `seq` and deletes the segments that held
    /// only those.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.acked.is_some_and(|a| a >= seq) {
            return Ok(());
        }
        self.acked = Some(seq);
        for segment in &mut self.segments {
            let n = segment.records.partition_point(|r| r.seq <= seq);
            segment.records.drain(..n);
        }
        while let Some(oldest) = self.segments.front() {
            if oldest.last_seq > seq {
                break;
            }
            let oldest = self.segments.pop_front().expect("front exists");
            self.bytes -= oldest.bytes;
            std::fs::remove_file(&oldest.path).map_err(io(&oldest.path))?;
        }
        let path = self.dir.join(ACKED_FILE);
        let tmp = self.dir.join("acked.tmp");
        std::fs::write(&tmp, format!("{seq}\n")).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Forgets one batch the collector refused (until the next restart; see the module
    /// docs). Returns whether it was spooled.
    pub fn forget(&mut self, seq: u64) -> bool {
        for segment in &mut self.segments {
            if let Ok(i) = segment.records.binary_search_by_key(&seq, |r| r.seq) {
                segment.records.remove(i);
                return true;
            }
        }
        false
    }

    /// Unacknowledged batches spooled.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.records.is_empty())
    }

    /// Bytes the spool's segments take on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The highest seq ever spooled or acknowledged: a new agent process must number
    /// its batches above it.
    pub fn max_seq(&self) -> Option<u64> {
        self.segments.back().map(|s| s.last_seq).max(self.acked)
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, SpoolError> {
    let path = dir.join(format!("{first_seq:020}.seg"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(io(&path))?;
    // The new name must survive a power cut too, or its records would be lost with it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Segment {
        path,
        file,
        records: VecDeque::new(),
        last_seq: first_seq,
        bytes: MAGIC.len() as u64,
        sealed: false,
    })
}

/// Reads a segment's index. The newest segment's torn tail is cut off so appends
/// continue after its last whole record.
fn scan(
    path: &Path,
    first: u64,
    newest: bool,
    recovery: &mut Recovery,
) -> Result<Segment, SpoolError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io(path))?;
    if bytes.len() < MAGIC.len() && newest && MAGIC.starts_with(&bytes) {
        // Created but its header never reached the disk: start it afresh.
        file.set_len(0)
            .and_then(|()| file.write_all_at(MAGIC, 0))
            .map_err(io(path))?;
        bytes = MAGIC.to_vec();
    }
    if !bytes.starts_with(MAGIC) {
        return Err(SpoolError::NotASpool {
            path: path.to_path_buf(),
        });
    }
    let mut records = VecDeque::new();
    let mut last_seq = 0;
    let mut pos = MAGIC.len();
    let mut damage: Option<&'static str> = None;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + RECORD_HEADER as usize) else {
            damage = Some("torn header");
            break;
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let start = pos + RECORD_HEADER as usize;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            damage = Some("torn record");
            break;
        };
        if len > MAX_RECORD_BYTES || crc32fast::hash(payload) != crc {
            damage = Some("checksum mismatch");
            break;
        }
        let Ok(batch) = v1::Batch::decode(payload) else {
            damage = Some("not a batch");
            break;
        };
        if batch.seq <= last_seq && !records.is_empty() {
            damage = Some("seq out of order");
            break;
        }
        records.push_back(Record {
            seq: batch.seq,
            offset: start as u64,
            len,
        });
        last_seq = batch.seq;
        pos = start + len as usize;
    }
    let mut size = bytes.len() as u64;
    let mut sealed = false;
    if let Some(reason) = damage {
        let torn = matches!(reason, "torn header" | "torn record");
        if newest && torn {
            // A write cut short by a crash: drop the partial record so appends follow
            // the last whole one.
            recovery.truncated_bytes += size - pos as u64;
            file.set_len(pos as u64).map_err(io(path))?;
            size = pos as u64;
        } else {
            recovery.damaged += 1;
            warn!(
                path = %path.display(),
                offset = pos,
                reason,
                "spool segment damaged; batches after this point in it are skipped"
            );
            // Appending after damage would hide the new records behind it.
            sealed = true;
        }
    }
    Ok(Segment {
        path: path.to_path_buf(),
        file,
        records,
        last_seq: last_seq.max(first),
        bytes: size,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(seq: u64) -> v1::Batch {
        v1::Batch {
            seq,
            snapshots: vec![v1::Snapshot {
                timestamp_unix_ms: seq as i64,
                ..Default::default()
            }],
            agent: None,
        }
    }

    /// Every spooled seq, oldest first, read back through the file.
    fn walk(spool: &Spool) -> Vec<u64> {
        let mut seen = Vec::new();
        let mut after = None;
        while let Some(seq) = spool.first_after(after) {
            let b = spool.read(seq).unwrap().unwrap();
            assert_eq!(b.seq, seq);
            assert_eq!(b.snapshots[0].timestamp_unix_ms, seq as i64);
            seen.push(seq);
            after = Some(seq);
        }
        seen
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn batches_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(rec, Recovery::default());
        for seq in 10..20 {
            assert!(s.append(&batch(seq)).unwrap().is_empty());
        }
        s.ack(13).unwrap();
        drop(s);
        let (s, rec) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(rec.batches, 6);
        assert_eq!(walk(&s), (14..20).collect::<Vec<_>>());
        assert_eq!(s.max_seq(), Some(19));
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        // Big enough that a handful of batches fills a segment.
        let big = |seq| v1::Batch {
            seq,
            snapshots: vec![v1::Snapshot {
                timestamp_unix_ms: seq as i64,
                gpus: vec![v1::GpuSample::default(); 2000],
            }],
            agent: None,
        };
        for seq in 1..=40 {
            s.append(&big(seq)).unwrap();
        }
        let before = segments(dir.path()).len();
        assert!(before > 2, "{before} segments");
        s.ack(40).unwrap();
        assert!(s.is_empty());
        assert_eq!(segments(dir.path()).len(), 0);
        assert_eq!(s.bytes(), 0);
        // Still usable, and numbering resumes above what was acknowledged.
        s.append(&big(41)).unwrap();
        assert_eq!(s.max_seq(), Some(41));
    }

    #[test]
    fn past_its_size_the_oldest_segment_goes_and_says_which_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        let big = |seq| v1::Batch {
            seq,
            snapshots: vec![v1::Snapshot {
                gpus: vec![v1::GpuSample::default(); 4000],
                ..Default::default()
            }],
            agent: None,
        };
        let mut dropped = Vec::new();
        for seq in 1..=200 {
            dropped.extend(s.append(&big(seq)).unwrap());
        }
        assert!(s.bytes() <= MIN_SPOOL_BYTES, "{} bytes", s.bytes());
        assert!(!dropped.is_empty());
        // The oldest went, in order, and everything else is still there.
        assert_eq!(dropped, (1..=dropped.len() as u64).collect::<Vec<_>>());
        let kept: Vec<u64> = {
            let mut v = Vec::new();
            let mut after = None;
            while let Some(seq) = s.first_after(after) {
                v.push(seq);
                after = Some(seq);
            }
            v
        };
        assert_eq!(kept, (dropped.len() as u64 + 1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_write_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        for seq in 1..=5 {
            s.append(&batch(seq)).unwrap();
        }
        drop(s);
        let seg = segments(dir.path()).pop().unwrap();
        let whole = std::fs::metadata(&seg).unwrap().len();
        // A crash mid-write: a header that promises more than was written.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(rec.batches, 5);
        assert_eq!(rec.truncated_bytes, 10);
        assert_eq!(rec.damaged, 0);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        s.append(&batch(6)).unwrap();
        drop(s);
        let (s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(walk(&s), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_damaged_record_is_counted_and_what_follows_it_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        for seq in 1..=4 {
            s.append(&batch(seq)).unwrap();
        }
        let third = s.locate(3).unwrap().1;
        drop(s);
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[third.offset as usize] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let (mut s, rec) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(rec.damaged, 1);
        assert_eq!(walk(&s), [1, 2]);
        // New batches go to a new segment, not after the damage.
        s.append(&batch(5)).unwrap();
        drop(s);
        let (s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
        assert_eq!(walk(&s), [1, 2, 5]);
        assert_eq!(segments(dir.path()).len(), 2);
    }

    #[test]
    fn a_foreign_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let stray = dir.path().join("00000000000000000001.seg");
        std::fs::write(&stray, b"not a spool at all").unwrap();
        let err = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&stray.display().to_string()), "{text}");
        assert!(text.contains("move it out of spool_dir"), "{text}");
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = Spool::open(&file.join("spool"), MIN_SPOOL_BYTES).unwrap_err();
        assert!(err.to_string().contains("a-file"), "{err}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append,
        Ack(usize),
        Forget(usize),
        Reopen,
        Tear(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Append),
            2 => (0usize..8).prop_map(Op::Ack),
            1 => (0usize..8).prop_map(Op::Forget),
            1 => Just(Op::Reopen),
            1 => (1u8..40).prop_map(Op::Tear),
        ]
    }

    proptest! {
        /// Whatever happens (acks, refusals, restarts, writes torn by a crash), the spool
        /// hands back exactly the batches appended and not acknowledged, in order, each
        /// once; only a refused batch may come back, and only after a restart.
        #[test]
        fn the_spool_loses_and_repeats_nothing(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut s, _) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
            let mut next = 100u64;
            let mut expected: Vec<u64> = Vec::new();
            let mut forgotten: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Append => {
                        prop_assert!(s.append(&batch(next)).unwrap().is_empty());
                        expected.push(next);
                        next += 1;
                    }
                    Op::Ack(i) => {
                        if let Some(&seq) = expected.get(i) {
                            s.ack(seq).unwrap();
                            expected.retain(|e| *e > seq);
                            forgotten.retain(|e| *e > seq);
                        }
                    }
                    Op::Forget(i) => {
                        if let Some(&seq) = expected.get(i) {
                            prop_assert!(s.forget(seq));
                            expected.retain(|e| *e != seq);
                            forgotten.push(seq);
                        }
                    }
                    Op::Reopen | Op::Tear(_) => {
                        drop(s);
                        if let Op::Tear(n) = op
                            && let Some(seg) = segments(dir.path()).pop()
                        {
                            let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
                            f.write_all(&vec![0x5a; usize::from(n)]).unwrap();
                        }
                        let (reopened, rec) = Spool::open(dir.path(), MIN_SPOOL_BYTES).unwrap();
                        prop_assert_eq!(rec.damaged, 0);
                        s = reopened;
                        // Refused batches not yet acknowledged past come back.
                        expected.append(&mut forgotten);
                        expected.sort_unstable();
                    }
                }
                prop_assert_eq!(walk(&s), expected.clone());
                prop_assert_eq!(s.len(), expected.len());
            }
            if let Some(max) = s.max_seq() {
                prop_assert!(max < next);
            }
        }
    }
}
