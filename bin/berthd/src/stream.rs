//! What the streaming server asks of the node: commands run in
//! containers through the container actor and their shims, and
//! connections opened inside pods' network namespaces.

use berth_actors::container::messages as ctr;
use berth_actors::node::Node;
use berth_actors::sandbox::messages as pod;
use berth_stream::{AttachRequest, ExecRequest, ProcessIo, Runtime, StreamError};
use futures::future::BoxFuture;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection into a pod may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NodeRuntime {
    node: Arc<Node>,
}

impl NodeRuntime {
    pub fn new(node: Arc<Node>) -> NodeRuntime {
        NodeRuntime { node }
    }
}

fn failed(e: impl std::fmt::Display) -> StreamError {
    StreamError::Failed(e.to_string())
}

impl Runtime for NodeRuntime {
    fn exec(&self, req: ExecRequest, io: ProcessIo) -> BoxFuture<'static, Result<(), StreamError>> {
        let node = self.node.clone();
        Box::pin(async move {
            tracing::debug!(container = %req.container_id, cmd = ?req.cmd, tty = req.tty, "exec: starting");
            let status = node
                .container
                .call(ctr::ExecIn {
                    id: req.container_id.clone(),
                    cmd: req.cmd,
                    io,
                })
                .await
                .map_err(failed)?;
            tracing::info!(container = %req.container_id, status, "exec: done");
            match status {
                0 => Ok(()),
                n => Err(StreamError::ExitCode(n as i32)),
            }
        })
    }

    fn attach(
        &self,
        req: AttachRequest,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), StreamError>> {
        let node = self.node.clone();
        Box::pin(async move {
            tracing::debug!(container = %req.container_id, tty = req.tty, "attach: starting");
            node.container
                .call(ctr::AttachTo {
                    id: req.container_id.clone(),
                    io,
                })
                .await
                .map_err(failed)?;
            tracing::info!(container = %req.container_id, "attach: done");
            Ok(())
        })
    }

    fn connect(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, StreamError>> {
        let node = self.node.clone();
        let id = sandbox_id.to_string();
        Box::pin(async move {
            let record = node
                .sandbox
                .call(pod::PodSandboxStatus { id: id.clone() })
                .await
                .map_err(failed)?;
            let netns = record.netns_path.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own: entering the pod's namespace changes
            // the thread, which then ends.
            std::thread::Builder::new()
                .name("port-forward".into())
                .spawn(move || {
                    let _ = tx.send(connect_in(&netns, port));
                })
                .map_err(failed)?;
            let stream = rx
                .await
                .map_err(|_| failed("the connecting thread died"))?
                .map_err(|e| failed(format!("dial port {port}: {e}")))?;
            tokio::net::TcpStream::from_std(stream).map_err(failed)
        })
    }
}

/// Connects to `localhost:port` in the network namespace at `netns`
/// (empty: the node's own, for host-network pods), IPv4 then IPv6.
fn connect_in(netns: &str, port: u16) -> std::io::Result<TcpStream> {
    if !netns.is_empty() {
        let ns = std::fs::File::open(netns)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
        .or_else(|e4| TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4))?;
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
