//! CPU usage in nano-cores (CRI's `usage_nano_cores`), from successive
//! readings of the same cgroup: the CPU time used since the previous
//! reading over the time between them, as kubelet and `crictl stats`
//! expect the runtime to compute it. A reading less than 100 ms after the
//! last one answers the last rate, so that calls close together do not
//! answer noise; readings not taken for 10 minutes are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIN_WINDOW: Duration = Duration::from_millis(100);
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct Reading {
    at: Instant,
    usage: u64,
    rate: Option<u64>,
}

#[derive(Default)]
pub struct CpuRates {
    seen: Mutex<(HashMap<String, Reading>, Option<Instant>)>,
}

impl CpuRates {
    /// The rate of the cgroup named `key`, now that it has used `usage`
    /// nanoseconds of CPU; None at its first reading.
    pub fn rate(&self, key: &str, usage: Option<u64>) -> Option<u64> {
        self.rate_at(key, usage?, Instant::now())
    }

    fn rate_at(&self, key: &str, usage: u64, now: Instant) -> Option<u64> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, pruned) = &mut *guard;
        if pruned.is_none_or(|at| now.duration_since(at) >= FORGET_AFTER) {
            seen.retain(|_, r| now.duration_since(r.at) < FORGET_AFTER);
            *pruned = Some(now);
        }
        let Some(r) = seen.get_mut(key) else {
            seen.insert(
                key.to_string(),
                Reading {
                    at: now,
                    usage,
                    rate: None,
                },
            );
            return None;
        };
        let window = now.duration_since(r.at);
        if window < MIN_WINDOW {
            return r.rate;
        }
        r.rate = usage
            .checked_sub(r.usage)
            .map(|used| (used as u128 * 1_000_000_000 / window.as_nanos().max(1)) as u64);
        r.at = now;
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
        let t0 = Instant::now();
        assert_eq!(rates.rate_at("a", 1_000, t0), None);
        // Half a core for two seconds.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(rates.rate_at("a", 1_000_001_000, t1), Some(500_000_000));
        // Close behind: the same answer.
        let t2 = t1 + Duration::from_millis(10);
        assert_eq!(rates.rate_at("a", 1_900_000_000, t2), Some(500_000_000));
        // Idle for a second.
        let t3 = t1 + Duration::from_secs(1);
        assert_eq!(rates.rate_at("a", 1_000_001_000, t3), Some(0));
        // A counter that went back (a new cgroup) has no rate yet.
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(rates.rate_at("a", 5, t4), None);
        // Others are apart, and the forgotten start over.
        assert_eq!(rates.rate_at("b", 7, t4), None);
        let later = t4 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(rates.rate_at("b", 9, later), None);
    }
}
