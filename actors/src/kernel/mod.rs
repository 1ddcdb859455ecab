//! The actor kernel: starts the subsystem actors in order, each on its own
//! arbiter (thread) and under an actix `Supervisor`, and keeps the registry
//! and boot log.
//!
//! Start-up order follows who calls whom: the network and shim actors first
//! (they call no one), then images, sandboxes (network, shims, images), and
//! containers (sandboxes, images, shims). [`Kernel::start`] returns once every
//! actor has built its state from the journal, so the front door never
//! serves a call from an actor that is still loading.
//!
//! The actors live in an actix system on a thread of their own; the gRPC
//! servers run on tokio and reach them only through [`Handle`]s.

mod recovered;
mod registry;
mod supervise;

pub use recovered::{claim_cut_short, patiently, short, Recovered, Swept};

pub use registry::{ActorCell, ActorSnapshot, ActorStatus, Registry};
pub use supervise::{
    By, Control, ControlOp, ControlReply, Controllable, Cx, Envelope, Handle, Handles, Reply,
    Shell, Subsystem,
};

use crate::container::{ContainerDeps, Containers};
use crate::image::{ImageBackend, ImageConfig, Images};
use crate::journal::{BootLog, BootRecord, Journal, JournalStats};
use crate::network::{Network, NetworkConfig};
use crate::sandbox::{SandboxConfig, SandboxDeps, Sandboxes};
use crate::shim::{ShimConfig, Shims};
use crate::{Error, Result};
use actix::{Arbiter, Supervisor, System};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the kernel needs to start.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub network: NetworkConfig,
    pub image: ImageConfig,
    pub sandbox: SandboxConfig,
    pub shim: ShimConfig,
    /// What this node offers containers, probed once.
    pub host: Arc<crate::host::HostFacts>,
    /// How long start-up waits for an actor to build its state.
    pub start_timeout: Duration,
}

/// The running actors and what the admin API reads of them.
pub struct Kernel {
    pub network: Handle<Network>,
    pub shim: Handle<Shims>,
    pub image: Handle<Images>,
    pub sandbox: Handle<Sandboxes>,
    pub container: Handle<Containers>,
    registry: Registry,
    journal: Arc<dyn Journal>,
    boot: Mutex<BootLog>,
    system: System,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Started {
    network: Handle<Network>,
    shim: Handle<Shims>,
    image: Handle<Images>,
    sandbox: Handle<Sandboxes>,
    container: Handle<Containers>,
    registry: Registry,
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

impl Kernel {
    /// Records this boot, starts every actor and waits until each holds its
    /// state.
    pub async fn start(journal: Arc<dyn Journal>, config: KernelConfig) -> Result<Kernel> {
        let boot = BootLog::start(journal.clone())?;
        let image_backend = ImageBackend::open(config.image.clone())?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let actors_journal = journal.clone();
        let network_config = config.network.clone();
        let sandbox_config = config.sandbox.clone();
        let container_dirs = (
            config.sandbox.state.clone(),
            config.image.root.join("pods"),
            config.image.root.join("rootfs"),
        );
        let shim_config = Arc::new(config.shim.clone());
        let host = config.host.clone();
        let thread = std::thread::Builder::new()
            .name("berth-actors".into())
            .spawn(move || {
                let system = System::new();
                system.block_on(async move {
                    let mut registry = Registry::default();
                    let j = &actors_journal;
                    let network = spawn::<Network>(network_config, j, &mut registry);
                    let shim = spawn::<Shims>(shim_config, j, &mut registry);
                    let image = spawn::<Images>(image_backend, j, &mut registry);
                    let sandbox_deps = SandboxDeps {
                        network: network.clone(),
                        shim: shim.clone(),
                        image: image.clone(),
                        config: sandbox_config,
                    };
                    let sandbox = spawn::<Sandboxes>(sandbox_deps, j, &mut registry);
                    let container_deps = ContainerDeps {
                        sandbox: sandbox.clone(),
                        image: image.clone(),
                        shim: shim.clone(),
                        state: container_dirs.0,
                        default_log_dir: container_dirs.1,
                        rootfs_dir: container_dirs.2,
                        host,
                    };
                    let container = spawn::<Containers>(container_deps, j, &mut registry);
                    let started = Started {
                        network,
                        shim,
                        image,
                        sandbox,
                        container,
                        registry,
                    };
                    let _ = tx.send((System::current(), started));
                });
                if let Err(e) = system.run() {
                    tracing::error!(error = %e, "actor system ended with an error");
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the actor thread: {e}")))?;
        let (system, s) = rx
            .await
            .map_err(|_| Error::Internal("the actor system did not start".into()))?;
        let kernel = Kernel {
            network: s.network,
            shim: s.shim,
            image: s.image,
            sandbox: s.sandbox,
            container: s.container,
            registry: s.registry,
            journal,
            boot: Mutex::new(boot),
            system,
            thread: Mutex::new(Some(thread)),
        };
        for name in kernel.actor_names() {
            kernel.wait_running(name, config.start_timeout).await?;
        }
        Ok(kernel)
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

    fn controls(&self) -> [&dyn Controllable; 5] {
        [
            &self.network,
            &self.shim,
            &self.image,
            &self.sandbox,
            &self.container,
        ]
    }

    /// Actor names in start-up order.
    pub fn actor_names(&self) -> Vec<&'static str> {
        self.controls().iter().map(|c| c.name()).collect()
    }

    /// Sends an operator control to the actor called `name`.
    pub async fn control(&self, name: &str, op: ControlOp) -> Result<ControlReply> {
        let fut = self
            .controls()
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
