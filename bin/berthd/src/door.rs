//! The one instrumented layer at the door: every CRI and admin call passes
//! through [`serve`], which logs its entry and outcome and maps berth's
//! errors to gRPC status codes, in one place.

use berth_actors::Error;
use std::future::Future;
use std::time::Instant;
use tonic::{Code, Response, Status};

/// Maps an actor error to the gRPC status kubelet acts on.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        Error::Internal(m) => Status::internal(m),
    }
}

/// Runs one call: logs entry and outcome, maps the error.
pub async fn serve<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    tracing::debug!(rpc, "call");
    let out = work.await.map_err(status);
    log_outcome(rpc, start, out.as_ref().err());
    out.map(Response::new)
}

/// The answer for an RPC whose issue has not landed: honest, and naming it.
pub fn unimplemented<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    tracing::debug!(rpc, "call");
    let status = Status::unimplemented(format!("{rpc} is not implemented by berth yet"));
    log_outcome(rpc, Instant::now(), Some(&status));
    Err(status)
}

fn log_outcome(rpc: &'static str, start: Instant, error: Option<&Status>) {
    let micros = start.elapsed().as_micros() as u64;
    match error {
        None => tracing::debug!(rpc, micros, "ok"),
        Some(s) if s.code() == Code::Unimplemented => {
            tracing::debug!(rpc, micros, "unimplemented")
        }
        Some(s) => tracing::info!(rpc, micros, code = ?s.code(), error = s.message(), "failed"),
    }
}

/// Implements trait methods of a tonic (async-trait) service that answer
/// UNIMPLEMENTED, naming the RPC. The methods are written in the form
/// async-trait expands to, because this macro runs after it.
macro_rules! unimplemented_rpcs {
    ($($method:ident($req:ty) -> $resp:ty = $rpc:literal;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: tonic::Request<$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<
                Output = Result<tonic::Response<$resp>, tonic::Status>,
            > + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { $crate::door::unimplemented($rpc) })
            }
        )*
    };
}
pub(crate) use unimplemented_rpcs;

/// The stream type of server-streaming RPCs.
pub type Feed<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;
