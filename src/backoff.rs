//! The one backoff of colony: how long to wait before trying again. A [`Backoff`]
//! starts at `min`, grows by `factor` after every wait up to `max`, may spread
//! each wait with jitter, and starts from `min` again when told the last attempt
//! went well ([`reset`](Backoff::reset)) or lasted long enough
//! ([`ran_for`](Backoff::ran_for)).
//!
//! Its users: the bridge redialling a peer (100 ms to 5 s, doubling, jittered,
//! afresh after a link that lasted 5 s), a job consumer retrying a take (50 ms to
//! 2 s, doubling, afresh after a take that worked) and the spawner restarting a
//! child (100 ms to 15 s, × 1.5, afresh after 30 s up).

use std::time::Duration;

/// Waits that grow from `min` to `max` by `factor`, each with optional jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    jitter: bool,
    reset_after: Option<Duration>,
    current: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max`, doubling, without jitter, reset only by
    /// [`reset`](Self::reset).
    pub(crate) const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            factor: 2.0,
            jitter: false,
            reset_after: None,
            current: min,
        }
    }

    /// Grows each wait by `factor` (at least 1) instead of doubling it.
    pub(crate) const fn factor(mut self, factor: f64) -> Backoff {
        self.factor = factor;
        self
    }

    /// Scales each wait by a random factor in [0.5, 1.5), so that many waiting
    /// for the same thing spread out.
    pub(crate) const fn jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// Starts again from `min` after an attempt that lasted at least `after`
    /// (see [`ran_for`](Self::ran_for)).
    pub(crate) const fn reset_after(mut self, after: Duration) -> Backoff {
        self.reset_after = Some(after);
        self
    }

    /// The next wait, jittered if asked; the one after it is `factor` times
    /// longer, at most `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = base.mul_f64(self.factor.max(1.0)).min(self.max);
        if self.jitter {
            jitter(base)
        } else {
            base
        }
    }

    /// Starts again from `min`: the last attempt worked.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    /// Tells how long the last attempt lasted: one that lasted `reset_after` or
    /// longer starts the waits again from `min`.
    pub(crate) fn ran_for(&mut self, lasted: Duration) {
        if self.reset_after.is_some_and(|after| lasted >= after) {
            self.reset();
        }
    }
}

/// `base` scaled by a random factor in [0.5, 1.5).
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let factor = match getrandom::fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 256.0,
        Err(_) => 1.0,
    };
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_max_and_resets_to_min() {
        let mut b = Backoff::new(ms(50), ms(2000));
        let waits: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(50));
    }

    #[test]
    fn grows_by_its_factor() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(15)).factor(1.5);
        let waits: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        let micros = [100_000, 150_000, 225_000, 337_500];
        assert_eq!(waits, micros.map(Duration::from_micros).to_vec());
        for _ in 0..30 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(15));
    }

    #[test]
    fn a_long_attempt_resets_a_short_one_does_not() {
        let mut b = Backoff::new(ms(100), ms(5000)).reset_after(ms(5000));
        b.next_delay();
        b.next_delay();
        b.ran_for(ms(4999));
        assert_eq!(b.next_delay(), ms(400));
        b.ran_for(ms(5000));
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn without_reset_after_no_attempt_resets() {
        let mut b = Backoff::new(ms(100), ms(5000));
        b.next_delay();
        b.ran_for(Duration::from_secs(3600));
        assert_eq!(b.next_delay(), ms(200));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let mut b = Backoff::new(ms(1000), ms(1000)).jitter();
        for _ in 0..200 {
            let wait = b.next_delay();
            assert!(wait >= ms(500) && wait < ms(1500), "{wait:?}");
        }
    }
}
