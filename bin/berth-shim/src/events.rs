//! TaskExit events for berthd, best effort.
//!
//! Each event is sent from a short-lived thread over a fresh ttrpc
//! connection to `containerd.services.events.ttrpc.v1.Events/Forward`, so
//! a berthd that is down, slow or restarting never holds up the shim; a
//! failure is only logged (berthd reads `BUNDLE/exit` and asks `wait` when
//! it comes back).

use crate::reaper::Exit;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{topics, ttrpc, EventsClient};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The namespace berth's events carry.
pub const NAMESPACE: &str = "berth";
const TYPE_URL_TASK_EXIT: &str = "containerd.events.TaskExit";
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Publisher {
    socket: PathBuf,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

impl Publisher {
    pub fn new(socket: PathBuf) -> Publisher {
        Publisher { socket }
    }

    /// Sends a TaskExit for process `id` (the container id for its init,
    /// else the exec id) in the background.
    pub fn task_exit(&self, container_id: &str, id: &str, pid: u32, exit: &Exit) {
        let mut event = TaskExit::new();
        event.container_id = container_id.to_string();
        event.id = id.to_string();
        event.pid = pid;
        event.exit_status = exit.status;
        event.exited_at = MessageField::some(timestamp(exit.at));
        let value = match event.write_to_bytes() {
            Ok(v) => v,
            Err(e) => {
                log::warn!("cannot encode the exit event of {id}: {e}");
                return;
            }
        };
        let mut any = Any::new();
        any.type_url = TYPE_URL_TASK_EXIT.to_string();
        any.value = value;
        let mut envelope = Envelope::new();
        envelope.timestamp = MessageField::some(timestamp(SystemTime::now()));
        envelope.namespace = NAMESPACE.to_string();
        envelope.topic = topics::TASK_EXIT_EVENT_TOPIC.to_string();
        envelope.event = MessageField::some(any);
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(envelope);

        let address = format!("unix://{}", self.socket.display());
        let id = id.to_string();
        let sent = std::thread::Builder::new()
            .name("event".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let result = ttrpc::Client::connect(&address).and_then(|c| {
                    EventsClient::new(c).forward(ttrpc::context::with_duration(SEND_TIMEOUT), &req)
                });
                if let Err(e) = result {
                    log::warn!("exit event of {id} not delivered to {address}: {e}");
                }
            });
        if let Err(e) = sent {
            log::warn!("cannot start a thread for an exit event: {e}");
        }
    }
}
