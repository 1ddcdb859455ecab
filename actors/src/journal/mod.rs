//! The journal: berth's durable memory, one sled database under the root
//! directory.
//!
//! Records are typed ([`Record`]) and versioned: each is stored as an
//! [`Envelope`] carrying the record's version, so a newer berthd can read
//! and migrate what an older one wrote. Records are grouped by [`Kind`], one
//! sled tree per kind, and each kind has exactly one writer: the actor that
//! owns it ([`Kind::owner`]). A write returns only once it is durable
//! (flushed to disk): callers journal before they reply.
//!
//! The storage sits behind the small [`Journal`] trait so that unit tests can
//! use [`MemoryJournal`] instead of sled.

mod boot;
mod memory;
mod sled_store;
mod table;

pub use boot::{BootLog, BootRecord};
pub use memory::MemoryJournal;
pub use sled_store::SledJournal;
pub use table::Table;

/// Every quarantined record.
pub fn quarantined(journal: &dyn Journal) -> Result<Vec<Quarantined>, JournalError> {
    Ok(journal
        .scan(Kind::Quarantine)?
        .into_iter()
        .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
        .collect())
}

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// What can go wrong below the journal's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("storage: {0}")]
    Storage(String),
    /// The disk holding the journal is full. `written` is false when the
    /// write was refused before anything was stored (the caller's state is
    /// still the disk's); true when it failed part-way and the outcome is
    /// unknown.
    #[error("no space left on the journal's disk: {detail}")]
    Full { detail: String, written: bool },
    #[error("record {kind}/{key}: {reason}")]
    Corrupt {
        kind: &'static str,
        key: String,
        reason: String,
    },
    #[error("{kind} records belong to the {owner} actor, not to {writer}")]
    NotOwner {
        kind: &'static str,
        owner: &'static str,
        writer: &'static str,
    },
}

impl JournalError {
    /// Whether the owner's state may no longer match the journal: anything
    /// but a write refused before it started.
    pub fn uncertain(&self) -> bool {
        !matches!(self, JournalError::Full { written: false, .. })
    }
}

/// The kinds of record, one sled tree each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Sandbox,
    Container,
    Image,
    NetworkAllocation,
    /// Pods whose network was released (CNI DEL succeeded), kept a while
    /// so that fsck can tell this berthd's IPs from another's.
    NetworkReleased,
    /// The node's network settings from kubelet (the pod CIDR).
    NetworkSettings,
    Shim,
    /// Containers' root filesystems (overlay mounts), kept by the image
    /// actor.
    Rootfs,
    /// The kernel's own records (boots).
    Meta,
    /// Records no berthd could read, moved aside whole (with why) so they
    /// neither stop recovery nor get lost.
    Quarantine,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Sandbox,
        Kind::Container,
        Kind::Image,
        Kind::NetworkAllocation,
        Kind::NetworkReleased,
        Kind::NetworkSettings,
        Kind::Shim,
        Kind::Rootfs,
        Kind::Meta,
        Kind::Quarantine,
    ];

    /// The sled tree's name, also shown by `berthctl journal stats`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandbox",
            Kind::Container => "container",
            Kind::Image => "image",
            Kind::NetworkAllocation => "network",
            Kind::NetworkReleased => "network-released",
            Kind::NetworkSettings => "network-settings",
            Kind::Shim => "shim",
            Kind::Rootfs => "rootfs",
            Kind::Meta => "meta",
            Kind::Quarantine => "quarantine",
        }
    }

    /// Whether a new record of this kind stands for something new on the
    /// node (a pod, container, image, shim, network or mount): such records
    /// wait while the disk is full. Records kept as things are taken down,
    /// boots and quarantine do not.
    pub fn makes_something(self) -> bool {
        !matches!(
            self,
            Kind::NetworkReleased | Kind::NetworkSettings | Kind::Meta | Kind::Quarantine
        )
    }

    /// The only writer of this kind's tree: the actor of the same name, or
    /// the kernel for its own records.
    pub fn owner(self) -> &'static str {
        match self {
            Kind::Meta | Kind::Quarantine => "kernel",
            Kind::Rootfs => "image",
            Kind::NetworkReleased | Kind::NetworkSettings => "network",
            kind => kind.name(),
        }
    }
}

/// Counts and sizes for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub path: String,
    pub counts: Vec<(Kind, u64)>,
    pub size_bytes: u64,
    /// Unix time in ns of the last durable write; 0 before the first.
    pub last_flush_unix_nanos: i64,
    /// Durable writes since the journal was opened.
    pub writes: u64,
}

/// Raw storage: bytes by kind and key. Every mutation is durable on return.
pub trait Journal: Send + Sync + 'static {
    fn put(&self, kind: Kind, key: &str, value: &[u8]) -> Result<(), JournalError>;
    fn remove(&self, kind: Kind, key: &str) -> Result<(), JournalError>;
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, JournalError>;
    /// Every record of a kind, in key order.
    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, JournalError>;
    fn stats(&self) -> Result<JournalStats, JournalError>;
    /// Makes everything written so far durable (used at shutdown).
    fn flush(&self) -> Result<(), JournalError>;
}

