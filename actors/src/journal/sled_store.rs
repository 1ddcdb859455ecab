//! The sled-backed [`Journal`]: one database under `<root>/journal`, one tree
//! per [`Kind`]. Every mutation is followed by a flush, so it is on disk when
//! the call returns; concurrent writers share sled's flushes.
//!
//! A full disk is survived. Beside the database lies a reserve file
//! (`journal.reserve`, [`RESERVE`] bytes). When the disk runs low, or a write
//! fails for want of space, the journal gives the reserve back to the disk
//! and turns frugal: records are still updated and removed (pods stopped and
//! removed, images deleted: what frees a disk), but no record of a new pod,
//! container, image, shim, network or mount is made; such a write is
//! refused before it starts. Once the disk has room for
//! the reserve again and as much besides, the reserve is taken back and new
//! records are welcome. Below a last floor nothing is written at all.
//!
//! sled itself must not meet a full disk: it refuses every call once one
//! of its writes has failed, and closing it can then hang. Should another
//! writer take the last blocks between the check and sled's write, the
//! journal sets that database aside (closed on a thread of its own) and
//! reopens it from its files, which hold every write reported durable.

use super::{unix_nanos, Journal, JournalError, JournalStats, Kind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The space kept back for updates and removals on a full disk.
pub const RESERVE: u64 = 8 << 20;

/// Below this much free space, new records are refused (the reserve is
/// given back first).
const LOW: u64 = 1 << 20;

/// Below this much free space, nothing is written: sled must not meet a
/// full disk (it takes no more calls after a failed write, and can hang
/// closing).
const FLOOR: u64 = 512 << 10;

pub struct SledJournal {
    path: PathBuf,
    reserve: PathBuf,
    /// The open database; None after it failed, until reopened.
    open: RwLock<Option<Open>>,
    /// The reserve is given back: only updates and removals are taken.
    frugal: AtomicBool,
    /// Nothing is written below this many free bytes.
    floor: u64,
    /// A database set aside after a failed write is still closing (its
    /// files cannot be reopened before).
    closing: Arc<AtomicBool>,
    /// Called when a failed database does not close by the time the disk
    /// has room again: berthd restarts itself (its state is the journal's
    /// and the shims').
    stuck: Option<Arc<dyn Fn() + Send + Sync>>,
    last_flush: AtomicI64,
    /// Durable writes (puts and removals) since opening.
    writes: AtomicU64,
}

struct Open {
    db: sled::Db,
    trees: Vec<(Kind, sled::Tree)>,
}

impl Open {
    fn new(path: &Path) -> sled::Result<Open> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled's own page cache (1 GiB unless told): the actors hold
            // every record in memory already, so a small one is enough,
            // and berthd's memory stays flat under churn.
            .cache_capacity(JOURNAL_CACHE)
            .open()?;
        let trees = Kind::ALL
            .iter()
            .map(|&k| db.open_tree(k.name()).map(|t| (k, t)))
            .collect::<sled::Result<Vec<_>>>()?;
        Ok(Open { db, trees })
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        // Every kind's tree is opened in `new`, in Kind::ALL order.
        &self.trees[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)].1
    }
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

/// The journal's page cache, in bytes.
const JOURNAL_CACHE: u64 = 16 * 1024 * 1024;

fn disk_full(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if crate::Error::disk_full(io))
}

/// Bytes free for an unprivileged writer on the disk holding `path`.
fn free_space(path: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// What a write that makes a new record meets, by the disk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Written.
    Yes,
    /// The disk runs low: give the reserve back, then refuse.
    GiveBackAndRefuse,
    /// Frugal, and the disk has room again: take the reserve back, then
    /// write.
    TakeBackAndWrite,
    /// Frugal still: refused.
    Refuse,
}

fn admit(frugal: bool, free: u64) -> Admit {
    match (frugal, free) {
        (false, f) if f < LOW => Admit::GiveBackAndRefuse,
        (false, _) => Admit::Yes,
        (true, f) if f >= 2 * RESERVE => Admit::TakeBackAndWrite,
        (true, _) => Admit::Refuse,
    }
}

