//! The shim's own errors, with their causes: what went wrong setting the
//! shim up or serving a call, mapped to a ttrpc status only where berthd
//! is answered.

use crate::runc::RuncError;
use containerd_shim_protos::ttrpc;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file or socket operation, and what it was for.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call made through nix, and what it was for.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    /// Another shim answers on this socket.
    #[error("the socket {} is in use", .0.display())]
    SocketInUse(PathBuf),
    /// A TTY was asked for and runc never handed it over.
    #[error("runc sent no terminal")]
    NoTerminal,
    #[error(transparent)]
    Runc(#[from] RuncError),
    /// An exec the shim could not start itself.
    #[error("{0}")]
    Exec(String),
    /// The runtime printed what it should not have.
    #[error("{0}")]
    RuntimeOutput(String),
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

/// Names what a failed operation was for, keeping its cause.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Doing<T> for std::result::Result<T, std::io::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ShimError::Io {
            what: what(),
            source,
        })
    }
}

impl<T> Doing<T> for std::result::Result<T, nix::errno::Errno> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ShimError::Sys {
            what: what(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_kept_and_named() {
        let e = std::fs::read("/nonexistent/berth")
            .doing(|| "reading the spec".to_string())
            .expect_err("no such file");
        assert!(e.to_string().starts_with("reading the spec: "));
        let cause = e.source().expect("a cause");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        let e = Err::<(), _>(nix::errno::Errno::EPERM)
            .doing(|| "becoming a subreaper".to_string())
            .expect_err("EPERM");
        assert!(matches!(
            e,
            ShimError::Sys {
                source: nix::errno::Errno::EPERM,
                ..
            }
        ));
    }
}
