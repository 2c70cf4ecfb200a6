//! A token bucket: how fast one client may act, with a burst allowance.
//!
//! The caller passes the time in, so the bucket can be tested without
//! sleeping and a caller that already read the clock does not read it again.

use std::time::{Duration, Instant};

/// `rate` tokens a second, at most `burst` saved up; it starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket earning `rate` tokens a second and holding at most
    /// `burst`. With a `burst` under one it never has a token to give.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        self.tokens = self.available(now);
        // A clock given out of order must not move the refill back, or the
        // time between would be earned twice.
        self.refilled = self.refilled.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token at `now` whether or not there is one: for what was
    /// done elsewhere and counts all the same (another node's event of the
    /// same sender). The bucket owes at most one burst.
    pub fn charge(&mut self, now: Instant) {
        self.tokens = (self.available(now) - 1.0).max(-self.burst);
        self.refilled = self.refilled.max(now);
    }

    /// Gives back a token taken for what then did not happen.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Whether there is a token at `now`, without taking it.
    pub fn ready(&self, now: Instant) -> bool {
        self.available(now) >= 1.0
    }

    /// How long after `now` a token will be there; zero if one is.
    /// [`Duration::MAX`] if one never will be (no rate, or a burst under one).
    pub fn retry_after(&self, now: Instant) -> Duration {
        let deficit = 1.0 - self.available(now);
        if deficit <= 0.0 {
            return Duration::ZERO;
        }
        if self.burst < 1.0 {
            return Duration::MAX;
        }
        // Rounded up, and one nanosecond more, so that a `take` at exactly
        // `now + retry_after` is not refused by a rounding error.
        let nanos = (deficit / self.rate * 1e9).ceil() + 1.0;
        if nanos.is_finite() && nanos < u64::MAX as f64 {
            Duration::from_nanos(nanos as u64)
        } else {
            Duration::MAX
        }
    }

    /// Whether the bucket is full at `now`: it is then no different from a
    /// new one, and may be forgotten.
    pub fn full(&self, now: Instant) -> bool {
        self.available(now) >= self.burst
    }

    /// The tokens there would be at `now`. A `now` before the last refill
    /// earns nothing rather than panicking: `Instant`s from different
    /// threads or callers need not arrive in order.
    fn available(&self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate;
        (self.tokens + earned).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_counts_without_a_token_and_owes_at_most_a_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 2.0, start);
        bucket.charge(start);
        bucket.charge(start);
        assert!(!bucket.take(start), "both tokens charged");
        for _ in 0..10 {
            bucket.charge(start);
        }
        // Owing two, the bucket has a token again after three seconds.
        assert!(!bucket.take(start + Duration::from_millis(2900)));
        assert!(bucket.take(start + Duration::from_millis(3100)));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Takes tokens at `now` until refused; how many it got.
    fn drain(bucket: &mut TokenBucket, now: Instant) -> usize {
        let mut taken = 0;
        while bucket.take(now) {
            taken += 1;
            assert!(taken <= 1_000_000, "the bucket never ran dry");
        }
        taken
    }

    #[test]
    fn is_full_again_once_refilled() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2.0, t0);
        assert!(bucket.full(t0));
        assert!(bucket.take(t0));
        assert!(!bucket.full(t0));
        assert!(bucket.full(t0 + ms(100)));
    }

    #[test]
    fn starts_with_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert_eq!(drain(&mut bucket, t0), 5);
    }

    #[test]
    fn ready_takes_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 1.0, t0);
        assert!(bucket.ready(t0));
        assert!(bucket.ready(t0));
        assert!(bucket.take(t0));
        assert!(!bucket.ready(t0));
        assert!(bucket.ready(t0 + ms(101)));
    }

    #[test]
    fn refuses_once_empty() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, t0);
        drain(&mut bucket, t0);
        assert!(!bucket.take(t0));
        assert!(!bucket.take(t0));
    }

    #[test]
    fn refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        drain(&mut bucket, t0);
        // 10 a second: one every 100 ms.
        assert!(!bucket.take(t0 + ms(99)));
        assert!(bucket.take(t0 + ms(101)));
        assert!(!bucket.take(t0 + ms(101)));
        assert_eq!(drain(&mut bucket, t0 + ms(450)), 3);
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        drain(&mut bucket, t0);
        assert_eq!(drain(&mut bucket, t0 + Duration::from_secs(3600)), 5);
        let mut fresh = TokenBucket::new(10.0, 5.0, t0);
        assert_eq!(drain(&mut fresh, t0 + Duration::from_secs(3600)), 5);
    }

    #[test]
    fn retry_after_says_when_a_token_is_there() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(4.0, 2.0, t0);
        assert_eq!(bucket.retry_after(t0), Duration::ZERO);
        drain(&mut bucket, t0);
        let wait = bucket.retry_after(t0);
        assert!(wait >= ms(250) && wait < ms(251), "{wait:?}");
        assert!(bucket.retry_after(t0 + ms(100)) < wait);
        assert!(!bucket.take(t0 + wait - Duration::from_micros(1)));
        assert!(bucket.take(t0 + wait));
    }

    #[test]
    fn retry_after_holds_for_rates_that_do_not_divide_evenly() {
        let t0 = Instant::now();
        for rate in [3.0, 7.0, 0.3, 200.0, 1e6] {
            let mut bucket = TokenBucket::new(rate, 1.0, t0);
            let mut now = t0;
            for _ in 0..100 {
                drain(&mut bucket, now);
                now += bucket.retry_after(now);
                assert!(bucket.take(now), "rate {rate}");
            }
        }
    }

    #[test]
    fn retry_after_is_max_when_no_token_can_come() {
        let t0 = Instant::now();
        let mut stalled = TokenBucket::new(0.0, 1.0, t0);
        drain(&mut stalled, t0);
        assert_eq!(stalled.retry_after(t0), Duration::MAX);
        let small = TokenBucket::new(10.0, 0.5, t0);
        assert_eq!(small.retry_after(t0), Duration::MAX);
    }

    #[test]
    fn a_clock_out_of_order_adds_nothing() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(10.0, 2.0, later);
        drain(&mut bucket, later);
        assert!(!bucket.take(t0));
        assert!(bucket.retry_after(t0) > Duration::ZERO);
        // The refill stays at `later`: the next token is 100 ms after it.
        assert!(!bucket.take(later + ms(99)));
        assert!(bucket.take(later + ms(101)));
    }
}
