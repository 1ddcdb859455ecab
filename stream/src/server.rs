//! The streaming server: HTTP/1.1 on the configured address, one route
//! per verb (`/exec/{token}`, `/attach/{token}`, `/portforward/{token}`,
//! GET or POST), the token taken on first use, then the upgrade to SPDY
//! or WebSocket and the protocol over it.

use crate::remotecommand::{Command, Version};
use crate::request::{Request, Runtime};
use crate::spdy::{Role, Session};
use crate::tokens::{TokenError, Tokens};
use crate::{over_spdy, ws};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client has to open its streams (SPDY).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A session with no traffic either way for this long is ended.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Sessions served at once; more are answered 429.
pub const MAX_SESSIONS: usize = 256;

/// Remote command protocols over SPDY, in the server's order.
pub const SPDY_REMOTE_COMMAND: &[(&str, Version)] = &[
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// The port-forward protocol over SPDY.
pub const PORT_FORWARD: &str = "portforward.k8s.io";

pub type Response = http::Response<Full<Bytes>>;

pub struct Config {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// Serve HTTPS with this (see tls.rs); URLs are then https.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub stream_creation_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
}

impl Config {
    pub fn new(addr: SocketAddr) -> Config {
        Config {
            addr,
            tls: None,
            stream_creation_timeout: STREAM_CREATION_TIMEOUT,
            idle_timeout: STREAM_IDLE_TIMEOUT,
            max_sessions: MAX_SESSIONS,
        }
    }
}

struct State {
    tokens: Tokens,
    runtime: Arc<dyn Runtime>,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    creation_timeout: Duration,
    idle_timeout: Duration,
}

/// The running server: hands out URLs for requests.
#[derive(Clone)]
pub struct StreamServer {
    state: Arc<State>,
    base: String,
    addr: SocketAddr,
}

impl StreamServer {
    /// Streaming sessions open now.
    pub fn sessions_open(&self) -> usize {
        self.state
            .max_sessions
            .saturating_sub(self.state.sessions.available_permits())
    }

    /// Binds `config.addr` and serves on the current tokio runtime.
    pub async fn start(config: Config, runtime: Arc<dyn Runtime>) -> std::io::Result<StreamServer> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            tokens: Tokens::default(),
            runtime,
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            max_sessions: config.max_sessions,
            creation_timeout: config.stream_creation_timeout,
            idle_timeout: config.idle_timeout,
        });
        let host = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let server = StreamServer {
            state: state.clone(),
            base: format!("{scheme}://{host}"),
            addr,
        };
        let tls = config.tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(accept_loop(listener, state, tls));
        tracing::info!(%addr, "streaming server listening");
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client opens for `req` (absolute, single use).
    pub fn url_for(&self, req: Request) -> Result<String, TokenError> {
        let verb = req.verb();
        let token = self.state.tokens.insert(req)?;
        Ok(format!("{}/{verb}/{token}", self.base))
    }
}

/// How long a client has for the TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(conn, peer, state).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(conn)).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, state).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "streaming: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "streaming: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, state: Arc<State>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
    }
}

pub(crate) fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    let mut text: String = body.into();
    text.push('\n');
    let mut r = http::Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "404 page not found")
}

/// Whether header `name`'s comma-separated values hold `token`
/// (case-blind).
pub(crate) fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Every value of a repeatable, comma-separated header, in order.
pub(crate) fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

async fn route(state: Arc<State>, mut req: http::Request<Incoming>) -> Response {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(verb), Some(token)) = (parts.next(), parts.next()) else {
        return not_found();
    };
    if token.is_empty() || token.contains('/') {
        return not_found();
    }
    let Some(request) = state.tokens.take(token) else {
        tracing::debug!(verb, "streaming: unknown, used or expired token");
        return not_found();
    };
    if request.verb() != verb {
        return not_found();
    }
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        let mut r = plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many streaming sessions at once",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return r;
    };
    let headers = req.headers();
    let websocket = has_token(headers, header::UPGRADE, "websocket")
        && has_token(headers, header::CONNECTION, "upgrade");
    if websocket {
        return ws::upgrade(
            req,
            request,
            state.runtime.clone(),
            state.idle_timeout,
            permit,
        );
    }
    if !(has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "SPDY/3.1"))
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    let offered = list(headers, "x-stream-protocol-version");
    if offered.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: header X-Stream-Protocol-Version does not exist in request",
        );
    }
    let server: Vec<&str> = match &request {
        Request::PortForward(_) => vec![PORT_FORWARD],
        _ => SPDY_REMOTE_COMMAND.iter().map(|(p, _)| *p).collect(),
    };
    let Some(chosen) = offered
        .iter()
        .find(|p| server.contains(&p.as_str()))
        .cloned()
    else {
        let mut r = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {server:?}"
            ),
        );
        for p in &server {
            r.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(p),
            );
        }
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let runtime = state.runtime.clone();
    let creation = state.creation_timeout;
    let idle = state.idle_timeout;
    let protocol = chosen.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "streaming: the SPDY upgrade failed");
                return;
            }
        };
        let io = crate::idle::Idle::new(TokioIo::new(upgraded), idle);
        let session = Session::new(io, Role::Server);
        serve_spdy(session, &protocol, request, runtime, creation).await;
    });
    let mut r = http::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&chosen) {
        h.insert("x-stream-protocol-version", v);
    }
    r
}

/// Serves one SPDY session (after an upgrade, or in a WebSocket tunnel).
pub(crate) async fn serve_spdy(
    session: Session,
    protocol: &str,
    request: Request,
    runtime: Arc<dyn Runtime>,
    creation: Duration,
) {
    let version = SPDY_REMOTE_COMMAND
        .iter()
        .find(|(p, _)| *p == protocol)
        .map(|(_, v)| *v)
        .unwrap_or(Version::V1);
    match request {
        Request::Exec(r) => {
            tracing::debug!(container = %r.container_id, ?version, "exec over SPDY");
            over_spdy::remote_command(session, version, Command::Exec(r), runtime, creation).await
        }
        Request::Attach(r) => {
            tracing::debug!(container = %r.container_id, ?version, "attach over SPDY");
            over_spdy::remote_command(session, version, Command::Attach(r), runtime, creation).await
        }
        Request::PortForward(r) => {
            tracing::debug!(sandbox = %r.sandbox_id, "port-forward over SPDY");
            over_spdy::port_forward(session, r.sandbox_id, runtime, creation).await
        }
    }
}
