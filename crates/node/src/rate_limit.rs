//! Rate limits for the invalid-SPI log line.
//!
//! The vendor behaviour (see `docs/peer.md`): at most one line per minute per (src, dst, SPI)
//! flow, plus a global cap (default 10 lines a minute) with a periodic "N messages suppressed"
//! summary. A flood of random SPIs must not grow memory: the flow table is bounded and keyed
//! with a randomly seeded hash (std's SipHash `RandomState`), since the keys come off the wire.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Limits for [`LogLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// At most one line per flow per this interval (vendor default: one minute).
    pub per_flow_interval: Duration,
    /// At most this many lines per `global_window` across all flows.
    pub global_max: u32,
    /// The global window (one minute).
    pub global_window: Duration,
    /// Largest number of flows remembered at once.
    pub max_flows: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            per_flow_interval: Duration::from_secs(60),
            global_max: 10,
            global_window: Duration::from_secs(60),
            max_flows: 4096,
        }
    }
}

/// Largest `max_flows` whose flow map is allocated in full up front (~0.9 MiB for the
/// default 4096 flows, ~3.6 MiB here); beyond it the map grows on demand.
const PREALLOCATED_FLOWS: usize = 16 * 1024;

/// Flow-map capacity for `max_flows`: twice the bound, so the map never allocates once the
/// limiter exists. The table holds at most `max_flows` entries, but evictions leave
/// deleted-slot markers behind; when they use up the free slots, hashbrown rehashes in place
/// only if the map is at most half full, otherwise it allocates one twice the size (issue
/// #7: it did so once, at a seed-dependent moment, when the table first filled). With room
/// for `2 * max_flows` it is never more than half full.
fn flow_map_capacity(max_flows: usize) -> usize {
    max_flows.min(PREALLOCATED_FLOWS) * 2
}

/// Whether to print a line now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Print it.
    Log,
    /// This flow logged less than `per_flow_interval` ago.
    SuppressedFlow,
    /// The global budget of this window is spent (or the flow table is full).
    SuppressedGlobal,
}

/// A per-flow + global limiter on a caller-supplied clock.
#[derive(Debug)]
pub struct LogLimiter<K: Hash + Eq> {
    limits: LogLimits,
    flows: HashMap<K, Instant>,
    /// When the current global window ends (its start + `global_window`, precomputed so
    /// the per-packet test is one compare); `None` before the first event, or when the sum
    /// overflows `Instant` (then `endless`: the window never ends). One field instead of
    /// start and end saves the drop path a test per packet.
    window_end: Option<Instant>,
    endless: bool,
    window_count: u32,
    suppressed: u64,
    /// The flow inserted last and the end of its quiet interval (`None`: never ends). It
    /// mirrors that flow's entry in `flows`, so a flood from one stale SA, which repeats one
    /// key, is answered by a compare instead of a SipHash per packet.
    last: Option<(K, Option<Instant>)>,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// A limiter with the given limits.
    pub fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            // RandomState: SipHash with a per-process random key; keys are wire-controlled.
            flows: HashMap::with_capacity(flow_map_capacity(limits.max_flows)),
            window_end: None,
            endless: false,
            window_count: 0,
            suppressed: 0,
            last: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// Decides whether the event of flow `key` at `now` gets a log line.
    pub fn check(&mut self, now: Instant, key: &K) -> Decision {
        self.roll_window(now);
        self.check_rolled(now, key)
    }

    /// Whether the event of flow `key` at `now` gets a log line: the same answer and the same
    /// state change as `check(now, key) == Decision::Log`, cheaper on the invalid-SPI drop
    /// path. Once the global budget of the window is spent every event is suppressed whatever
    /// its flow, so the flow table is not consulted (no SipHash per packet in a flood).
    #[inline]
    pub fn allow(&mut self, now: Instant, key: &K) -> bool {
        self.allow_with(now, || key.clone())
    }

