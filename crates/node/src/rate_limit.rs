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
    window_start: Option<Instant>,
    window_count: u32,
    suppressed: u64,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// A limiter with the given limits.
    pub fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            // RandomState: SipHash with a per-process random key; keys are wire-controlled.
            flows: HashMap::with_capacity(limits.max_flows.min(1024)),
            window_start: None,
            window_count: 0,
            suppressed: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// Decides whether the event of flow `key` at `now` gets a log line.
    pub fn check(&mut self, now: Instant, key: &K) -> Decision {
        self.roll_window(now);
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
    }

    fn roll_window(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.limits.global_window => {}
            _ => {
                self.window_start = Some(now);
                self.window_count = 0;
            }
        }
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
