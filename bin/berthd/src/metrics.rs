//! berthd's Prometheus endpoint (`[metrics] address`, off unless set):
//! `GET /metrics` in the text exposition format. Counted as they happen:
//! CRI and admin calls by RPC and code, with latency histograms (at the
//! door), journal writes and flush latency, image pulls (the actors'
//! [`berth_actors::metrics`]). Read at each scrape: every actor's mailbox,
//! handled messages, failures, restarts and whether it runs; shims alive;
//! streaming sessions open.

use berth_actors::node::Node;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Actor {
    actor: String,
}

fn latency() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

struct Calls {
    total: Family<Call, Counter>,
    seconds: Family<Rpc, Histogram, fn() -> Histogram>,
}

static CALLS: LazyLock<Calls> = LazyLock::new(|| Calls {
    total: Family::default(),
    seconds: Family::new_with_constructor(latency),
});

/// Counts a call that ended with `code` (gRPC's name for it) after `took`.
pub fn call_done(rpc: &str, code: &str, took: Duration) {
    CALLS
        .total
        .get_or_create(&Call {
            rpc: rpc.to_string(),
            code: code.to_string(),
        })
        .inc();
    CALLS
        .seconds
        .get_or_create(&Rpc {
            rpc: rpc.to_string(),
        })
        .observe(took.as_secs_f64());
}

/// What the endpoint reads at each scrape.
pub struct Sources {
    pub node: Arc<Node>,
    pub stream: berth_stream::StreamServer,
}

/// The exposition text, as of now.
async fn scrape(s: &Sources) -> String {
    let mut registry = Registry::default();
    registry.register(
        "berth_cri_calls",
        "CRI and admin calls answered, by RPC and gRPC code",
        CALLS.total.clone(),
    );
    registry.register(
        "berth_cri_call_seconds",
        "Time to answer CRI and admin calls, by RPC",
        CALLS.seconds.clone(),
    );
    berth_actors::metrics::register(&mut registry);

    let families: [(&str, &str, Family<Actor, Gauge>); 5] = [
        (
            "berth_actor_mailbox",
            "Messages waiting for the actor",
            Family::default(),
        ),
        (
            "berth_actor_handled",
            "Messages the actor has handled",
            Family::default(),
        ),
        (
            "berth_actor_failed",
            "Messages the actor failed",
            Family::default(),
        ),
        (
            "berth_actor_restarts",
            "Times the actor was restarted",
            Family::default(),
        ),
        ("berth_actor_up", "1 if the actor runs", Family::default()),
    ];
    for a in s.node.registry().snapshot() {
        let label = Actor {
            actor: a.name.to_string(),
        };
        let running = matches!(a.status, berth_actors::kernel::ActorStatus::Running);
        let values = [
            a.mailbox,
            a.handled,
            a.failed,
            a.restarts,
            u64::from(running),
        ];
        for ((_, _, family), v) in families.iter().zip(values) {
            family.get_or_create(&label).set(v as i64);
        }
    }
    for (name, help, family) in families {
        registry.register(name, help, family);
    }

    let shims: Gauge = Gauge::default();
    if let Ok(list) = s
        .node
        .shim
        .call(berth_actors::shim::health::ListShims)
        .await
    {
        shims.set(list.iter().filter(|h| h.alive).count() as i64);
    }
    registry.register("berth_shims_alive", "berth-shim processes alive", shims);
    let sessions: Gauge = Gauge::default();
    sessions.set(s.stream.sessions_open() as i64);
    registry.register(
        "berth_stream_sessions",
        "Exec, Attach and PortForward sessions open",
        sessions,
    );

    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    text
}

async fn answer(
    req: Request<Incoming>,
    sources: Arc<Sources>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
        Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(scrape(&sources).await)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                b"berthd serves GET /metrics\n",
            )))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Binds `addr` and serves scrapes until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    sources: Sources,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics served");
    let sources = Arc::new(sources);
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, sources.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}
