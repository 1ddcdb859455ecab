//! [`Table`]: an actor's in-memory map of one record kind, kept in step with
//! its journal tree. Writes go to the journal first (durable), then to the
//! map, so memory never holds what the disk does not.

use super::{Journal, JournalError, Loaded, Record, Tree};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Table<R: Record> {
    tree: Tree<R>,
    rows: BTreeMap<String, R>,
}

impl<R: Record> Table<R> {
    /// Opens the kind's tree for its owner and loads it.
    pub fn open(journal: &Arc<dyn Journal>, owner: &'static str) -> Result<Self, JournalError> {
        Self::load(Tree::open(journal.clone(), owner)?)
    }

    /// Loads every readable record of the kind. A record of an older
    /// version is written anew in the current one; an unreadable one is
    /// logged (by [`Tree::load`]) and moved to quarantine, so that it
    /// neither stops the rest nor is lost.
    pub fn load(tree: Tree<R>) -> Result<Self, JournalError> {
        let Loaded {
            records,
            unreadable,
            migrated,
        } = tree.load()?;
        for e in unreadable {
            if let JournalError::Corrupt { key, reason, .. } = &e {
                tree.quarantine(key, reason)?;
                tracing::error!(kind = R::KIND.name(), %key, %reason, "journal record quarantined");
            }
        }
        let rows: BTreeMap<String, R> = records.into_iter().map(|r| (r.key(), r)).collect();
        for key in migrated {
            if let Some(r) = rows.get(&key) {
                tree.put(r)?;
                tracing::info!(kind = R::KIND.name(), %key, version = R::VERSION, "journal record migrated");
            }
        }
        Ok(Table { tree, rows })
    }

    pub fn get(&self, key: &str) -> Option<&R> {
        self.rows.get(key)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.rows.values()
    }

    /// The key `id` names: itself, or the one key it is a unique prefix of
    /// (users shorten IDs, as crictl shows them).
    pub fn resolve(&self, id: &str) -> Option<String> {
        if id.is_empty() {
            return None;
        }
        if self.rows.contains_key(id) {
            return Some(id.to_string());
        }
        let mut matches = self.rows.keys().filter(|k| k.starts_with(id));
        let first = matches.next()?;
        matches.next().is_none().then(|| first.clone())
    }

    /// Journals the record, then keeps it.
    pub fn put(&mut self, record: R) -> Result<(), JournalError> {
        self.tree.put(&record)?;
        self.rows.insert(record.key(), record);
        Ok(())
    }

    /// Journals the removal, then forgets the record.
    pub fn remove(&mut self, key: &str) -> Result<Option<R>, JournalError> {
        self.tree.remove(key)?;
        Ok(self.rows.remove(key))
    }
}
