//! One endpoint's queue of samples waiting to be sent: bounded in samples; when a
//! new snapshot does not fit, the oldest samples go first and are counted.

use std::collections::VecDeque;
use std::sync::Arc;

use super::wire::{Pending, Snapshot};

/// Samples in time order, oldest first. Snapshots are shared between endpoints'
/// queues; each queue keeps its own place in the oldest.
#[derive(Debug)]
pub struct Queue {
    snapshots: VecDeque<Arc<Snapshot>>,
    /// Samples of the front snapshot already taken or dropped.
    offset: usize,
    len: usize,
    capacity: usize,
}

impl Queue {
    /// A queue of at most `capacity` samples (at least 1).
    pub fn new(capacity: usize) -> Queue {
        Queue {
            snapshots: VecDeque::new(),
            offset: 0,
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends a snapshot; returns how many of the oldest samples were dropped to
    /// make room.
    pub fn push(&mut self, snapshot: Arc<Snapshot>) -> usize {
        if snapshot.samples.is_empty() {
            return 0;
        }
        self.len += snapshot.samples.len();
        self.snapshots.push_back(snapshot);
        self.drop_oldest(self.len.saturating_sub(self.capacity))
    }

    /// Drops up to `n` of the oldest samples; returns how many went.
    fn drop_oldest(&mut self, mut n: usize) -> usize {
        let mut dropped = 0;
        while n > 0 {
            let Some(front) = self.snapshots.front() else {
                break;
            };
            let left = front.samples.len() - self.offset;
            if left <= n {
                self.snapshots.pop_front();
                self.offset = 0;
                n -= left;
                dropped += left;
            } else {
                self.offset += n;
                dropped += n;
                n = 0;
            }
        }
        self.len -= dropped;
        dropped
    }

    /// Removes and returns up to `max` of the oldest samples, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<Pending> {
        self.take_from(max, false)
    }

    /// Like [`Queue::take`], but never past the oldest snapshot: every sample returned
    /// has the same timestamp, and no series appears twice. Requests built from such
    /// takes can be in flight together without putting any series out of time order.
    pub fn take_one_snapshot(&mut self, max: usize) -> Vec<Pending> {
        self.take_from(max, true)
    }

    /// Whether the oldest sample waiting has timestamp `t`.
    pub fn front_is_at(&self, t: i64) -> bool {
        self.snapshots.front().is_some_and(|s| s.timestamp_ms == t)
    }

    fn take_from(&mut self, max: usize, one_snapshot: bool) -> Vec<Pending> {
        let mut out = Vec::with_capacity(max.min(self.len));
        while out.len() < max {
            if one_snapshot
                && out
                    .last()
                    .is_some_and(|p: &Pending| !self.front_is_at(p.timestamp_ms))
            {
                break;
            }
            let Some(front) = self.snapshots.front() else {
                break;
            };
            let end = front.samples.len().min(self.offset + (max - out.len()));
            out.extend(
                front.samples[self.offset..end]
                    .iter()
                    .map(|(series, value)| Pending {
                        series: series.clone(),
                        value: *value,
                        timestamp_ms: front.timestamp_ms,
                    }),
            );
            if end == front.samples.len() {
                self.snapshots.pop_front();
                self.offset = 0;
            } else {
                self.offset = end;
            }
        }
        self.len -= out.len();
        out
    }

    /// Empties the queue; returns how many samples it held.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        self.snapshots.clear();
        self.offset = 0;
        self.len = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::wire::SnapshotBuilder;
    use gpulse_exposition::SeriesSink;
    use gpulse_exposition::names;
    use proptest::prelude::*;

    /// A snapshot of `n` series (host "0".."n"), each valued at its time.
    fn snapshot(b: &mut SnapshotBuilder, t: i64, n: usize) -> Arc<Snapshot> {
        for i in 0..n {
            let host = i.to_string();
            b.series(&names::AGENT_UP, &[("host", &host)], &[], t as f64);
        }
        Arc::new(b.finish(t))
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_how_many() {
        let mut b = SnapshotBuilder::new();
        let mut q = Queue::new(5);
        assert_eq!(q.push(snapshot(&mut b, 1, 3)), 0);
        assert_eq!(q.push(snapshot(&mut b, 2, 3)), 1);
        assert_eq!(q.len(), 5);
        let got = q.take(10);
        let times: Vec<i64> = got.iter().map(|p| p.timestamp_ms).collect();
        assert_eq!(times, [1, 1, 2, 2, 2]);
        assert!(q.is_empty());
        // A snapshot larger than the queue keeps its newest samples.
        assert_eq!(q.push(snapshot(&mut b, 3, 8)), 3);
        assert_eq!(q.take(1)[0].series[1].value, "3");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Take(usize),
        TakeOneSnapshot(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..40).prop_map(Op::Push),
            (0usize..30).prop_map(Op::Take),
            (0usize..30).prop_map(Op::TakeOneSnapshot)
        ]
    }

    proptest! {
        /// The queue behaves as a list of timestamps cut from the front: every sample
        /// pushed is taken, dropped or still queued; it never holds more than its
        /// capacity; what is dropped is the oldest; each series comes out in time order.
        #[test]
        fn samples_are_accounted_for_and_stay_in_time_order(
            capacity in 1usize..64,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let mut b = SnapshotBuilder::new();
            let mut q = Queue::new(capacity);
            let mut model: VecDeque<i64> = VecDeque::new();
            let (mut pushed, mut dropped, mut taken) = (0usize, 0usize, 0usize);
            let mut last_taken: std::collections::HashMap<String, i64> = Default::default();
            for (t, op) in ops.into_iter().enumerate() {
                let t = t as i64;
                match op {
                    Op::Push(n) => {
                        pushed += n;
                        model.extend(std::iter::repeat_n(t, n));
                        let d = q.push(snapshot(&mut b, t, n));
                        prop_assert_eq!(d, model.len().saturating_sub(capacity));
                        model.drain(..d);
                        dropped += d;
                    }
                    Op::Take(n) | Op::TakeOneSnapshot(n) => {
                        let one = matches!(op, Op::TakeOneSnapshot(_));
                        let got = if one { q.take_one_snapshot(n) } else { q.take(n) };
                        // One snapshot: no further than the samples sharing the oldest time.
                        let limit = if one {
                            model.iter().take_while(|&&m| Some(&m) == model.front()).count()
                        } else {
                            model.len()
                        };
                        let want: Vec<i64> = model.drain(..n.min(limit)).collect();
                        let times: Vec<i64> = got.iter().map(|p| p.timestamp_ms).collect();
                        prop_assert_eq!(times, want);
                        for p in &got {
                            let last = last_taken.insert(p.series[1].value.clone(), p.timestamp_ms);
                            prop_assert!(last.is_none_or(|l| l < p.timestamp_ms));
                        }
                        taken += got.len();
                    }
                }
                prop_assert!(q.len() <= capacity);
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(pushed, taken + dropped + q.len());
            }
            let left = q.clear();
            prop_assert_eq!(pushed, taken + dropped + left);
        }
    }
}
