//! The gRPC server on a unix socket: one HTTP/2 connection per client
//! (hyper), each request routed to tonic's services, with two things a
//! stock tonic server gets wrong for CRI clients:
//!
//! - every `:authority` real clients send is accepted ([`super::authority`]);
//! - a call whose deadline (`grpc-timeout`) passes answers
//!   DEADLINE_EXCEEDED, as gRPC defines and kubelet and critest expect;
//!   tonic's own server answers CANCELLED, which a client can see before
//!   its own timer fires.
//!
//! On stop, the listener closes and each connection finishes the calls it
//! has (an HTTP/2 GOAWAY), as tonic's graceful shutdown does.

use super::authority::Authorities;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::body::BoxBody;
use tonic::service::Routes;

/// Serves `routes` on `listener` until `stop` turns true.
pub async fn serve(listener: UnixListener, routes: Routes, mut stop: watch::Receiver<bool>) {
    let routes = routes.prepare();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like pass; the listener stays.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let service = TowerToHyperService::new(Deadlines(routes.clone()));
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(Authorities::new(stream));
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            let result = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

/// Routes a request with its deadline kept.
#[derive(Clone)]
struct Deadlines(Routes);

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, Infallible>> + Send>>;

impl tower::Service<http::Request<Incoming>> for Deadlines {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()));
        // The RPC's name, for the log line of a call past its deadline.
        let path = deadline.map(|_| request.uri().path().to_string());
        let call = tower::Service::call(&mut self.0, request.map(tonic::body::boxed));
        Box::pin(async move {
            let answer = match deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout(d, call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        let rpc = path.unwrap_or_default();
                        tracing::info!(%rpc, deadline = ?d, "the call's deadline passed");
                        let status = tonic::Status::deadline_exceeded(format!(
                            "the call's deadline ({d:?}) passed before berth answered"
                        ));
                        return Ok(status.into_http());
                    }
                },
            };
            // tonic's routes fail only on a broken request body; it is
            // answered as gRPC would (INTERNAL), not by dropping the stream.
            Ok(answer.unwrap_or_else(|e| tonic::Status::from_error(e).into_http()))
        })
    }
}

/// A `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(b"999m"), Some(Duration::from_millis(999)));
        assert_eq!(
            grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout(b"700n"), Some(Duration::from_nanos(700)));
        for bad in [&b""[..], b"S", b"123456789S", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
