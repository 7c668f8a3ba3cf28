//! Deadlines on the caller's clock: SA expiry and the small helpers the endpoint uses
//! to compute its next wake-up. Nothing here reads a clock.

use crate::config::Lifetime;
use rand::Rng;
use std::time::{Duration, Instant};

/// When an SA is rekeyed (soft) and deleted (hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Expiry {
    /// Rekey at this instant; cleared once the rekey is queued.
    pub soft: Option<Instant>,
    /// Delete at this instant.
    pub hard: Option<Instant>,
}

impl Expiry {
    /// Deadlines for an SA created `now` with `lifetime` (none without one). The soft
    /// deadline is `hard - margin - random(0..=jitter)`, never before `now`.
    pub fn schedule<R: Rng>(lifetime: Option<&Lifetime>, now: Instant, rng: &mut R) -> Self {
        let Some(l) = lifetime else {
            return Expiry::default();
        };
        let jitter_ns = u64::try_from(l.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(if jitter_ns == 0 {
            0
        } else {
            rng.gen_range(0..=jitter_ns)
        });
        let soft_after = l.hard.saturating_sub(l.margin).saturating_sub(jitter);
        Expiry {
            soft: now.checked_add(soft_after),
            hard: now.checked_add(l.hard),
        }
    }

    /// The earlier of the two deadlines.
    pub fn next(&self) -> Option<Instant> {
        earliest(self.soft, self.hard)
    }
}

/// The earlier of two optional instants.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// True if `deadline` is set and not after `now`.
pub(crate) fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn soft_before_hard_within_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Instant::now();
        let l = Lifetime::new(
            Duration::from_secs(100),
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        for _ in 0..50 {
            let e = Expiry::schedule(Some(&l), now, &mut rng);
            let soft = e.soft.unwrap() - now;
            assert!(soft >= Duration::from_secs(85) && soft <= Duration::from_secs(90));
            assert_eq!(e.hard.unwrap() - now, Duration::from_secs(100));
        }
        assert_eq!(Expiry::schedule(None, now, &mut rng), Expiry::default());
        // A margin longer than the lifetime rekeys at once instead of underflowing.
        let l = Lifetime::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::ZERO,
        );
        assert_eq!(Expiry::schedule(Some(&l), now, &mut rng).soft, Some(now));
        assert_eq!(earliest(Some(now), None), Some(now));
        assert!(due(Some(now), now) && !due(None, now));
    }
}
