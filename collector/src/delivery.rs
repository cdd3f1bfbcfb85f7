//! Which batches are new: the one rule that both the fleet (what /metrics shows) and the
//! ledger (what reports count) follow, and the sequence numbers an agent can send at all.
//!
//! An agent numbers its batches from the moment its process started, in microseconds
//! since the Unix epoch, one up per batch (`first_seq` in agent/src/sampler.rs; a
//! restarted agent with a spool continues above its spooled batches). The collector
//! keeps, per agent, the host boot its numbers belong to and the highest one applied: a
//! batch is new when its boot differs (a reboot starts a new sequence) or its seq is
//! above that mark; anything else is a duplicate, whatever it holds, and is acknowledged
//! without being applied anywhere.

use std::time::Duration;

use crate::validate::{RejectKind, Rejection};

/// Microseconds in a millisecond: agents number batches in microseconds.
const MICROS_PER_MILLI: u64 = 1_000;

/// Where an agent's delivery stands: the host boot its sequence numbers belong to and
/// the highest seq applied in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqMark {
    pub boot_id: String,
    pub seq: u64,
}

/// Whether a batch is to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: apply it, and move the mark to it.
    New,
    /// At or below the mark of the same boot: acknowledge it, apply nothing.
    Duplicate,
}

/// The rule: new when no mark is kept, the boot differs, or the seq is above the mark.
pub fn verdict(mark: Option<&SeqMark>, boot_id: &str, seq: u64) -> Verdict {
    match mark {
        Some(m) if m.boot_id == boot_id && seq <= m.seq => Verdict::Duplicate,
        _ => Verdict::New,
    }
}

/// The highest seq the start-time scheme can produce by `now_unix_ms` on a host whose
/// clock is at most `max_clock_skew` ahead: a process started no later than now, and
/// one batch per at least 100 ms (the agent's shortest interval) never catches up with
/// the microseconds that pass meanwhile.
pub fn max_seq(now_unix_ms: i64, max_clock_skew: Duration) -> u64 {
    let now_ms = u64::try_from(now_unix_ms).unwrap_or(0);
    let skew_ms = u64::try_from(max_clock_skew.as_millis()).unwrap_or(u64::MAX);
    now_ms
        .saturating_add(skew_ms)
        .saturating_mul(MICROS_PER_MILLI)
}

/// Refuses a seq no agent can have sent yet. Accepting one would make it the mark, and
/// every later batch of that boot a duplicate: the agent silenced until its clock
/// reached the number.
pub fn check_seq(seq: u64, now_unix_ms: i64, max_clock_skew: Duration) -> Result<(), Rejection> {
    let max = max_seq(now_unix_ms, max_clock_skew);
    if seq > max {
        return Err(Rejection::new(
            RejectKind::OutOfRange,
            format!(
                "batch seq {seq} is ahead of any the agent can have numbered yet (at most {max}: \
                 microseconds since the epoch at the collector's clock plus limits.max_clock_skew); \
                 number batches from the agent's start time, and check NTP on its host"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SKEW: Duration = Duration::from_secs(300);
    /// The agent's shortest sampling interval (agent/src/config.rs MIN_INTERVAL).
    const MIN_INTERVAL_MS: u64 = 100;

    fn mark(boot: &str, seq: u64) -> SeqMark {
        SeqMark {
            boot_id: boot.into(),
            seq,
        }
    }

    #[test]
    fn the_first_batch_and_a_new_boot_are_new_and_a_repeat_is_not() {
        assert_eq!(verdict(None, "b1", 7), Verdict::New);
        assert_eq!(verdict(Some(&mark("b1", 7)), "b1", 8), Verdict::New);
        assert_eq!(verdict(Some(&mark("b1", 7)), "b1", 7), Verdict::Duplicate);
        assert_eq!(verdict(Some(&mark("b1", 7)), "b1", 3), Verdict::Duplicate);
        assert_eq!(verdict(Some(&mark("b1", 7)), "b2", 3), Verdict::New);
    }

    proptest! {
        /// Every seq the agent's scheme can produce passes, on a host whose clock is
        /// behind, on time or ahead by up to the skew, however long the agent has run.
        #[test]
        fn every_seq_the_start_time_scheme_produces_is_accepted(
            now_ms in 1_600_000_000_000i64..4_000_000_000_000,
            ran_ms in 0u64..(10 * 365 * 86_400_000),
            interval_ms in MIN_INTERVAL_MS..600_000,
            ahead_ms in -3_600_000i64..=300_000,
        ) {
            let agent_now_ms = (now_ms + ahead_ms) as u64;
            let started_ms = agent_now_ms.saturating_sub(ran_ms);
            let batches = ran_ms / interval_ms;
            let seq = started_ms * 1000 + batches;
            prop_assert!(check_seq(seq, now_ms, SKEW).is_ok(), "{seq}");
        }

        /// Anything beyond is refused with its reason, naming the seq and the limit.
        #[test]
        fn a_seq_beyond_the_scheme_is_refused_naming_it(
            now_ms in 0i64..4_000_000_000_000,
            beyond in 1u64..=u64::MAX / 2,
        ) {
            let max = max_seq(now_ms, SKEW);
            let seq = max.saturating_add(beyond);
            prop_assume!(seq > max);
            let r = check_seq(seq, now_ms, SKEW).unwrap_err();
            prop_assert_eq!(r.kind, RejectKind::OutOfRange);
            prop_assert!(r.message.contains(&seq.to_string()), "{}", r.message);
            prop_assert!(r.message.contains("max_clock_skew"), "{}", r.message);
        }

        /// Delivered in any order, with repeats and reboots: within a boot the batches
        /// applied have rising seqs (none twice), and every batch above all applied so
        /// far is applied.
        #[test]
        fn within_a_boot_each_seq_is_applied_at_most_once_and_none_newer_is_lost(
            deliveries in prop::collection::vec((prop::bool::weighted(0.05), 0u64..50), 1..200),
        ) {
            let (mut boot, mut mark) = (0u32, None::<SeqMark>);
            let mut applied_this_boot: Vec<u64> = Vec::new();
            for (reboot, seq) in deliveries {
                if reboot {
                    boot += 1;
                    applied_this_boot.clear();
                }
                let boot_id = format!("b{boot}");
                let above_all = applied_this_boot.iter().all(|a| seq > *a);
                let v = verdict(mark.as_ref(), &boot_id, seq);
                prop_assert_eq!(v == Verdict::New, above_all, "seq {} after {:?}", seq, applied_this_boot);
                if v == Verdict::New {
                    applied_this_boot.push(seq);
                    mark = Some(SeqMark { boot_id, seq });
                }
            }
        }
    }
}
