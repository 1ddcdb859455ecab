//! The one instrumented layer at the door: every CRI and admin call passes
//! through [`serve`], which logs its entry and outcome and maps berth's
//! errors to gRPC status codes, in one place.

pub mod authority;
pub mod listen;

use berth_actors::journal::JournalError;
use berth_actors::Error;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::{Code, Response, Status};

/// Maps an actor error to the gRPC status kubelet acts on.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::DataLoss(m) => Status::data_loss(m),
        Error::Internal(m) => Status::internal(m),
        Error::Journal(j @ JournalError::Full { .. }) => {
            Status::resource_exhausted(format!("journal: {j}"))
        }
        Error::Journal(j) => Status::internal(format!("journal: {j}")),
    }
}

/// Calls being served right now, and whether the door is closing.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static CLOSING: AtomicBool = AtomicBool::new(false);

/// Counts one call in flight for as long as it lives.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Woken when the door closes.
static CLOSED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// Resolves once the door closes (streams that never end by themselves,
/// such as GetContainerEvents, end then).
pub async fn closed() {
    let notified = CLOSED.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if CLOSING.load(Ordering::SeqCst) {
        return;
    }
    notified.await;
}

/// Refuses new calls and waits (up to `grace`) for those in flight. Idle
/// client connections (kubelet keeps one open for good) are not waited for.
/// Returns how many calls were still running when the grace ran out.
pub async fn close(grace: Duration) -> usize {
    CLOSING.store(true, Ordering::SeqCst);
    CLOSED.notify_waiters();
    let deadline = Instant::now() + grace;
    loop {
        let running = IN_FLIGHT.load(Ordering::SeqCst);
        if running == 0 || Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs one call: logs entry and outcome, maps the error.
pub async fn serve<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    tracing::debug!(rpc, "call");
    // Counted before the check, so that close() never misses a call that
    // got past it.
    let _in_flight = InFlight::enter();
    if CLOSING.load(Ordering::SeqCst) {
        let refused = Status::unavailable("berthd is shutting down; retry");
        log_outcome(rpc, start, Some(&refused));
        return Err(refused);
    }
    let out = work.await.map_err(status);
    log_outcome(rpc, start, out.as_ref().err());
    out.map(Response::new)
}

fn log_outcome(rpc: &'static str, start: Instant, error: Option<&Status>) {
    let took = start.elapsed();
    let code = error.map_or(Code::Ok, |s| s.code());
    crate::metrics::call_done(rpc, &format!("{code:?}"), took);
    let micros = took.as_micros() as u64;
    match error {
        None => tracing::debug!(rpc, micros, "ok"),
        Some(s) if s.code() == Code::Unimplemented => {
            tracing::debug!(rpc, micros, "unimplemented")
        }
        Some(s) => tracing::info!(rpc, micros, code = ?s.code(), error = s.message(), "failed"),
    }
}

/// The stream type of server-streaming RPCs.
pub type Feed<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A server stream of `items` in messages of up to 100 (each message
/// small), made by `wrap`.
pub fn feed<I: Clone, T: Send + 'static>(items: &[I], wrap: impl Fn(&[I]) -> T) -> Feed<T> {
    let chunks: Vec<Result<T, Status>> = items.chunks(100).map(|c| Ok(wrap(c))).collect();
    Box::pin(futures::stream::iter(chunks))
}