/// A typed, versioned journal record.
pub trait Record: Serialize + DeserializeOwned {
    const KIND: Kind;
    /// Bumped whenever the stored shape changes; see [`Record::migrate`].
    const VERSION: u32;

    /// The record's key within its kind.
    fn key(&self) -> String;

    /// Reads a record stored by an older berthd (`version` < VERSION). The
    /// default knows no older versions.
    fn migrate(version: u32, data: serde_json::Value) -> Result<Self, String> {
        let _ = data;
        Err(format!(
            "version {version} is not readable by this berthd (it reads up to {})",
            Self::VERSION
        ))
    }
}

/// How a record sits on disk: its version beside its data.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub data: serde_json::Value,
}

/// What loading a kind found: the readable records and the unreadable ones
/// (with the reason), which never stop the rest from loading.
#[derive(Debug)]
pub struct Loaded<R> {
    pub records: Vec<R>,
    pub unreadable: Vec<JournalError>,
    /// Keys of records read from an older version (to be written anew).
    pub migrated: Vec<String>,
}

/// A record moved to quarantine: where it was, why it could not be read,
/// and its bytes as they were.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantined {
    pub kind: String,
    pub key: String,
    pub reason: String,
    pub raw: String,
    pub at_unix_nanos: i64,
}

/// The typed view of one kind, held by that kind's owner.
pub struct Tree<R: Record> {
    journal: Arc<dyn Journal>,
    _record: PhantomData<fn() -> R>,
}

impl<R: Record> Clone for Tree<R> {
    fn clone(&self) -> Self {
        Tree {
            journal: self.journal.clone(),
            _record: PhantomData,
        }
    }
}

impl<R: Record> Tree<R> {
    /// Opens the tree for `writer`, which must be the kind's owner.
    pub fn open(journal: Arc<dyn Journal>, writer: &'static str) -> Result<Self, JournalError> {
        if R::KIND.owner() != writer {
            return Err(JournalError::NotOwner {
                kind: R::KIND.name(),
                owner: R::KIND.owner(),
                writer,
            });
        }
        Ok(Tree {
            journal,
            _record: PhantomData,
        })
    }

    /// Stores the record durably.
    pub fn put(&self, record: &R) -> Result<(), JournalError> {
        let key = record.key();
        let data = serde_json::to_value(record).map_err(|e| self.corrupt(&key, e))?;
        let bytes = serde_json::to_vec(&Envelope {
            v: R::VERSION,
            data,
        })
        .map_err(|e| self.corrupt(&key, e))?;
        self.journal.put(R::KIND, &key, &bytes)
    }

    pub fn remove(&self, key: &str) -> Result<(), JournalError> {
        self.journal.remove(R::KIND, key)
    }

    pub fn get(&self, key: &str) -> Result<Option<R>, JournalError> {
        match self.journal.get(R::KIND, key)? {
            None => Ok(None),
            Some(bytes) => self.decode(key, &bytes).map(Some),
        }
    }

    /// Every record of the kind; unreadable ones are reported, not fatal.
    pub fn load(&self) -> Result<Loaded<R>, JournalError> {
        let mut loaded = Loaded {
            records: Vec::new(),
            unreadable: Vec::new(),
            migrated: Vec::new(),
        };
        for (key, bytes) in self.journal.scan(R::KIND)? {
            match self.decode(&key, &bytes) {
                Ok(r) => {
                    let old = serde_json::from_slice::<Envelope>(&bytes)
                        .is_ok_and(|env| env.v < R::VERSION);
                    if old {
                        loaded.migrated.push(key.clone());
                    }
                    loaded.records.push(r)
                }
                Err(e) => {
                    tracing::warn!(kind = R::KIND.name(), %key, error = %e, "unreadable journal record");
                    loaded.unreadable.push(e);
                }
            }
        }
        Ok(loaded)
    }

    /// Moves the record at `key` aside, whole, with why it is unreadable.
    pub fn quarantine(&self, key: &str, reason: &str) -> Result<(), JournalError> {
        let Some(raw) = self.journal.get(R::KIND, key)? else {
            return Ok(());
        };
        let q = Quarantined {
            kind: R::KIND.name().into(),
            key: key.into(),
            reason: reason.into(),
            raw: String::from_utf8_lossy(&raw).into_owned(),
            at_unix_nanos: unix_nanos(),
        };
        let bytes = serde_json::to_vec(&q).map_err(|e| self.corrupt(key, e))?;
        self.journal.put(
            Kind::Quarantine,
            &format!("{}/{key}", R::KIND.name()),
            &bytes,
        )?;
        self.journal.remove(R::KIND, key)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<R, JournalError> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| self.corrupt(key, e))?;
        let result = if env.v == R::VERSION {
            serde_json::from_value(env.data).map_err(|e| e.to_string())
        } else if env.v < R::VERSION {
            R::migrate(env.v, env.data)
        } else {
            Err(format!(
                "version {} was written by a newer berthd (this one reads up to {})",
                env.v,
                R::VERSION
            ))
        };
        result.map_err(|e| self.corrupt(key, e))
    }

    fn corrupt(&self, key: &str, reason: impl ToString) -> JournalError {
        JournalError::Corrupt {
            kind: R::KIND.name(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Unix time now, in nanoseconds.
pub fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