    /// [`allow`](Self::allow) with the key built by `key` only when it is needed (not once
    /// the global budget is spent): the drop path's key holds two `IpAddr`s.
    #[inline(always)]
    pub fn allow_with(&mut self, now: Instant, key: impl FnOnce() -> K) -> bool {
        self.roll_window(now);
        if self.window_count >= self.limits.global_max {
            // `check` would answer SuppressedFlow or SuppressedGlobal here; both count one
            // suppressed line and change nothing else.
            self.suppressed += 1;
            return false;
        }
        self.check_rolled(now, &key()) == Decision::Log
    }

    /// Whether the global budget of the window holding `now` is spent (rolling the window
    /// first, as `allow` does). If it is, every `allow(now, _)` until a later `now` answers
    /// false, changing nothing but one suppressed count, which
    /// [`note_suppressed`](Self::note_suppressed) does: a batch of packets sharing one
    /// `now` asks once. (The answer cannot turn back within one `now`: a window either
    /// ends after `now` or, with a zero `global_window`, is renewed on every call, and then
    /// is spent only when `global_max` is 0.)
    #[inline]
    pub fn spent(&mut self, now: Instant) -> bool {
        self.roll_window(now);
        self.window_count >= self.limits.global_max
    }

    /// Counts one suppressed line: what `allow(now, _)` does once [`spent`](Self::spent)
    /// said true for that `now`.
    #[inline(always)]
    pub fn note_suppressed(&mut self) {
        self.suppressed += 1;
    }

    // Out of line: `allow_with`'s shortcut is inlined into the drop path, this is not.
    #[inline(never)]
    fn check_rolled(&mut self, now: Instant, key: &K) -> Decision {
        if let Some((k, until)) = &self.last {
            if k == key && until.is_none_or(|u| now < u) {
                // Same answer as the map below: `flows[key]` is the instant `until` was
                // computed from (`last` is set on every insert and cleared by `evict`).
                self.suppressed += 1;
                return Decision::SuppressedFlow;
            }
        }
        if let Some(last) = self.flows.get(key) {
            if now.saturating_duration_since(*last) < self.limits.per_flow_interval {
                self.suppressed += 1;
                return Decision::SuppressedFlow;
            }
        }
        if self.window_count >= self.limits.global_max {
            self.suppressed += 1;
            return Decision::SuppressedGlobal;
        }
        if !self.flows.contains_key(key) && self.flows.len() >= self.limits.max_flows {
            self.evict(now);
            if self.flows.len() >= self.limits.max_flows {
                // Cannot remember the flow, so cannot promise one line a minute for it:
                // stay quiet rather than let a flood of new flows print.
                self.suppressed += 1;
                return Decision::SuppressedGlobal;
            }
        }
        self.flows.insert(key.clone(), now);
        // `now < now + ivl` is `now - now < ivl`, the map test above.
        self.last = Some((key.clone(), now.checked_add(self.limits.per_flow_interval)));
        self.window_count += 1;
        Decision::Log
    }

    /// Lines suppressed since the last call; resets the count. The caller prints the summary
    /// line when it is non-zero (typically once per global window).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// Lines suppressed and not yet summarised.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Flows currently remembered (bounded by `max_flows`).
    pub fn tracked_flows(&self) -> usize {
        self.flows.len()
    }

    /// Forgets flows whose interval has passed (call now and then; `check` also does it
    /// when the table is full).
    pub fn evict(&mut self, now: Instant) {
        let ivl = self.limits.per_flow_interval;
        self.flows
            .retain(|_, last| now.saturating_duration_since(*last) < ivl);
        // The cached flow may just have been forgotten.
        self.last = None;
    }

