//! berth's own streaming client: opens a URL the CRI calls answered, over
//! SPDY/3.1 or WebSocket, the way Kubernetes' clients do. Used by berth's
//! tests and benchmarks; the real clients (kubelet, crictl) are Go.

use crate::remotecommand::Version;
use crate::spdy::{Headers, Role, Session, Stream};
use crate::ws::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, TUNNEL};
use crate::TermSize;
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// Host (with port) and path of an `http://` or `https://` URL, and
/// whether it is https.
fn split_url(url: &str) -> Result<(String, String, bool)> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => {
            return Err(ClientError::Protocol(format!(
                "{url}: not an http(s):// URL"
            )))
        }
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{path}"), tls))
}

/// The roots https URLs are checked against (see [`trust`]).
static ROOTS: std::sync::RwLock<Option<std::sync::Arc<rustls::ClientConfig>>> =
    std::sync::RwLock::new(None);

/// Trusts the TLS configuration `config` (e.g. [`crate::tls::client_config`])
/// for every https URL this client opens from now on.
pub fn trust(config: std::sync::Arc<rustls::ClientConfig>) {
    if let Ok(mut r) = ROOTS.write() {
        *r = Some(config);
    }
}

/// A connection to a streaming server: plain TCP or TLS.
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Conn for T {}

async fn dial(host: &str, tls: bool) -> Result<Box<dyn Conn>> {
    let tcp = TcpStream::connect(host).await?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = ROOTS
        .read()
        .ok()
        .and_then(|r| r.clone())
        .ok_or_else(|| ClientError::Protocol("an https URL, and no roots trusted".into()))?;
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server = rustls_pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| ClientError::Protocol(format!("{name}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server, tcp)
        .await?;
    Ok(Box::new(stream))
}

/// An upgraded SPDY connection.
pub struct SpdyConn {
    pub session: Session,
    /// The protocol the server chose (`X-Stream-Protocol-Version`).
    pub protocol: String,
}

/// POSTs an upgrade to SPDY/3.1 offering `protocols`; the server's status
/// and body when it refuses.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Result<SpdyConn> {
    let (host, path, tls) = split_url(url)?;
    let mut tcp = dial(&host, tls).await?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // The response head, a byte at a time: what follows is SPDY.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await? == 0 {
            return Err(ClientError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        head.push(b[0]);
        if head.len() > 16 * 1024 {
            return Err(ClientError::Protocol("a response head over 16 KiB".into()));
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("a bad status line: {text:?}")))?;
    let header = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    if status != 101 {
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut body))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        body.truncate(n);
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    let protocol = header("x-stream-protocol-version").unwrap_or_default();
    Ok(SpdyConn {
        session: Session::new(tcp, Role::Client),
        protocol,
    })
}

/// What a remote command sends and receives.
#[derive(Debug, Clone, Default)]
pub struct CommandIo {
    /// Sent, then stdin ended (None: no stdin stream).
    pub stdin: Option<Vec<u8>>,
    /// Keep stdin open (after sending) until the command ends.
    pub hold_stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub resize: Vec<TermSize>,
}

/// What a remote command gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// What the error stream said (empty: nothing).
    pub status: Vec<u8>,
}

