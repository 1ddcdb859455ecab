//! CPU usage in nano-cores (CRI's `usage_nano_cores`), from successive
//! readings of the same cgroup: the CPU time used since the previous
//! reading over the time between them (the readings' own timestamps), as
//! kubelet and `crictl stats` expect the runtime to compute it. A reading
//! less than 100 ms after the last one answers the last rate, so that
//! calls close together do not answer noise; a reading older than the
//! last (the clock went back) starts over; readings not taken for 10
//! minutes are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIN_WINDOW: Duration = Duration::from_millis(100);
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct Reading {
    /// When it was taken (Unix ns), and when it was last used.
    at: i64,
    used: Instant,
    usage: u64,
    rate: Option<u64>,
}

#[derive(Default)]
pub struct CpuRates {
    seen: Mutex<(HashMap<String, Reading>, Option<Instant>)>,
}

impl CpuRates {
    /// The rate of the cgroup named `key`, read at `at` (Unix ns) having
    /// used `usage` nanoseconds of CPU; None at its first reading.
    pub fn rate(&self, key: &str, at: i64, usage: Option<u64>) -> Option<u64> {
        self.rate_at(key, at, usage?, Instant::now())
    }

    fn rate_at(&self, key: &str, at: i64, usage: u64, now: Instant) -> Option<u64> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, pruned) = &mut *guard;
        if pruned.is_none_or(|t| now.duration_since(t) >= FORGET_AFTER) {
            seen.retain(|_, r| now.duration_since(r.used) < FORGET_AFTER);
            *pruned = Some(now);
        }
        let fresh = Reading {
            at,
            used: now,
            usage,
            rate: None,
        };
        let Some(r) = seen.get_mut(key) else {
            seen.insert(key.to_string(), fresh);
            return None;
        };
        r.used = now;
        let window = at - r.at;
        if window < 0 {
            *r = fresh;
            return None;
        }
        if (window as u128) < MIN_WINDOW.as_nanos() {
            return r.rate;
        }
        r.rate = usage
            .checked_sub(r.usage)
            .map(|used| (used as u128 * 1_000_000_000 / window as u128) as u64);
        r.at = at;
        r.usage = usage;
        r.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_cpu_time_over_wall_time_between_readings() {
        let rates = CpuRates::default();
        let now = Instant::now();
        let s = 1_000_000_000i64;
        let t0 = 1_700_000_000 * s;
        assert_eq!(rates.rate_at("a", t0, 1_000, now), None);
        // Half a core for two seconds.
        let t1 = t0 + 2 * s;
        assert_eq!(
            rates.rate_at("a", t1, 1_000_001_000, now),
            Some(500_000_000)
        );
        // Close behind: the same answer.
        let t2 = t1 + s / 100;
        assert_eq!(
            rates.rate_at("a", t2, 1_900_000_000, now),
            Some(500_000_000)
        );
        // Idle for a second.
        let t3 = t1 + s;
        assert_eq!(rates.rate_at("a", t3, 1_000_001_000, now), Some(0));
        // A counter that went back (a new cgroup) has no rate yet.
        let t4 = t3 + s;
        assert_eq!(rates.rate_at("a", t4, 5, now), None);
        // Nor a clock that went back.
        assert_eq!(rates.rate_at("a", t0, 10, now), None);
        // Others are apart, and the forgotten start over.
        assert_eq!(rates.rate_at("b", t4, 7, now), None);
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(rates.rate_at("b", t4 + 700 * s, 9, later), None);
    }
}
