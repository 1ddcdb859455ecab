//! The CRI streaming server: what Exec, Attach and PortForward's URLs
//! lead to. [`server::StreamServer`] hands out single-use URLs and serves
//! them over SPDY/3.1 or WebSocket; berthd supplies the [`Runtime`] that
//! runs commands and opens connections in pods.

pub mod client;
mod idle;
pub mod over_spdy;
pub mod remotecommand;
pub mod request;
pub mod server;
pub mod spdy;
pub mod tls;
pub mod tokens;
pub mod ws;

pub use request::{
    AttachRequest, ExecRequest, PortForwardRequest, ProcessIo, Request, Runtime, StreamError,
    TermSize,
};
pub use server::{Config, StreamServer};
