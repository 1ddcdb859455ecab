//! berth's node: its five actors started on the kernel in the order of who
//! calls whom, and the verbs that take more than one of them.
//!
//! The network and shim actors start first (they call no one), then images,
//! sandboxes (network, shims, images) and containers (sandboxes, images,
//! shims). [`Node::start`] returns once every actor has built its state
//! from the journal, so the front door never serves a call from an actor
//! that is still loading.
//!
//! A pod's stop and removal take two actors, in an order kubelet relies
//! on: the pod's containers first, then the pod ([`Node::stop_pod`],
//! [`Node::remove_pod`]).

use crate::container::messages::PodContainers;
use crate::container::{ContainerDeps, Containers};
use crate::host::HostFacts;
use crate::image::{ImageBackend, ImageConfig, Images};
use crate::journal::Journal;
use crate::kernel::{Handle, Kernel, Link};
use crate::network::{Network, NetworkConfig};
use crate::sandbox::messages::{RemovePodSandbox, StopPodSandbox};
use crate::sandbox::{SandboxConfig, SandboxDeps, Sandboxes};
use crate::shim::messages::TaskExited;
use crate::shim::{ExitSink, ExitSinks, ShimConfig, ShimDeps, Shims};
use crate::Result;
use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// What the node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub network: NetworkConfig,
    pub image: ImageConfig,
    pub sandbox: SandboxConfig,
    pub shim: ShimConfig,
    /// What this node offers containers, probed once.
    pub host: Arc<HostFacts>,
    /// How long start-up waits for an actor to build its state.
    pub start_timeout: Duration,
    /// Whether CRIU works here, probed once when first asked.
    pub criu: Arc<crate::container::checkpoint::criu::CriuProbe>,
}

/// berth's running actors, on their kernel.
pub struct Node {
    pub network: Handle<Network>,
    pub shim: Handle<Shims>,
    pub image: Handle<Images>,
    pub sandbox: Handle<Sandboxes>,
    pub container: Handle<Containers>,
    /// Pods' and containers' lifecycle events.
    pub events: crate::events::Events,
    kernel: Kernel,
}

/// The kernel's registry, controls, journal and shutdown, on the node.
impl std::ops::Deref for Node {
    type Target = Kernel;

    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}

/// A pod's stop (or, with `remove`, its removal), in the order kubelet
/// relies on: its containers first, then the pod. If the containers cannot
/// be ended, the pod is left as it is, for the retry.
async fn end_pod(
    containers: &Link<Containers>,
    sandboxes: &Link<Sandboxes>,
    id: String,
    remove: bool,
) -> Result<()> {
    containers
        .call(PodContainers {
            sandbox_id: id.clone(),
            remove,
        })
        .await?;
    if remove {
        sandboxes.call(RemovePodSandbox { id }).await
    } else {
        sandboxes.call(StopPodSandbox { id }).await
    }
}

/// An exit sink delivering to `owner` (which ignores tasks not its own).
fn sink<S>(owner: &Handle<S>) -> ExitSink
where
    S: crate::kernel::Subsystem + crate::kernel::Handles<TaskExited, Output = ()>,
{
    let owner = owner.clone();
    Arc::new(move |exit: TaskExited| {
        let owner = owner.clone();
        Box::pin(async move {
            if let Err(e) = owner.call(exit).await {
                tracing::warn!(error = %e, "a task exit was not delivered");
            }
        })
    })
}

impl Node {
    /// Records this boot, starts every actor and waits until each holds its
    /// state.
    pub async fn start(journal: Arc<dyn Journal>, config: NodeConfig) -> Result<Node> {
        let image_backend = ImageBackend::open(config.image.clone())?;
        let container_dirs = (
            config.sandbox.state.clone(),
            config.image.root.join("pods"),
            config.image.root.join("rootfs"),
        );
        let shim_config = Arc::new(config.shim.clone());
        let exec_turns = Arc::new(tokio::sync::Semaphore::new(
            config.shim.max_exec_sync.max(1),
        ));
        let (network_config, sandbox_config, host) = (
            config.network.clone(),
            config.sandbox.clone(),
            config.host.clone(),
        );
        let criu = config.criu.clone();
        let sinks = ExitSinks::default();
        let events = crate::events::Events::default();
        let published = events.clone();
        let (kernel, (network, shim, image, sandbox, container)) =
            Kernel::start(journal, config.start_timeout, move |s| {
                let network = s.spawn::<Network>(network_config);
                let shim = s.spawn::<Shims>(ShimDeps {
                    config: shim_config,
                    sinks: sinks.clone(),
                    exec_turns,
                    v2_io: Default::default(),
                });
                let image = s.spawn::<Images>(image_backend);
                let sandbox = s.spawn::<Sandboxes>(SandboxDeps {
                    network: network.clone().into(),
                    shim: shim.clone().into(),
                    image: image.clone().into(),
                    config: sandbox_config,
                    events: published.clone(),
                });
                let container = s.spawn::<Containers>(ContainerDeps {
                    sandbox: sandbox.clone().into(),
                    image: image.clone().into(),
                    shim: shim.clone().into(),
                    state: container_dirs.0,
                    default_log_dir: container_dirs.1,
                    rootfs_dir: container_dirs.2,
                    host,
                    events: published,
                    criu,
                });
                // Task exits go to the two owners of tasks.
                let _ = sinks.set(vec![sink(&sandbox), sink(&container)]);
                (network, shim, image, sandbox, container)
            })
            .await?;
        Ok(Node {
            network,
            shim,
            image,
            sandbox,
            container,
            events,
            kernel,
        })
    }

    /// StopPodSandbox: the pod's containers are stopped (no grace: the
    /// pod is going), then the pod.
    pub async fn stop_pod(&self, id: String) -> Result<()> {
        end_pod(
            &self.container.clone().into(),
            &self.sandbox.clone().into(),
            id,
            false,
        )
        .await
    }

    /// RemovePodSandbox: the pod's containers are removed, then the pod.
    pub async fn remove_pod(&self, id: String) -> Result<()> {
        end_pod(
            &self.container.clone().into(),
            &self.sandbox.clone().into(),
            id,
            true,
        )
        .await
    }
}