/// Makes the reserve file, its blocks allocated.
fn take_reserve(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let tmp = path.with_extension("reserve.tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // SAFETY: fallocate on an open file descriptor we own.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, RESERVE as libc::off_t) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
            let block = vec![0u8; 1 << 20];
            for _ in 0..RESERVE / block.len() as u64 {
                f.write_all(&block)?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl SledJournal {
    /// Opens (or creates) the journal at `path`, with its reserve beside
    /// it; without room for the reserve it opens frugal.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let open = Open::new(path).map_err(|e| storage(format!("open {}: {e}", path.display())))?;
        let reserve = path.with_extension("reserve");
        let frugal = !reserve.exists() && take_reserve(&reserve).is_err();
        if frugal {
            tracing::warn!(path = %reserve.display(), "no room for the journal's reserve: no new records until the disk has room");
        }
        Ok(SledJournal {
            path: path.to_path_buf(),
            reserve,
            open: RwLock::new(Some(open)),
            frugal: AtomicBool::new(frugal),
            floor: FLOOR,
            closing: Arc::new(AtomicBool::new(false)),
            stuck: None,
            last_flush: AtomicI64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// Has `restart` called should a database that failed a write not
    /// close (sled can wait for ever on the failed write) by the time its
    /// disk has room again, so that it cannot be reopened.
    pub fn when_stuck(mut self, restart: impl Fn() + Send + Sync + 'static) -> Self {
        self.stuck = Some(Arc::new(restart));
        self
    }

    /// The journal without its floor, so that sled meets the full disk
    /// (to test what follows).
    #[cfg(test)]
    pub(crate) fn without_floor(mut self) -> Self {
        self.floor = 0;
        self
    }

    /// Whether new records are refused for want of space.
    pub fn frugal(&self) -> bool {
        self.frugal.load(Ordering::Relaxed)
    }

    /// Runs `f` on the open database, reopening it first if an earlier
    /// failure closed it. A failure closes it (sled takes no more calls
    /// once a write failed) and is reported; a full disk also makes the
    /// journal frugal.
    fn with<T>(&self, f: impl Fn(&Open) -> sled::Result<T>) -> Result<T, JournalError> {
        let guard = self.open.read().unwrap_or_else(|p| p.into_inner());
        let result = match guard.as_ref() {
            Some(open) => f(open),
            None => {
                drop(guard);
                return self.reopen_with(f);
            }
        };
        drop(guard);
        result.map_err(|e| self.failed(e))
    }

    /// [`Self::with`] once the database is closed: reopens it (unless
    /// another call did meanwhile), then runs `f`.
    fn reopen_with<T>(&self, f: impl Fn(&Open) -> sled::Result<T>) -> Result<T, JournalError> {
        let mut guard = self.open.write().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let open = Open::new(&self.path).map_err(|e| {
                if self.closing.load(Ordering::Relaxed) || disk_full(&e) {
                    JournalError::Full {
                        detail: "the journal is reopened once the write that failed for want of space is given up".into(),
                        written: false,
                    }
                } else {
                    storage(format!("reopen {}: {e}", self.path.display()))
                }
            })?;
            tracing::info!(path = %self.path.display(), "journal reopened");
            *guard = Some(open);
        }
        let result = match guard.as_ref() {
            Some(open) => f(open),
            None => return Err(storage("journal closed")),
        };
        drop(guard);
        result.map_err(|e| self.failed(e))
    }

    /// After sled failed with `e`: closes the database (to be reopened by
    /// the next call) and says what happened.
    fn failed(&self, e: sled::Error) -> JournalError {
        let full = disk_full(&e);
        tracing::error!(error = %e, full, "journal write failed; the journal is reopened for the next call");
        let mut guard = self.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some(failed) = guard.take() {
            // Closing flushes, which waits on the failed write until the
            // disk has room: off this thread. Its files are free again once
            // it is closed.
            let closing = self.closing.clone();
            closing.store(true, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name("journal-close".into())
                .spawn(move || {
                    drop(failed);
                    closing.store(false, Ordering::Relaxed);
                    tracing::info!("the failed journal database is closed");
                });
            if spawned.is_err() {
                self.closing.store(false, Ordering::Relaxed);
            }
            self.watch_close();
        }
        drop(guard);
        if full {
            self.give_back();
            JournalError::Full {
                detail: e.to_string(),
                written: true,
            }
        } else {
            storage(e)
        }
    }

    /// Once the disk has room again, gives a failed database a few seconds
    /// more to close; if it does not, calls the `stuck` hook.
    fn watch_close(&self) {
        let Some(stuck) = self.stuck.clone() else {
            return;
        };
        let closing = self.closing.clone();
        let path = self.path.clone();
        let floor = self.floor.max(FLOOR);
        let _ = std::thread::Builder::new()
            .name("journal-watch".into())
            .spawn(move || {
                let tick = std::time::Duration::from_millis(500);
                let mut roomy = 0;
                while closing.load(Ordering::Relaxed) {
                    let free = free_space(&path).unwrap_or(u64::MAX);
                    roomy = if free >= 2 * floor { roomy + 1 } else { 0 };
                    if roomy > 10 {
                        tracing::error!(path = %path.display(), "the journal's failed database does not close: restarting berthd to reopen it");
                        stuck();
                        return;
                    }
                    std::thread::sleep(tick);
                }
            });
    }

    /// Gives the reserve back to the disk: the journal turns frugal.
    fn give_back(&self) {
        if !self.frugal.swap(true, Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.reserve);
            tracing::warn!(path = %self.path.display(), "the journal's disk is full: reserve given back; records are updated and removed, no new ones made, until it has room");
        }
    }

    /// Whether a write may go ahead now; `new` when it makes a record
    /// standing for something new.
    fn room(&self, kind: Kind, new: bool) -> Result<(), JournalError> {
        let free = free_space(&self.path).unwrap_or(u64::MAX);
        if free < self.floor {
            self.give_back();
            return Err(JournalError::Full {
                detail: format!(
                    "{free} bytes free on the disk of {}: nothing is written below {}",
                    self.path.display(),
                    self.floor
                ),
                written: false,
            });
        }
        if !new {
            return Ok(());
        }
        let refused = || JournalError::Full {
            detail: format!(
                "{free} bytes free on the disk of {}: no new {} records until {} are",
                self.path.display(),
                kind.name(),
                2 * RESERVE
            ),
            written: false,
        };
        match admit(self.frugal(), free) {
            Admit::Yes => Ok(()),
            Admit::GiveBackAndRefuse => {
                self.give_back();
                Err(refused())
            }
            Admit::Refuse => Err(refused()),
            Admit::TakeBackAndWrite => match take_reserve(&self.reserve) {
                Ok(()) => {
                    self.frugal.store(false, Ordering::Relaxed);
                    tracing::info!(path = %self.path.display(), "the journal's disk has room again: reserve taken back");
                    Ok(())
                }
                Err(_) => Err(refused()),
            },
        }
    }

    /// Changes `kind`'s tree with `change` and makes it durable.
    fn mutate(
        &self,
        kind: Kind,
        change: impl Fn(&sled::Tree) -> sled::Result<()>,
    ) -> Result<(), JournalError> {
        self.with(|o| {
            change(o.tree(kind))?;
            self.durable(o)
        })?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        crate::metrics::MEASURES.journal_writes.inc();
        Ok(())
    }

    fn durable(&self, open: &Open) -> sled::Result<()> {
        let start = std::time::Instant::now();
        open.db.flush()?;
        crate::metrics::MEASURES
            .journal_flush_seconds
            .observe(start.elapsed().as_secs_f64());
        self.last_flush.store(unix_nanos(), Ordering::Relaxed);
        Ok(())
    }
}

impl Journal for SledJournal {
    fn put(&self, kind: Kind, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let new =
            kind.makes_something() && !self.with(|o| o.tree(kind).contains_key(key.as_bytes()))?;
        self.room(kind, new)?;
        self.mutate(kind, |t| t.insert(key.as_bytes(), value).map(drop))
    }

    fn remove(&self, kind: Kind, key: &str) -> Result<(), JournalError> {
        self.room(kind, false)?;
        self.mutate(kind, |t| t.remove(key.as_bytes()).map(drop))
    }

    fn get(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        self.with(|o| Ok(o.tree(kind).get(key.as_bytes())?.map(|v| v.to_vec())))
    }

    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        self.with(|o| {
            o.tree(kind)
                .iter()
                .map(|item| {
                    let (k, v) = item?;
                    Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
                })
                .collect()
        })
    }

    fn stats(&self) -> Result<JournalStats, JournalError> {
        let (counts, size_bytes) = self.with(|o| {
            Ok((
                o.trees.iter().map(|(k, t)| (*k, t.len() as u64)).collect(),
                o.db.size_on_disk()?,
            ))
        })?;
        Ok(JournalStats {
            path: self.path.display().to_string(),
            counts,
            size_bytes,
            last_flush_unix_nanos: self.last_flush.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        })
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.with(|o| self.durable(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_records_wait_for_room_with_the_reserve_between() {
        assert_eq!(admit(false, 100 << 20), Admit::Yes);
        assert_eq!(admit(false, LOW), Admit::Yes);
        assert_eq!(admit(false, LOW - 1), Admit::GiveBackAndRefuse);
        // Giving the reserve back frees it, which is not yet enough.
        assert_eq!(admit(true, RESERVE + LOW), Admit::Refuse);
        assert_eq!(admit(true, 2 * RESERVE - 1), Admit::Refuse);
        assert_eq!(admit(true, 2 * RESERVE), Admit::TakeBackAndWrite);
    }
}
