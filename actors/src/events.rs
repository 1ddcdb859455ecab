//! Lifecycle events of pods and containers (CRI's GetContainerEvents,
//! kubelet's Evented PLEG): created, started, stopped, deleted, published
//! by the actor that owns the record as soon as the change is journalled.
//! Publishing never waits: events go to a bounded broadcast, and a
//! subscriber that falls more than [`CAPACITY`] events behind loses its
//! place (the front door then ends its stream).

use crate::container::store::ContainerRecord;
use crate::sandbox::store::SandboxRecord;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events kept for subscribers that have not read them yet.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One change, with what its publisher knows of the pod: the pod's own
/// actor gives the pod, the containers' actor the pod's containers; the
/// front door asks for the other half.
#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    /// The container's ID, or the pod's for a pod's event.
    pub id: String,
    pub pod_id: String,
    pub kind: Lifecycle,
    pub at_unix_nanos: i64,
    /// The pod as it was (a pod's own events).
    pub sandbox: Option<SandboxRecord>,
    /// The pod's containers as they were (containers' events).
    pub containers: Option<Vec<ContainerRecord>>,
}

/// Where actors publish and subscribers listen.
#[derive(Clone)]
pub struct Events(broadcast::Sender<Arc<LifecycleEvent>>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(CAPACITY).0)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("subscribers", &self.0.receiver_count())
            .finish()
    }
}

impl Events {
    /// Publishes the event `make` builds, if anyone listens.
    pub fn publish(&self, make: impl FnOnce() -> LifecycleEvent) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(Arc::new(make()));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LifecycleEvent>> {
        self.0.subscribe()
    }
}
