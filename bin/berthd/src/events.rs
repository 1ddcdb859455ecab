//! berthd's events endpoint (`<state>/events.sock`): shims publish their
//! task's exit here (containerd's `Events/Forward`, a TaskExit), and the
//! ShimSupervisor, which publishes exits to the actors that own tasks,
//! learns of it at once, without polling. A shim whose exit finds nobody
//! listening (berthd down) leaves its exit record on disk, which the
//! ShimSupervisor finds instead.

use anyhow::{anyhow, Result};
use berth_actors::node::Node;
use berth_actors::shim::exits::ExitReported;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{create_events, ttrpc, Events};
use std::path::Path;
use std::sync::Arc;

const TASK_EXIT: &str = "containerd.events.TaskExit";

struct Sink {
    node: Arc<Node>,
    runtime: tokio::runtime::Handle,
}

impl Events for Sink {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
        let exit = req
            .envelope
            .event
            .as_ref()
            .filter(|any| any.type_url == TASK_EXIT)
            .and_then(|any| TaskExit::parse_from_bytes(&any.value).ok())
            // An exec'd process ends too; only the init process's exit is
            // the task's.
            .filter(|e| e.id.is_empty() || e.id == e.container_id);
        if let Some(exit) = exit {
            tracing::debug!(task = %exit.container_id, status = exit.exit_status, "TaskExit");
            let node = self.node.clone();
            self.runtime.spawn(async move {
                let at = exit
                    .exited_at
                    .as_ref()
                    .map(|t| {
                        t.seconds
                            .saturating_mul(1_000_000_000)
                            .saturating_add(t.nanos.into())
                    })
                    .unwrap_or(0);
                let msg = ExitReported {
                    id: exit.container_id,
                    status: exit.exit_status,
                    exited_at_unix_nanos: at,
                };
                if let Err(e) = node.shim.call(msg).await {
                    tracing::warn!(error = %e, "TaskExit not delivered");
                }
            });
        }
        Ok(containerd_shim_protos::api::Empty::new())
    }
}

/// Serves the events endpoint until the returned server is shut down.
pub fn serve(socket: &Path, node: Arc<Node>) -> Result<ttrpc::Server> {
    let _ = std::fs::remove_file(socket);
    let sink = Sink {
        node,
        runtime: tokio::runtime::Handle::current(),
    };
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .map_err(|e| anyhow!("events socket {}: {e}", socket.display()))?
        .register_service(create_events(Arc::new(sink)));
    server
        .start()
        .map_err(|e| anyhow!("events socket {}: {e}", socket.display()))?;
    Ok(server)
}
