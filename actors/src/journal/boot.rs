//! The kernel's boot log: one record per start of berthd, marked clean when
//! that run shut down in order. A run that never got its mark ended in a
//! crash (or a power cut), which recovery and operators want to know.

use super::{unix_nanos, Journal, JournalError, Kind, Record, Tree};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    pub seq: u64,
    pub pid: u32,
    pub started_unix_nanos: i64,
    pub clean_shutdown: bool,
}

impl Record for BootRecord {
    const KIND: Kind = Kind::Meta;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        // Zero-padded so that key order is boot order.
        format!("boot/{:020}", self.seq)
    }
}

/// This run's entry in the boot log.
pub struct BootLog {
    tree: Tree<BootRecord>,
    current: BootRecord,
}

impl BootLog {
    /// Records this start of berthd (durably) and returns the log.
    pub fn start(journal: Arc<dyn Journal>) -> Result<Self, JournalError> {
        let tree = Tree::<BootRecord>::open(journal, "kernel")?;
        let last = tree
            .load()?
            .records
            .iter()
            .map(|b| b.seq)
            .max()
            .unwrap_or(0);
        let current = BootRecord {
            seq: last + 1,
            pid: std::process::id(),
            started_unix_nanos: unix_nanos(),
            clean_shutdown: false,
        };
        tree.put(&current)?;
        Ok(BootLog { tree, current })
    }

    /// Every boot the journal has seen, oldest first.
    pub fn all(&self) -> Result<Vec<BootRecord>, JournalError> {
        let mut boots = self.tree.load()?.records;
        boots.sort_by_key(|b| b.seq);
        Ok(boots)
    }

    pub fn current(&self) -> &BootRecord {
        &self.current
    }

    /// Marks this run as shut down in order.
    pub fn mark_clean(&mut self) -> Result<(), JournalError> {
        self.current.clean_shutdown = true;
        self.tree.put(&self.current)
    }
}