    #[inline]
    fn roll_window(&mut self, now: Instant) {
        // `now < start + window` is `now.saturating_duration_since(start) < window`.
        match self.window_end {
            Some(end) if now < end => return,
            None if self.endless => return,
            _ => {}
        }
        self.window_end = now.checked_add(self.limits.global_window);
        self.endless = self.window_end.is_none();
        self.window_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn one_line_per_flow_per_minute() {
        let mut l = LogLimiter::new(LogLimits::default());
        let t = t0();
        assert_eq!(l.check(t, &1u32), Decision::Log);
        for i in 1..100 {
            assert_eq!(
                l.check(t + Duration::from_millis(i * 500), &1),
                Decision::SuppressedFlow
            );
        }
        assert_eq!(l.check(t + Duration::from_secs(60), &1), Decision::Log);
        assert_eq!(l.take_suppressed(), 99);
        assert_eq!(l.take_suppressed(), 0);
    }

    #[test]
    fn global_windows_roll_and_an_endless_one_never_does() {
        let limits = LogLimits {
            global_max: 2,
            global_window: Duration::from_secs(10),
            ..LogLimits::default()
        };
        let t = t0();
        let mut l = LogLimiter::new(limits);
        assert!(l.allow(t, &1u32) && l.allow(t, &2));
        assert!(!l.allow(t + Duration::from_secs(9), &3));
        // The next window starts with the first event at or after its end.
        assert!(l.allow(t + Duration::from_secs(10), &3));
        assert!(l.allow(t + Duration::from_secs(19), &4));
        assert!(!l.allow(t + Duration::from_secs(19), &5));
        assert!(l.allow(t + Duration::from_secs(20), &5));
        // A window whose end overflows `Instant` never ends: the budget is never renewed.
        let mut l = LogLimiter::new(LogLimits {
            global_window: Duration::MAX,
            ..limits
        });
        assert!(l.allow(t, &1u32) && l.allow(t, &2));
        for s in [0, 1, 60, 86_400 * 365] {
            assert!(!l.allow(t + Duration::from_secs(s), &(s as u32 + 3)));
        }
        assert_eq!(l.suppressed(), 4);
    }

    /// `spent` + `note_suppressed` answer and count as `allow` does, for every `now` at
    /// which `spent` said true, including a zero window (renewed on every call) with a
    /// zero or non-zero budget.
    #[test]
    fn spent_then_note_is_allow() {
        for (window, max) in [(10, 3), (0, 2), (0, 0), (10, 0)] {
            let limits = LogLimits {
                global_max: max,
                global_window: Duration::from_secs(window),
                ..LogLimits::default()
            };
            let (mut a, mut b) = (LogLimiter::new(limits), LogLimiter::new(limits));
            let t = t0();
            for i in 0..200u32 {
                let now = t + Duration::from_secs(u64::from(i / 10));
                if b.spent(now) {
                    for k in 0..5 {
                        assert!(!a.allow(now, &(i * 8 + k)), "{window} {max} {i}");
                        b.note_suppressed();
                        assert!(b.spent(now), "stays spent within one now");
                    }
                }
                let key = i % 7;
                assert_eq!(a.allow(now, &key), b.allow(now, &key), "{window} {max} {i}");
                assert_eq!(a.suppressed(), b.suppressed());
            }
            assert!(a.suppressed() > 0);
        }
    }

    /// The limiter as first written (map lookup and `saturating_duration_since` on every
    /// call): `check` and `allow`, with their caches and shortcuts, must agree with it.
    struct Model {
        limits: LogLimits,
        flows: HashMap<u32, Instant>,
        window_start: Option<Instant>,
        window_count: u32,
        suppressed: u64,
    }

    impl Model {
        fn check(&mut self, now: Instant, key: u32) -> Decision {
            match self.window_start {
                Some(s) if now.saturating_duration_since(s) < self.limits.global_window => {}
                _ => {
                    self.window_start = Some(now);
                    self.window_count = 0;
                }
            }
            if let Some(last) = self.flows.get(&key) {
                if now.saturating_duration_since(*last) < self.limits.per_flow_interval {
                    self.suppressed += 1;
                    return Decision::SuppressedFlow;
                }
            }
            if self.window_count >= self.limits.global_max {
                self.suppressed += 1;
                return Decision::SuppressedGlobal;
            }
            if !self.flows.contains_key(&key) && self.flows.len() >= self.limits.max_flows {
                self.evict(now);
                if self.flows.len() >= self.limits.max_flows {
                    self.suppressed += 1;
                    return Decision::SuppressedGlobal;
                }
            }
            self.flows.insert(key, now);
            self.window_count += 1;
            Decision::Log
        }

        fn evict(&mut self, now: Instant) {
            let ivl = self.limits.per_flow_interval;
            self.flows
                .retain(|_, last| now.saturating_duration_since(*last) < ivl);
        }
    }

    #[test]
    fn check_and_allow_agree_with_the_plain_limiter() {
        let limits = LogLimits {
            per_flow_interval: Duration::from_secs(3),
            global_max: 5,
            global_window: Duration::from_secs(10),
            max_flows: 8,
        };
        let t = t0();
        let mut model = Model {
            limits,
            flows: HashMap::new(),
            window_start: None,
            window_count: 0,
            suppressed: 0,
        };
        let (mut by_check, mut by_allow) = (LogLimiter::new(limits), LogLimiter::new(limits));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut ms = 0u64;
        let (mut logged, mut repeats) = (0, 0);
        let mut prev = 0u32;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ms += x % 40;
            let now = t + Duration::from_millis(ms);
            // Runs of one flow (the cached case), a few hot flows, and many cold ones.
            let key = match x >> 60 {
                0..=7 => prev,
                8..=11 => (x >> 20) as u32 % 4,
                _ => (x >> 20) as u32 % 64,
            };
            repeats += u32::from(key == prev);
            prev = key;
            if i % 5000 == 0 {
                model.evict(now);
                by_check.evict(now);
                by_allow.evict(now);
            }
            let want = model.check(now, key);
            assert_eq!(by_check.check(now, &key), want, "step {i}");
            assert_eq!(by_allow.allow(now, &key), want == Decision::Log, "step {i}");
            logged += u32::from(want == Decision::Log);
            assert_eq!(by_check.suppressed(), model.suppressed);
            assert_eq!(by_allow.suppressed(), model.suppressed);
            assert_eq!(by_check.tracked_flows(), model.flows.len());
            assert_eq!(by_allow.tracked_flows(), model.flows.len());
        }
        // The sequence exercised every branch.
        assert!(logged > 100 && repeats > 50_000, "{logged} {repeats}");
    }

    #[test]
    fn flow_map_is_never_more_than_half_full() {
        // hashbrown rehashes in place (no allocation) only while at most half full.
        for max_flows in [1, 64, 1000, 4096, PREALLOCATED_FLOWS] {
            let l: LogLimiter<u32> = LogLimiter::new(LogLimits {
                max_flows,
                ..LogLimits::default()
            });
            assert!(l.flows.capacity() >= 2 * max_flows, "{max_flows}");
        }
    }

    #[test]
    fn global_cap_and_bounded_table() {
        let limits = LogLimits {
            max_flows: 64,
            ..LogLimits::default()
        };
        let mut l = LogLimiter::new(limits);
        let t = t0();
        let mut logged = 0;
        // A flood of 100k distinct flows within one minute.
        for k in 0..100_000u32 {
            if l.check(t + Duration::from_micros(k as u64), &k) == Decision::Log {
                logged += 1;
            }
            assert!(l.tracked_flows() <= 64);
        }
        assert_eq!(logged, 10);
        assert_eq!(l.suppressed(), 100_000 - 10);
        // Next minute: a new budget.
        let t2 = t + Duration::from_secs(61);
        assert_eq!(l.check(t2, &5_000_000), Decision::Log);
    }
}
