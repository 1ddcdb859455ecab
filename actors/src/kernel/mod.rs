//! The actor kernel, for any set of actors: an actix system on a thread of
//! its own, each actor on its own arbiter under a `Supervisor` (the
//! generic [`Shell`]), the registry the admin API reads, control by name,
//! the boot log, and start-up that waits until every actor holds its
//! state. It knows no actor of berth's: what starts them, in which order,
//! is the node's ([`crate::node`]), one layer up.
//!
//! The gRPC servers run on tokio and reach the actors only through
//! [`Handle`]s.

mod link;
mod recovered;
mod registry;
mod supervise;

pub use link::{Fakes, Link};
pub use recovered::{claim_cut_short, patiently, short, Recovered, Swept};

pub use registry::{ActorCell, ActorSnapshot, ActorStatus, Registry};
pub use supervise::{
    restarting, By, Control, ControlOp, ControlReply, Controllable, Cx, Envelope, Handle, Handles,
    Reply, Shell, Subsystem,
};

use crate::journal::{BootLog, BootRecord, Journal, JournalStats};
use crate::{Error, Result};
use actix::{Arbiter, Supervisor, System};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running actor system and what the admin API reads of it.
pub struct Kernel {
    registry: Registry,
    /// Every actor, in start-up order.
    controls: Vec<Box<dyn Controllable>>,
    journal: Arc<dyn Journal>,
    boot: Mutex<BootLog>,
    system: System,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Starts `S` on a new arbiter under supervision.
fn spawn<S: Subsystem>(
    deps: S::Deps,
    journal: &Arc<dyn Journal>,
    registry: &mut Registry,
) -> Handle<S> {
    let cell = ActorCell::new(S::NAME);
    registry.add(cell.clone());
    let arbiter = Arbiter::new();
    let (journal, actor_cell) = (journal.clone(), cell.clone());
    let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
        Shell::<S>::new(deps, journal, actor_cell)
    });
    Handle::new(addr, cell)
}

/// What the code that starts the actors is given, inside the actor
/// system: each actor it spawns is supervised and registered.
pub struct Spawner {
    journal: Arc<dyn Journal>,
    registry: Registry,
    controls: Vec<Box<dyn Controllable>>,
}

impl Spawner {
    /// Starts `S` with `deps` on its own arbiter, under supervision.
    pub fn spawn<S: Subsystem>(&mut self, deps: S::Deps) -> Handle<S> {
        let handle = spawn::<S>(deps, &self.journal, &mut self.registry);
        self.controls.push(Box::new(handle.clone()));
        handle
    }
}

impl Kernel {
    /// Records this boot, starts an actor system on a thread of its own,
    /// runs `start` in it to spawn the actors (in the order given), and
    /// waits (up to `start_timeout` each) until every actor holds its
    /// state. Answers the kernel and what `start` returned (the handles).
    pub async fn start<T, F>(
        journal: Arc<dyn Journal>,
        start_timeout: Duration,
        start: F,
    ) -> Result<(Kernel, T)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Spawner) -> T + Send + 'static,
    {
        let boot = BootLog::start(journal.clone())?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let actors_journal = journal.clone();
        let thread = std::thread::Builder::new()
            .name("berth-actors".into())
            .spawn(move || {
                let system = System::new();
                system.block_on(async move {
                    let mut spawner = Spawner {
                        journal: actors_journal,
                        registry: Registry::default(),
                        controls: Vec::new(),
                    };
                    let handles = start(&mut spawner);
                    let _ = tx.send((System::current(), spawner, handles));
                });
                if let Err(e) = system.run() {
                    tracing::error!(error = %e, "actor system ended with an error");
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the actor thread: {e}")))?;
        let (system, spawner, handles) = rx
            .await
            .map_err(|_| Error::Internal("the actor system did not start".into()))?;
        let kernel = Kernel {
            registry: spawner.registry,
            controls: spawner.controls,
            journal,
            boot: Mutex::new(boot),
            system,
            thread: Mutex::new(Some(thread)),
        };
        for name in kernel.actor_names() {
            kernel.wait_running(name, start_timeout).await?;
        }
        Ok((kernel, handles))
    }

    /// Waits until the actor answers a ping (its state is built).
    async fn wait_running(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.control(name, ControlOp::Ping).await {
                Ok(_) => return Ok(()),
                Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => {
                    let why = self
                        .registry
                        .get(name)
                        .map(|s| s.last_error)
                        .unwrap_or_default();
                    return Err(Error::Internal(format!(
                        "the {name} actor did not start: {e} {why}"
                    )));
                }
            }
        }
    }

    /// Actor names in start-up order.
    pub fn actor_names(&self) -> Vec<&'static str> {
        self.controls.iter().map(|c| c.name()).collect()
    }

    /// Sends an operator control to the actor called `name`.
    pub async fn control(&self, name: &str, op: ControlOp) -> Result<ControlReply> {
        let fut = self
            .controls
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.control(op))
            .ok_or_else(|| unknown_actor(name, &self.actor_names()))?;
        fut.await
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn journal_stats(&self) -> Result<JournalStats> {
        Ok(self.journal.stats()?)
    }

    /// Every boot the journal has seen, oldest first.
    pub fn boots(&self) -> Result<Vec<BootRecord>> {
        Ok(self.boot.lock().unwrap_or_else(|p| p.into_inner()).all()?)
    }

    /// Stops every actor (containers are not touched: their shims keep them),
    /// makes the journal durable and marks this boot clean.
    pub fn shutdown(&self) -> Result<()> {
        self.system.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.journal.flush()?;
        self.boot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark_clean()?;
        Ok(())
    }
}

pub fn unknown_actor(name: &str, known: &[&str]) -> Error {
    Error::NotFound(format!(
        "no actor named {name:?} (actors: {})",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests;
