//! What a streaming URL was made for, and what the runtime must do for
//! it: the [`Runtime`] berthd implements (and tests fake).

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An Exec the CRI call prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An Attach the CRI call prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A PortForward the CRI call prepared. `ports` is what the call named
/// (used by WebSocket clients, which cannot name ports themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub sandbox_id: String,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Request {
    /// The URL path's first segment.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

/// A terminal's size, as clients send it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// The client's side of a process's stdio, as the runtime sees it.
/// Output senders are bounded: a slow client slows the process's output,
/// it never grows berthd's memory.
pub struct ProcessIo {
    pub tty: bool,
    /// What the client types; ends (None) at the client's EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Resolves when the client has gone (its connection ended): an exec
    /// is then ended, an attach let go.
    pub gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Why a stream's work failed, as the error stream says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The command ran and exited with this non-zero code.
    #[error("command terminated with non-zero exit code: {0}")]
    ExitCode(i32),
    /// Anything else, in words for the client.
    #[error("{0}")]
    Failed(String),
}

/// What berthd does for the streaming server.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `req.cmd` in the container with `io`; answers when the
    /// process has exited (not when stdin ends).
    fn exec(&self, req: ExecRequest, io: ProcessIo) -> BoxFuture<'static, Result<(), StreamError>>;

    /// Attaches `io` to the container's own stdio; answers when the
    /// container exits or the attach ends.
    fn attach(
        &self,
        req: AttachRequest,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), StreamError>>;

    /// A connection to `localhost:port` inside the pod's network.
    fn connect(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<TcpStream, StreamError>>;
}
