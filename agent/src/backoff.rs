//! Jittered exponential backoff between reconnection attempts, so a fleet that lost
//! its collector does not reconnect in lockstep.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max,
            ceiling: initial,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next wait: uniform in [ceiling/2, ceiling], then the ceiling doubles up to max.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let half = ceiling / 2;
        half + ceiling
            .saturating_sub(half)
            .mul_f64(self.rng.random_range(0.0..=1.0))
    }

    /// Back to the initial wait, after a connection that worked.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_max_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 7);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(500));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[11] >= Duration::from_secs(15), "{:?}", delays[11]);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn agents_with_different_seeds_spread_out() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 2);
        let da: Vec<_> = (0..5).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
    }
}
