//! Batches sent but not yet acknowledged. Bounded: when full, the oldest batch is
//! dropped (the newest data is worth more to an operator) and the caller counts it.
//!
//! With a disk spool ([`crate::spool`]), every batch is also written to disk first.
//! Memory then keeps only the newest `capacity` batches as a cache; older ones are read
//! back from the spool when they are sent, and a batch is dropped only when the spool
//! passes its size limit (or could not be written and memory ran out).

use std::collections::VecDeque;

use gpulse_proto::v1;

use crate::spool::{Spool, SpoolError};

/// What adding a batch cost.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Unacknowledged batches dropped to make room, oldest first.
    pub dropped: Vec<u64>,
    /// The spool could not take the batch; it is kept in memory only.
    pub spool_error: Option<SpoolError>,
}

/// Unacknowledged batches in sequence order.
#[derive(Debug)]
pub struct Buffer {
    batches: VecDeque<v1::Batch>,
    capacity: usize,
    spool: Option<Spool>,
}

impl Buffer {
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            batches: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            spool: None,
        }
    }

    /// A buffer backed by a disk spool; what the spool already holds is sent first.
    pub fn with_spool(capacity: usize, spool: Spool) -> Buffer {
        Buffer {
            spool: Some(spool),
            ..Buffer::new(capacity)
        }
    }

    /// Adds a batch (its seq must be above every buffered one).
    pub fn push(&mut self, batch: v1::Batch) -> Pushed {
        debug_assert!(self.batches.back().is_none_or(|b| b.seq < batch.seq));
        let mut pushed = Pushed::default();
        if let Some(spool) = &mut self.spool {
            match spool.append(&batch) {
                // Gone from disk, but a batch still in the memory cache is not lost.
                Ok(dropped) => pushed.dropped = dropped,
                Err(e) => pushed.spool_error = Some(e),
            }
            let memory = &self.batches;
            pushed
                .dropped
                .retain(|seq| memory.binary_search_by_key(seq, |b| b.seq).is_err());
        }
        if self.batches.len() >= self.capacity
            && let Some(evicted) = self.batches.pop_front()
        {
            // A batch still on disk only left the memory cache.
            let spooled = self.spool.as_ref().is_some_and(|s| s.contains(evicted.seq));
            if !spooled {
                pushed.dropped.push(evicted.seq);
            }
        }
        self.batches.push_back(batch);
        pushed.dropped.sort_unstable();
        pushed
    }

    /// The seq of the first batch above `after` (the oldest when `None`).
    pub fn first_after(&self, after: Option<u64>) -> Option<u64> {
        let start = match after {
            Some(seq) => self.batches.partition_point(|b| b.seq <= seq),
            None => 0,
        };
        let in_memory = self.batches.get(start).map(|b| b.seq);
        let on_disk = self.spool.as_ref().and_then(|s| s.first_after(after));
        match (in_memory, on_disk) {
            (Some(m), Some(d)) => Some(m.min(d)),
            (m, d) => m.or(d),
        }
    }

    /// The first batch with a seq above `after` (the oldest when `None`), from memory
    /// or read back from the spool.
    pub fn next_after(&self, after: Option<u64>) -> Result<Option<v1::Batch>, SpoolError> {
        let Some(seq) = self.first_after(after) else {
            return Ok(None);
        };
        if let Ok(i) = self.batches.binary_search_by_key(&seq, |b| b.seq) {
            return Ok(Some(self.batches[i].clone()));
        }
        match &self.spool {
            Some(spool) => spool.read(seq),
            None => Ok(None),
        }
    }

    /// Forgets every batch up to and including `seq`: the collector applies in order,
    /// so an ack covers everything sent before it. Returns how many were removed.
    pub fn ack(&mut self, seq: u64) -> Result<usize, SpoolError> {
        let before = self.len();
        let n = self.batches.partition_point(|b| b.seq <= seq);
        self.batches.drain(..n);
        let spooled = match &mut self.spool {
            Some(spool) => spool.ack(seq),
            None => Ok(()),
        };
        let removed = before - self.len();
        spooled.map(|()| removed)
    }

    /// Forgets one batch (refused by the collector, or unreadable from the spool).
    /// Returns whether it was buffered.
    pub fn remove(&mut self, seq: u64) -> bool {
        let in_memory = match self.batches.binary_search_by_key(&seq, |b| b.seq) {
            Ok(i) => self.batches.remove(i).is_some(),
            Err(_) => false,
        };
        let on_disk = self.spool.as_mut().is_some_and(|s| s.forget(seq));
        in_memory || on_disk
    }

    /// Unacknowledged batches, in memory or on disk.
    pub fn len(&self) -> usize {
        match &self.spool {
            None => self.batches.len(),
            Some(spool) => {
                spool.len()
                    + self
                        .batches
                        .iter()
                        .filter(|b| !spool.contains(b.seq))
                        .count()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the spool takes on disk (0 without one).
    pub fn spool_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> v1::Batch {
        v1::Batch {
            seq,
            snapshots: vec![],
            agent: None,
        }
    }

    #[test]
    fn full_drops_the_oldest() {
        let mut b = Buffer::new(3);
        assert!(b.push(batch(1)).dropped.is_empty());
        b.push(batch(2));
        b.push(batch(3));
        assert_eq!(b.push(batch(4)).dropped, [1]);
        assert_eq!(b.first_after(None), Some(2));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn replay_walks_every_unacked_batch_in_order() {
        let mut b = Buffer::new(10);
        for s in [10, 11, 12, 13] {
            b.push(batch(s));
        }
        assert_eq!(b.ack(11).unwrap(), 2);
        let mut cursor = None;
        let mut seen = vec![];
        while let Some(next) = b.next_after(cursor).unwrap() {
            seen.push(next.seq);
            cursor = Some(next.seq);
        }
        assert_eq!(seen, [12, 13]);
    }

    #[test]
    fn a_refused_batch_is_removed_alone() {
        let mut b = Buffer::new(10);
        for s in 1..=3 {
            b.push(batch(s));
        }
        assert!(b.remove(2));
        assert!(!b.remove(2));
        assert_eq!(b.first_after(Some(1)), Some(3));
        assert_eq!(b.ack(100).unwrap(), 2);
        assert!(b.is_empty());
    }

    fn walk(b: &Buffer) -> Vec<u64> {
        let mut seen = vec![];
        let mut cursor = None;
        while let Some(next) = b.next_after(cursor).unwrap() {
            seen.push(next.seq);
            cursor = Some(next.seq);
        }
        seen
    }

    #[test]
    fn with_a_spool_memory_is_only_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), crate::spool::MIN_SPOOL_BYTES).unwrap();
        let mut b = Buffer::with_spool(2, spool);
        for s in 1..=6 {
            let pushed = b.push(batch(s));
            assert!(pushed.dropped.is_empty(), "{s}: {:?}", pushed.dropped);
            assert!(pushed.spool_error.is_none());
        }
        // Two in memory, all six on disk: nothing was lost.
        assert_eq!(b.len(), 6);
        assert_eq!(walk(&b), [1, 2, 3, 4, 5, 6]);
        assert_eq!(b.ack(3).unwrap(), 3);
        assert!(b.remove(5));
        assert_eq!(walk(&b), [4, 6]);
        assert!(b.spool_bytes() > 0);
    }

    #[test]
    fn a_restarted_buffer_sends_what_the_spool_kept_first() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Spool::open(dir.path(), crate::spool::MIN_SPOOL_BYTES)
                .unwrap()
                .0
        };
        let mut b = Buffer::with_spool(10, open());
        for s in 1..=4 {
            b.push(batch(s));
        }
        b.ack(1).unwrap();
        drop(b);
        let mut b = Buffer::with_spool(10, open());
        assert_eq!(b.len(), 3);
        b.push(batch(100));
        assert_eq!(walk(&b), [2, 3, 4, 100]);
    }
}
