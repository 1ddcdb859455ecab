//! The sled-backed [`Journal`]: one database under `<root>/journal`, one tree
//! per [`Kind`]. Every mutation is followed by a flush, so it is on disk when
//! the call returns; concurrent writers share sled's flushes.

use super::{unix_nanos, Journal, JournalError, JournalStats, Kind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub struct SledJournal {
    path: PathBuf,
    db: sled::Db,
    trees: Vec<(Kind, sled::Tree)>,
    last_flush: AtomicI64,
    /// Durable writes (puts and removals) since opening.
    writes: AtomicU64,
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

/// The journal's page cache, in bytes.
const JOURNAL_CACHE: u64 = 16 * 1024 * 1024;

impl SledJournal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled's own page cache (1 GiB unless told): the actors hold
            // every record in memory already, so a small one is enough,
            // and berthd's memory stays flat under churn.
            .cache_capacity(JOURNAL_CACHE)
            .open()
            .map_err(|e| storage(format!("open {}: {e}", path.display())))?;
        let trees = Kind::ALL
            .iter()
            .map(|&k| db.open_tree(k.name()).map(|t| (k, t)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(SledJournal {
            path: path.to_path_buf(),
            db,
            trees,
            last_flush: AtomicI64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        // Every kind's tree is opened in `open`, in Kind::ALL order.
        &self.trees[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)].1
    }

    fn durable(&self) -> Result<(), JournalError> {
        self.db.flush().map_err(storage)?;
        self.last_flush.store(unix_nanos(), Ordering::Relaxed);
        Ok(())
    }
}

impl Journal for SledJournal {
    fn put(&self, kind: Kind, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.tree(kind)
            .insert(key.as_bytes(), value)
            .map_err(storage)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.durable()
    }

    fn remove(&self, kind: Kind, key: &str) -> Result<(), JournalError> {
        self.tree(kind).remove(key.as_bytes()).map_err(storage)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.durable()
    }

    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self
            .tree(kind)
            .get(key.as_bytes())
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        self.tree(kind)
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn stats(&self) -> Result<JournalStats, JournalError> {
        Ok(JournalStats {
            path: self.path.display().to_string(),
            counts: self
                .trees
                .iter()
                .map(|(k, t)| (*k, t.len() as u64))
                .collect(),
            size_bytes: self.db.size_on_disk().map_err(storage)?,
            last_flush_unix_nanos: self.last_flush.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        })
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.durable()
    }
}