impl CommandOutput {
    /// The exit code the status says (v4 JSON), 0 for success or none.
    pub fn exit_code(&self) -> Option<i32> {
        if self.status.is_empty() {
            return Some(0);
        }
        let v: serde_json::Value = serde_json::from_slice(&self.status).ok()?;
        match v["status"].as_str()? {
            "Success" => Some(0),
            _ => v["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
        }
    }
}

fn stream_type(kind: &str) -> Headers {
    vec![("streamType".to_string(), kind.to_string())]
}

/// Runs an exec or attach URL over SPDY as client-go does: the streams in
/// its order, stdin copied then ended, output read to the end, then the
/// error stream.
pub async fn remote_command_spdy(url: &str, io: CommandIo) -> Result<(String, CommandOutput)> {
    let conn = spdy_upgrade(
        url,
        &[
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ],
    )
    .await?;
    let s = &conn.session;
    let open = |kind: &'static str| async move {
        s.open(stream_type(kind))
            .await
            .map_err(|e| ClientError::Protocol(format!("{kind} stream: {e}")))
    };
    let mut error = open("error").await?;
    let stdin = match &io.stdin {
        Some(_) => Some(open("stdin").await?),
        None => None,
    };
    let stdout = if io.stdout {
        Some(open("stdout").await?)
    } else {
        None
    };
    let stderr = if io.stderr && !io.tty {
        Some(open("stderr").await?)
    } else {
        None
    };
    let resize = if io.tty {
        Some(open("resize").await?)
    } else {
        None
    };
    if let Some(r) = &resize {
        for size in &io.resize {
            let msg = format!("{{\"Width\":{},\"Height\":{}}}\n", size.width, size.height);
            let _ = r.send(Bytes::from(msg)).await;
        }
    }
    let mut held = None;
    if let (Some(st), Some(data)) = (stdin, io.stdin.clone()) {
        let _ = st.send(Bytes::from(data)).await;
        if io.hold_stdin {
            held = Some(st);
        } else {
            let _ = st.finish().await;
        }
    }
    let read = |s: Option<Stream>| async move {
        match s {
            Some(mut s) => s.read_to_end(1 << 30).await,
            None => Vec::new(),
        }
    };
    let (out, err) = tokio::join!(read(stdout), read(stderr));
    let status = error.read_to_end(1 << 20).await;
    drop(held);
    Ok((
        conn.protocol,
        CommandOutput {
            stdout: out,
            stderr: err,
            status,
        },
    ))
}

/// A WebSocket connection after the handshake.
pub type WsConn = tokio_tungstenite::WebSocketStream<Box<dyn Conn>>;

/// Opens `url` as a WebSocket offering `protocols`; answers the chosen
/// protocol.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(WsConn, String)> {
    let (host, _, tls) = split_url(url)?;
    let ws_url = if tls {
        url.replacen("https://", "wss://", 1)
    } else {
        url.replacen("http://", "ws://", 1)
    };
    let mut req = ws_url
        .into_client_request()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if !protocols.is_empty() {
        let v = protocols.join(", ");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            v.parse()
                .map_err(|_| ClientError::Protocol("a bad protocol list".into()))?,
        );
    }
    let conn = dial(&host, tls).await?;
    let (ws, resp) = match tokio_tungstenite::client_async(req, conn).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(ClientError::Refused {
                status: resp.status().as_u16(),
                body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .to_string(),
            })
        }
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, chosen))
}

/// Runs an exec or attach URL over WebSocket with `protocol` (binary or
/// base64 framing by its name): stdin sent then, under v5, closed with
/// the close signal; everything read until the server closes.
pub async fn remote_command_ws(
    url: &str,
    protocol: &str,
    io: CommandIo,
) -> Result<(CommandOutput, Vec<(u8, usize)>)> {
    let (ws, _) = ws_connect(url, &[protocol]).await?;
    let base64 = protocol.contains("base64");
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut sink, mut stream) = ws.split();
    let msg = |ch: u8, data: &[u8]| {
        if base64 {
            let mut t = String::from(char::from(b'0' + ch));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut t);
            Message::text(t)
        } else {
            let mut b = vec![ch];
            b.extend_from_slice(data);
            Message::Binary(Bytes::from(b))
        }
    };
    for size in &io.resize {
        let j = format!("{{\"Width\":{},\"Height\":{}}}\n", size.width, size.height);
        sink.send(msg(RESIZE, j.as_bytes()))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
    }
    if let Some(data) = &io.stdin {
        sink.send(msg(STDIN, data))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if v5 && !io.hold_stdin {
            sink.send(Message::Binary(Bytes::from(vec![CLOSE, STDIN])))
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
    }
    let mut out = CommandOutput::default();
    // Every message's channel and size, in order (for protocol checks).
    let mut seen = Vec::new();
    while let Some(m) = stream.next().await {
        let m = m.map_err(|e| ClientError::Protocol(e.to_string()))?;
        let data: Vec<u8> = match m {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => {
                let bytes = t.as_bytes();
                let Some((&c, rest)) = bytes.split_first() else {
                    continue;
                };
                let mut v = vec![c.wrapping_sub(b'0')];
                v.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?,
                );
                v
            }
            Message::Close(frame) => {
                let normal = frame.as_ref().is_some_and(|f| u16::from(f.code) == 1000);
                if !normal {
                    return Err(ClientError::Protocol(format!(
                        "closed without a normal close: {frame:?}"
                    )));
                }
                break;
            }
            _ => continue,
        };
        let Some((&ch, payload)) = data.split_first() else {
            return Err(ClientError::Protocol("an empty message".into()));
        };
        seen.push((ch, payload.len()));
        match ch {
            STDOUT => out.stdout.extend_from_slice(payload),
            STDERR => out.stderr.extend_from_slice(payload),
            ERROR => out.status.extend_from_slice(payload),
            _ => {}
        }
    }
    Ok((out, seen))
}

