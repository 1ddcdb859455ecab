//! GetContainerEvents: the node's lifecycle events (published by the actor
//! that owns each record, see `berth_actors::events`) as CRI
//! ContainerEventResponses, each with its pod's status and the statuses
//! of the pod's containers, as containerd sends them. A subscriber that
//! falls too far behind is told so and its stream ends, with a log line;
//! every stream ends when berthd closes.

use super::Cri;
use crate::convert;
use crate::door::{serve, Feed};
use berth_actors::container::messages as ctr;
use berth_actors::events::{Lifecycle, LifecycleEvent};
use berth_actors::node::Node;
use berth_actors::sandbox::messages as pod;
use berth_protocol::cri::*;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::{Response, Status};

/// Responses made ahead of a subscriber's reading.
const SENT_AHEAD: usize = 128;

fn event_type(kind: Lifecycle) -> ContainerEventType {
    match kind {
        Lifecycle::Created => ContainerEventType::ContainerCreatedEvent,
        Lifecycle::Started => ContainerEventType::ContainerStartedEvent,
        Lifecycle::Stopped => ContainerEventType::ContainerStoppedEvent,
        Lifecycle::Deleted => ContainerEventType::ContainerDeletedEvent,
    }
}

/// The response for `e`, its missing half (the pod, or its containers)
/// asked of the actor that has it.
async fn response(node: &Node, e: &LifecycleEvent) -> ContainerEventResponse {
    let sandbox = match &e.sandbox {
        Some(r) => Some(r.clone()),
        None => node
            .sandbox
            .call(pod::PodSandboxStatus {
                id: e.pod_id.clone(),
            })
            .await
            .ok(),
    };
    let containers = match &e.containers {
        Some(c) => c.clone(),
        None => node
            .container
            .call(ctr::ListContainers {
                sandbox_id: Some(e.pod_id.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_default(),
    };
    ContainerEventResponse {
        container_id: e.id.clone(),
        container_event_type: event_type(e.kind) as i32,
        created_at: e.at_unix_nanos,
        pod_sandbox_status: sandbox.as_ref().map(convert::sandbox_status),
        containers_statuses: containers.iter().map(convert::container_status).collect(),
    }
}

/// Forwards the node's events to one subscriber until it goes, falls
/// behind, or berthd closes.
async fn forward(
    node: Arc<Node>,
    mut events: tokio::sync::broadcast::Receiver<Arc<LifecycleEvent>>,
    to: mpsc::Sender<Result<ContainerEventResponse, Status>>,
) {
    loop {
        let next = tokio::select! {
            e = events.recv() => e,
            _ = to.closed() => return,
            _ = crate::door::closed() => return,
        };
        match next {
            Ok(e) => {
                if to.send(Ok(response(&node, &e).await)).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "GetContainerEvents: a subscriber fell too far behind; its stream ends"
                );
                let _ = to.try_send(Err(Status::resource_exhausted(format!(
                    "GetContainerEvents: this subscriber fell {missed} events behind; subscribe again"
                ))));
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl Cri {
    pub(super) async fn container_events(
        &self,
    ) -> Result<Response<Feed<ContainerEventResponse>>, Status> {
        serve("GetContainerEvents", async {
            let events = self.node.events.subscribe();
            let (to, from) = mpsc::channel(SENT_AHEAD);
            tokio::spawn(forward(self.node.clone(), events, to));
            let feed: Feed<ContainerEventResponse> =
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(from));
            Ok(feed)
        })
        .await
    }
}
