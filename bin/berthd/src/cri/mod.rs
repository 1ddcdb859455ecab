//! The CRI front door: RuntimeService and ImageService over the CRI socket.
//! Handlers only convert: a CRI request becomes an actor message, the reply
//! becomes a CRI response. Calls whose issue has not landed answer
//! UNIMPLEMENTED naming the RPC.

mod events;
mod image;
mod pod_metrics;
mod runtime;
mod stream;

use crate::config::Config;
use berth_actors::host::HostFacts;
use berth_actors::node::Node;
use std::sync::Arc;

/// What every CRI handler can reach.
#[derive(Clone)]
pub struct Cri {
    node: Arc<Node>,
    config: Arc<Config>,
    /// What this node offers: `Status` announces features from it.
    host: Arc<HostFacts>,
    /// Where Exec, Attach and PortForward's URLs lead.
    stream: berth_stream::StreamServer,
    /// CPU readings, for usage in nano-cores.
    rates: Arc<crate::rates::CpuRates>,
}

impl Cri {
    pub fn new(
        node: Arc<Node>,
        config: Arc<Config>,
        host: Arc<HostFacts>,
        stream: berth_stream::StreamServer,
    ) -> Self {
        Cri {
            node,
            config,
            host,
            stream,
            rates: Default::default(),
        }
    }
}
