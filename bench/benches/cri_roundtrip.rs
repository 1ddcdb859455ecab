//! Round trips over the CRI socket, with 1 and 32 concurrent clients:
//!
//! - `Version`: answered at berth's front door;
//! - `Status`: through the front door to the NetworkActor and back;
//! - admin `PingActor`: through the admin door to an actor's mailbox and back;
//!
//! beside the floor (a bare tonic server answering Version on a unix socket
//! in this process: the cost of gRPC itself) and the peer (containerd's CRI,
//! started with shared/peers/containerd-peer when it is there).
//!
//! The clients share one thread (a current-thread runtime), so that the
//! figures measure the servers rather than the client's thread hops; with
//! 32 clients that one thread is also the throughput ceiling.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench cri_roundtrip

use berth_bench::{table, time_serial, Peer, Samples};
use berth_protocol::admin::admin_client::AdminClient;
use berth_protocol::admin::PingActorRequest;
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::{StatusRequest, VersionRequest, VersionResponse};
use berth_tests::Daemon;
use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const SERIAL: usize = 3000;
const CLIENTS: usize = 32;
const PER_CLIENT: usize = 200;

/// The floor: a tonic server that answers Version and nothing else.
#[derive(Clone)]
struct FloorVersion;

impl tonic::server::NamedService for FloorVersion {
    const NAME: &'static str = "runtime.v1.RuntimeService";
}

struct Answer;

impl tonic::server::UnaryService<VersionRequest> for Answer {
    type Response = VersionResponse;
    type Future = futures::future::Ready<Result<tonic::Response<VersionResponse>, tonic::Status>>;
    fn call(&mut self, _req: tonic::Request<VersionRequest>) -> Self::Future {
        futures::future::ready(Ok(tonic::Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "floor".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        })))
    }
}

impl tower::Service<http::Request<tonic::body::BoxBody>> for FloorVersion {
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::BoxBody>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic::codec::ProstCodec::default());
            Ok(grpc.unary(Answer, req).await)
        })
    }
}

/// Serves the floor in this process until killed (the bench runs itself
/// again with `--floor SOCKET`, so that the floor, like berthd, is another
/// process than the clients).
async fn serve_floor(socket: &Path) {
    let listener = tokio::net::UnixListener::bind(socket).expect("floor socket");
    tonic::transport::Server::builder()
        .add_service(FloorVersion)
        .serve_with_incoming(tokio_stream_wrapper(listener))
        .await
        .expect("floor server");
}

struct Floor(std::process::Child);

impl Floor {
    fn start(socket: &Path) -> Floor {
        let child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("--floor")
            .arg(socket)
            .spawn()
            .expect("floor process");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "floor server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Floor(child)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tokio_stream_wrapper(
    l: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

async fn runtime(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(berth_tests::connect(socket).await)
}

#[derive(Clone, Copy)]
enum Call {
    Version,
    Status,
}

async fn cri_call(c: &mut RuntimeServiceClient<Channel>, call: Call) {
    match call {
        Call::Version => {
            c.version(VersionRequest::default()).await.expect("Version");
        }
        Call::Status => {
            c.status(StatusRequest::default()).await.expect("Status");
        }
    }
}

async fn serial(name: &str, socket: &Path, call: Call) -> Samples {
    let c = runtime(socket).await;
    // Warm the connection first.
    for _ in 0..100 {
        cri_call(&mut c.clone(), call).await;
    }
    time_serial(name, SERIAL, || {
        let mut c = c.clone();
        async move { cri_call(&mut c, call).await }
    })
    .await
}

async fn concurrent(name: &str, socket: &Path, call: Call) -> Samples {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = runtime(socket).await;
        cri_call(&mut c, call).await;
        clients.push(c);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(PER_CLIENT);
                for _ in 0..PER_CLIENT {
                    let t = Instant::now();
                    cri_call(&mut c, call).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    Samples::new(name, lat, start.elapsed())
}

async fn ping_serial(name: &str, socket: &Path) -> Samples {
    let c = AdminClient::new(berth_tests::connect(socket).await);
    time_serial(name, SERIAL, || {
        let mut c = c.clone();
        async move {
            c.ping_actor(PingActorRequest {
                name: "network".into(),
            })
            .await
            .expect("ping");
        }
    })
    .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--floor") {
        serve_floor(Path::new(&args[i + 1])).await;
        return;
    }
    let d = {
        let mut d = Daemon::configure_logging("", "warn");
        d.spawn();
        d
    };
    let floor_dir = tempfile::tempdir().expect("tempdir");
    let floor_socket = floor_dir.path().join("floor.sock");
    let _floor = Floor::start(&floor_socket);
    let peer = Peer::start(&[]);

    let floor_1 = serial("floor Version, 1 client", &floor_socket, Call::Version).await;
    let berth_1 = serial("berth Version, 1 client", &d.cri_socket(), Call::Version).await;
    let status_1 = serial(
        "berth Status (via actor), 1 client",
        &d.cri_socket(),
        Call::Status,
    )
    .await;
    let ping_1 = ping_serial("berth admin Ping (via actor), 1 client", &d.admin_socket()).await;
    let floor_32 = concurrent("floor Version, 32 clients", &floor_socket, Call::Version).await;
    let berth_32 = concurrent("berth Version, 32 clients", &d.cri_socket(), Call::Version).await;
    let status_32 = concurrent(
        "berth Status (via actor), 32 clients",
        &d.cri_socket(),
        Call::Status,
    )
    .await;

    let mut rows = vec![
        &floor_1, &berth_1, &status_1, &ping_1, &floor_32, &berth_32, &status_32,
    ];
    let peer_rows = match &peer {
        Some(p) => Some((
            serial("containerd Version, 1 client", &p.socket(), Call::Version).await,
            serial("containerd Status, 1 client", &p.socket(), Call::Status).await,
            concurrent("containerd Version, 32 clients", &p.socket(), Call::Version).await,
        )),
        None => {
            println!(
                "(containerd peer not available: shared/peers/containerd-peer not found or failed)"
            );
            None
        }
    };
    if let Some((a, b, c)) = &peer_rows {
        rows.extend([a, b, c]);
    }
    let mut refs = vec![&floor_1];
    if let Some((a, _, _)) = &peer_rows {
        refs.push(a);
    }
    table("CRI round trips over the unix socket", &rows, &refs);
    println!("\nratios: p50 of the row over p50 of the 1-client reference (floor = bare tonic, containerd = Debian's containerd CRI)");
}
