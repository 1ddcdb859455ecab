//! An in-memory [`Journal`] for unit tests: same semantics, no disk.

use super::{unix_nanos, Journal, JournalError, JournalStats, Kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryJournal {
    trees: Mutex<BTreeMap<(Kind, String), Vec<u8>>>,
    last_flush: AtomicI64,
    /// Durable writes (puts and removals) since opening.
    writes: AtomicU64,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    fn trees(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Kind, String), Vec<u8>>> {
        // A panicking test thread must not poison every later call.
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Journal for MemoryJournal {
    fn put(&self, kind: Kind, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.trees().insert((kind, key.to_string()), value.to_vec());
        self.last_flush.store(unix_nanos(), Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&self, kind: Kind, key: &str) -> Result<(), JournalError> {
        self.trees().remove(&(kind, key.to_string()));
        self.last_flush.store(unix_nanos(), Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.trees().get(&(kind, key.to_string())).cloned())
    }

    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        Ok(self
            .trees()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, key), v)| (key.clone(), v.clone()))
            .collect())
    }

    fn stats(&self) -> Result<JournalStats, JournalError> {
        let trees = self.trees();
        let counts = Kind::ALL
            .iter()
            .map(|&kind| {
                (
                    kind,
                    trees.keys().filter(|(k, _)| *k == kind).count() as u64,
                )
            })
            .collect();
        let size_bytes = trees
            .iter()
            .map(|((_, k), v)| (k.len() + v.len()) as u64)
            .sum();
        Ok(JournalStats {
            path: "memory".into(),
            counts,
            size_bytes,
            last_flush_unix_nanos: self.last_flush.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        })
    }

    fn flush(&self) -> Result<(), JournalError> {
        Ok(())
    }
}
