//! Wall-clock timestamps for log lines and events.
//!
//! The node stamps events with a monotonic `Instant`; people and log collectors want UTC
//! wall time. [`WallClock`] pins one `Instant` to one `SystemTime` at startup and maps
//! later instants through it, so a clock step (NTP) cannot reorder events in the log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Maps monotonic instants to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    mono: Instant,
    wall: SystemTime,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock {
    /// Anchors the mapping at this moment.
    pub fn new() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Wall-clock time of `at`.
    pub fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.mono) {
            Some(d) => self.wall + d,
            None => self.wall - self.mono.saturating_duration_since(at),
        }
    }

    /// `at` as RFC 3339 UTC with milliseconds.
    pub fn rfc3339(&self, at: Instant) -> String {
        rfc3339_millis(self.wall(at))
    }
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T16:40:01.123Z` (RFC 3339 §5.6).
/// Times before 1970 print as the epoch (no clock here is set that far back).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), using the 400-year
/// era arithmetic (eras of 146 097 days, years counted from March so leap days come last).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, from March 1
    let mp = (5 * doy + 2) / 153; // 0 = March
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> String {
        rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
    }

    #[test]
    fn known_dates() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.
        assert_eq!(at(951_827_696, 7), "2000-02-29T12:34:56.007Z");
        // 2026-11-27T16:40:01.123Z
        assert_eq!(at(1_795_797_601, 123), "2026-11-27T16:40:01.123Z");
        // 2100-03-01 (2100 is not a leap year).
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn every_day_round_trips_through_month_lengths() {
        // Walk 600 years of days and check each date follows the previous one.
        let mut prev = civil_from_days(0);
        for day in 1..(600 * 366) {
            let cur = civil_from_days(day);
            let next_in_month = (prev.0, prev.1, prev.2 + 1);
            let next_month = if prev.1 == 12 {
                (prev.0 + 1, 1, 1)
            } else {
                (prev.0, prev.1 + 1, 1)
            };
            assert!(
                cur == next_in_month || cur == next_month,
                "{prev:?} -> {cur:?}"
            );
            if cur == next_month {
                let leap = matches!(
                    (prev.0 % 4, prev.0 % 100, prev.0 % 400),
                    (0, 1.., _) | (0, 0, 0)
                );
                let len = [
                    31,
                    if leap { 29 } else { 28 },
                    31,
                    30,
                    31,
                    30,
                    31,
                    31,
                    30,
                    31,
                    30,
                    31,
                ];
                assert_eq!(prev.2, len[(prev.1 - 1) as usize], "{prev:?}");
            }
            prev = cur;
        }
    }

    #[test]
    fn wall_clock_maps_instants() {
        let c = WallClock::new();
        let later = c.mono + Duration::from_millis(1500);
        assert_eq!(
            c.wall(later).duration_since(c.wall).unwrap(),
            Duration::from_millis(1500)
        );
    }
}