/// A port-forward session over SPDY (after an upgrade or in a WebSocket
/// tunnel): each [`PortForward::connect`] is one forwarded connection.
pub struct PortForward {
    session: Session,
    next_request: std::sync::atomic::AtomicU32,
    _tunnel: Option<tokio::task::JoinHandle<()>>,
}

/// One forwarded connection: its data stream, and its error stream (what
/// the server says went wrong, then its end).
pub struct Forwarded {
    pub data: Stream,
    pub error: Stream,
}

impl PortForward {
    pub async fn spdy(url: &str) -> Result<PortForward> {
        let conn = spdy_upgrade(url, &["portforward.k8s.io"]).await?;
        if conn.protocol != "portforward.k8s.io" {
            return Err(ClientError::Protocol(format!(
                "the server chose {:?}",
                conn.protocol
            )));
        }
        Ok(PortForward {
            session: conn.session,
            next_request: 0.into(),
            _tunnel: None,
        })
    }

    /// SPDY tunnelled in WebSocket binary messages (crictl's websocket
    /// transport).
    pub async fn tunnel(url: &str) -> Result<PortForward> {
        let (ws, chosen) = ws_connect(url, &[TUNNEL]).await?;
        if chosen != TUNNEL {
            return Err(ClientError::Protocol(format!(
                "the server chose {chosen:?}"
            )));
        }
        let (near, far) = tokio::io::duplex(256 * 1024);
        let (mut far_read, mut far_write) = tokio::io::split(far);
        let (mut sink, mut stream) = ws.split();
        let pump = tokio::spawn(async move {
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match far_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sink
                                .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                let _ = sink.close().await;
            };
            let down = async {
                while let Some(Ok(m)) = stream.next().await {
                    match m {
                        Message::Binary(b) if far_write.write_all(&b).await.is_err() => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = far_write.shutdown().await;
            };
            tokio::join!(up, down);
        });
        Ok(PortForward {
            session: Session::new(near, Role::Client),
            next_request: 0.into(),
            _tunnel: Some(pump),
        })
    }

    /// Opens the error then the data stream for `port`, as client-go does
    /// (the error stream finished at once: the client never writes on it).
    pub async fn connect(&self, port: u16) -> Result<Forwarded> {
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let headers = |kind: &str| -> Headers {
            vec![
                ("streamType".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestID".into(), id.to_string()),
            ]
        };
        let error = self
            .session
            .open(headers("error"))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let _ = error.finish().await;
        let data = self
            .session
            .open(headers("data"))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Forwarded { data, error })
    }

    /// Ends the session (GOAWAY).
    pub async fn close(&self) {
        self.session.go_away().await
    }
}

/// The version a remote command protocol name stands for.
pub fn version_of(protocol: &str) -> Option<Version> {
    crate::server::SPDY_REMOTE_COMMAND
        .iter()
        .find(|(p, _)| *p == protocol)
        .map(|(_, v)| *v)
}
