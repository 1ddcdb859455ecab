//! berth's wire contracts.
//!
//! - [`cri`]: the Kubernetes CRI `runtime.v1` services kubelet and crictl
//!   call (generated at build time).
//! - [`admin`]: berth's own `admin.v1` service on the admin socket.
//! - [`shim`]: the contract between berthd and berth-shim (command line,
//!   bundle files, exit record), which both sides use; the shim takes it
//!   without the `grpc` feature.
//! - [`crilog`]: the CRI container log format.
//! - [`timefmt`]: RFC 3339 timestamps as the CRI log format and the
//!   checkpoint archive write them.
//!
//! This crate holds contracts only; conversions to actor messages live beside
//! the front door that uses them.

pub mod crilog;
pub mod shim;
pub mod timefmt;

/// CRI `runtime.v1` (k8s.io/cri-api).
#[cfg(feature = "grpc")]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// berth `admin.v1`.
#[cfg(feature = "grpc")]
pub mod admin {
    tonic::include_proto!("berth.admin.v1");
}

/// Connecting a gRPC client to a unix socket (berthctl, tests, benchmarks).
#[cfg(feature = "grpc")]
pub mod uds {
    use hyper_util::rt::TokioIo;
    use std::path::{Path, PathBuf};
    use tonic::transport::{Channel, Endpoint};

    /// A channel to the gRPC server listening on the unix socket at `path`.
    /// Fails at once, naming the path, when nothing listens there.
    pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
        let path: PathBuf = path.to_path_buf();
        // The URI is required by the API but unused: every connection goes to
        // the socket.
        Endpoint::from_static("http://berth.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
    }
}
