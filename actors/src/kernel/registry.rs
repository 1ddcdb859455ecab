//! The actor registry: what the admin API shows of every actor. Each actor
//! updates its own cell; handles count what they put into its mailbox.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorStatus {
    Running,
    Restarting,
    Stopped,
}

/// A point-in-time copy of one actor's cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorSnapshot {
    pub name: &'static str,
    pub status: ActorStatus,
    pub handled: u64,
    pub failed: u64,
    pub mailbox: u64,
    pub restarts: u64,
    pub last_error: String,
    pub uptime: Duration,
    /// Failed again and again lately: restarts are held back.
    pub crash_loop: bool,
}

/// Failures (not operator kills) within [`CRASH_WINDOW`] that make a
/// crash loop.
pub const CRASH_LOOP_FAILURES: usize = 5;
/// The window in which failures are counted.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The longest a restart is held back.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One actor's live statistics.
pub struct ActorCell {
    name: &'static str,
    status: AtomicU8,
    handled: AtomicU64,
    failed: AtomicU64,
    queued: AtomicI64,
    restarts: AtomicU64,
    last_error: Mutex<String>,
    since: Mutex<Instant>,
    /// When the actor failed by itself (panics, failed rebuilds), newest
    /// last, within the crash window.
    failures: Mutex<std::collections::VecDeque<Instant>>,
}

impl ActorCell {
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(ActorCell {
            name,
            status: AtomicU8::new(ActorStatus::Restarting as u8),
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            since: Mutex::new(Instant::now()),
            failures: Mutex::new(Default::default()),
        })
    }

    /// The actor failed by itself (not an operator's kill): counted
    /// towards a crash loop.
    pub(crate) fn failed_by_itself(&self) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.push_back(Instant::now());
        while f.len() > 64 {
            f.pop_front();
        }
    }

    /// Failures within the crash window.
    pub(crate) fn recent_failures(&self) -> usize {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.iter().filter(|t| t.elapsed() < CRASH_WINDOW).count()
    }

    pub fn crash_loop(&self) -> bool {
        self.recent_failures() >= CRASH_LOOP_FAILURES
    }

    /// How long the next restart is held back: nothing until the crash
    /// loop, then doubling from half a second up to half a minute.
    pub(crate) fn backoff(&self) -> Duration {
        let n = self.recent_failures();
        if n < CRASH_LOOP_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (n - CRASH_LOOP_FAILURES).min(6) as u32;
        (Duration::from_millis(500) * 2u32.pow(doublings)).min(MAX_BACKOFF)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ActorStatus {
        match self.status.load(Ordering::Acquire) {
            0 => ActorStatus::Running,
            1 => ActorStatus::Restarting,
            _ => ActorStatus::Stopped,
        }
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    pub(crate) fn set_status(&self, status: ActorStatus) {
        self.status.store(status as u8, Ordering::Release);
    }

    /// The actor (re)started and holds a fresh state.
    pub(crate) fn started(&self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.set_status(ActorStatus::Running);
    }

    pub(crate) fn restarting(&self) {
        self.restarts.fetch_add(1, Ordering::AcqRel);
        self.set_status(ActorStatus::Restarting);
    }

    pub(crate) fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// A message left the mailbox: taken by the handler or dropped with it.
    pub(crate) fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn outcome(&self, error: Option<&str>) {
        self.handled.fetch_add(1, Ordering::AcqRel);
        if let Some(e) = error {
            self.failed.fetch_add(1, Ordering::AcqRel);
            self.set_error(e);
        }
    }

    pub(crate) fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        ActorSnapshot {
            name: self.name,
            status: self.status(),
            handled: self.handled.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            mailbox: self.queued.load(Ordering::Acquire).max(0) as u64,
            restarts: self.restarts(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            uptime: self
                .since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
            crash_loop: self.crash_loop(),
        }
    }
}

/// Every actor's cell, in start-up order.
#[derive(Clone, Default)]
pub struct Registry {
    cells: Vec<Arc<ActorCell>>,
}

impl Registry {
    pub(crate) fn add(&mut self, cell: Arc<ActorCell>) {
        self.cells.push(cell);
    }

    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        self.cells.iter().map(|c| c.snapshot()).collect()
    }

    pub fn get(&self, name: &str) -> Option<ActorSnapshot> {
        self.cells
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.snapshot())
    }

    /// Names of actors in a crash loop.
    pub fn crash_looping(&self) -> Vec<&'static str> {
        self.cells
            .iter()
            .filter(|c| c.crash_loop())
            .map(|c| c.name())
            .collect()
    }

    /// Names of actors that are not running right now.
    pub fn not_running(&self) -> Vec<&'static str> {
        self.cells
            .iter()
            .filter(|c| c.status() != ActorStatus::Running)
            .map(|c| c.name())
            .collect()
    }
}
