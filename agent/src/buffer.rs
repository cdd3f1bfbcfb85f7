//! Batches sent but not yet acknowledged. Bounded: when full, the oldest batch is
//! dropped (the newest data is worth more to an operator) and the caller counts it.

use std::collections::VecDeque;

use gpulse_proto::v1;

/// Unacknowledged batches in sequence order.
#[derive(Debug)]
pub struct Buffer {
    batches: VecDeque<v1::Batch>,
    capacity: usize,
}

impl Buffer {
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            batches: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    /// Adds a batch (its seq must be above every buffered one). Returns the seq of the
    /// batch dropped to make room, if any.
    pub fn push(&mut self, batch: v1::Batch) -> Option<u64> {
        debug_assert!(self.batches.back().is_none_or(|b| b.seq < batch.seq));
        let dropped = if self.batches.len() >= self.capacity {
            self.batches.pop_front().map(|b| b.seq)
        } else {
            None
        };
        self.batches.push_back(batch);
        dropped
    }

    /// The first batch with a seq above `after` (all of them when `None`).
    pub fn next_after(&self, after: Option<u64>) -> Option<&v1::Batch> {
        let start = match after {
            Some(seq) => self.batches.partition_point(|b| b.seq <= seq),
            None => 0,
        };
        self.batches.get(start)
    }

    /// Forgets every batch up to and including `seq`: the collector applies in order,
    /// so an ack covers everything sent before it. Returns how many were removed.
    pub fn ack(&mut self, seq: u64) -> usize {
        let n = self.batches.partition_point(|b| b.seq <= seq);
        self.batches.drain(..n);
        n
    }

    /// Forgets one refused batch. Returns whether it was buffered.
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.batches.binary_search_by_key(&seq, |b| b.seq) {
            Ok(i) => {
                self.batches.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> v1::Batch {
        v1::Batch {
            seq,
            snapshots: vec![],
        }
    }

    #[test]
    fn full_drops_the_oldest() {
        let mut b = Buffer::new(3);
        assert_eq!(b.push(batch(1)), None);
        b.push(batch(2));
        b.push(batch(3));
        assert_eq!(b.push(batch(4)), Some(1));
        assert_eq!(b.next_after(None).map(|b| b.seq), Some(2));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn replay_walks_every_unacked_batch_in_order() {
        let mut b = Buffer::new(10);
        for s in [10, 11, 12, 13] {
            b.push(batch(s));
        }
        assert_eq!(b.ack(11), 2);
        let mut cursor = None;
        let mut seen = vec![];
        while let Some(next) = b.next_after(cursor) {
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
        assert_eq!(b.next_after(Some(1)).map(|b| b.seq), Some(3));
        assert_eq!(b.ack(100), 2);
        assert!(b.is_empty());
    }
}
