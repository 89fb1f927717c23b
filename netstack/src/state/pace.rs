//! [`Pace`]: a token bucket that holds the sandbox's network to a rate, one per direction.
//!
//! The stack paces whole frames: guest frames are left unread in the frame socket while the
//! upward bucket is empty (the virtio-net device then stops taking the guest's transmit
//! queue, and the guest's TCP slows), and smoltcp gets no transmit token while the downward
//! one is (its sockets keep the data and their windows close). Nothing is dropped for pace.

use std::time::{Duration, Instant};

/// What a bucket holds at most: a tenth of a second at the rate, and never less than what
/// one large frame needs, so that pacing stays smooth at low rates and never stalls.
fn burst(rate: u64) -> i64 {
    i64::try_from((rate / 10).max(64 * 1024)).unwrap_or(i64::MAX)
}

/// A byte rate, as a bucket that may go into debt by one frame.
#[derive(Debug)]
pub(crate) struct Pace {
    rate: u64,
    tokens: i64,
    last: Instant,
}

impl Pace {
    /// A full bucket for `rate` bytes per second (`rate` > 0).
    pub(crate) fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            tokens: burst(rate),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let earned = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        if earned > 0 {
            let earned = i64::try_from(earned).unwrap_or(i64::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(burst(self.rate));
            // Only the time that earned whole bytes is used up.
            let used = earned as u128 * 1_000_000_000 / u128::from(self.rate);
            self.last += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        }
    }

    /// How long until a frame may go at `now`; `None` when one may go now.
    pub(crate) fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        if self.tokens > 0 {
            return None;
        }
        let missing = u128::try_from(1 - self.tokens).unwrap_or(1);
        let nanos = missing * 1_000_000_000 / u128::from(self.rate) + 1;
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// Counts `bytes` that went.
    pub(crate) fn spend(&mut self, bytes: usize) {
        self.tokens = self
            .tokens
            .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_moves_the_rate_after_the_burst() {
        let rate = 1_000_000;
        let mut pace = Pace::new(rate);
        let start = pace.last;
        let mut now = start;
        let mut sent = 0u64;
        // Send 1500-byte frames whenever allowed, stepping the clock as asked.
        while now < start + Duration::from_secs(2) {
            match pace.wait(now) {
                None => {
                    pace.spend(1500);
                    sent += 1500;
                }
                Some(wait) => now += wait,
            }
        }
        let expected = 2 * rate + burst(rate) as u64;
        assert!(
            sent.abs_diff(expected) <= 3000,
            "sent {sent}, expected about {expected}"
        );
    }

    #[test]
    fn an_idle_bucket_fills_only_to_its_burst() {
        let mut pace = Pace::new(10_000);
        let later = pace.last + Duration::from_secs(3600);
        assert_eq!(pace.wait(later), None);
        pace.spend(burst(10_000) as usize);
        assert!(pace.wait(later).is_some());
    }
}
