//! What the actors measure for berthd's metrics endpoint (`[metrics]
//! address`): journal writes and flush latency, image pulls (count,
//! failures, bytes, duration). berthd registers them with its own.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

pub struct Measures {
    pub journal_writes: Counter,
    pub journal_flush_seconds: Histogram,
    pub pulls: Counter,
    pub pulls_failed: Counter,
    pub pulled_bytes: Counter,
    pub pull_seconds: Histogram,
}

pub static MEASURES: LazyLock<Measures> = LazyLock::new(|| Measures {
    journal_writes: Counter::default(),
    // 50 µs to about 1.6 s.
    journal_flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
    pulls: Counter::default(),
    pulls_failed: Counter::default(),
    pulled_bytes: Counter::default(),
    // 10 ms to about 82 s.
    pull_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
});

/// Adds the actors' measures to `registry`.
pub fn register(registry: &mut Registry) {
    let m = &*MEASURES;
    registry.register(
        "berth_journal_writes",
        "Durable journal writes (puts and removals)",
        m.journal_writes.clone(),
    );
    registry.register(
        "berth_journal_flush_seconds",
        "Time to make a journal write durable",
        m.journal_flush_seconds.clone(),
    );
    registry.register("berth_image_pulls", "Image pulls finished", m.pulls.clone());
    registry.register(
        "berth_image_pulls_failed",
        "Image pulls that failed",
        m.pulls_failed.clone(),
    );
    registry.register(
        "berth_image_pulled_bytes",
        "Size of the images pulled (manifests, configs, compressed layers)",
        m.pulled_bytes.clone(),
    );
    registry.register(
        "berth_image_pull_seconds",
        "Duration of successful image pulls",
        m.pull_seconds.clone(),
    );
}

/// Counts a pull that ended, `size` bytes if it succeeded.
pub fn pulled(size: Option<u64>, took: Duration) {
    let m = &*MEASURES;
    m.pulls.inc();
    match size {
        Some(bytes) => {
            m.pulled_bytes.inc_by(bytes);
            m.pull_seconds.observe(took.as_secs_f64());
        }
        None => {
            m.pulls_failed.inc();
        }
    }
}
