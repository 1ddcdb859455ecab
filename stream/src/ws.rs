//! The WebSocket side: Kubernetes' channel protocols for Exec and Attach
//! (every message is `[channel][payload]`, or a text message `'0'+channel`
//! then base64 for the base64 protocols; v5 adds the close signal
//! `[255, channel]`), port-forward by channel pairs, and SPDY tunnelled in
//! binary messages (`SPDY/3.1+portforward.k8s.io`).

use crate::remotecommand::{output, spawn_resize_parser, status_message, Command, Version};
use crate::request::{PortForwardRequest, ProcessIo, Request, Runtime};
use crate::server::{list, plain, Response, STREAM_CREATION_TIMEOUT};
use crate::spdy::{Role as SpdyRole, Session};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Channels of remote commands.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` ends a channel.
pub const CLOSE: u8 = 255;

/// The SPDY-in-WebSocket port-forward protocol.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The largest message accepted.
const MAX_MESSAGE: usize = 32 << 20;

/// Exec and Attach protocols: name, version, base64 framing.
const REMOTE_COMMAND: &[(&str, Version, bool)] = &[
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("channel.k8s.io", Version::V1, false),
    ("base64.channel.k8s.io", Version::V1, true),
    ("", Version::V1, false),
];

/// Native port-forward protocols (not the tunnel).
const PORT_FORWARD_CHANNELS: &[(&str, bool)] = &[
    ("v4.channel.k8s.io", false),
    ("v4.base64.channel.k8s.io", true),
    ("", false),
];

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Answers a WebSocket upgrade for `request` and serves it.
pub(crate) fn upgrade(
    mut req: http::Request<Incoming>,
    request: Request,
    runtime: Arc<dyn Runtime>,
    idle: Duration,
    permit: OwnedSemaphorePermit,
) -> Response {
    let headers = req.headers();
    if req.method() != http::Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade must be a GET",
        );
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut r = plain(StatusCode::BAD_REQUEST, "unsupported Sec-WebSocket-Version");
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return plain(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key");
    };
    let mut offered = list(headers, "sec-websocket-protocol");
    if offered.is_empty() {
        offered.push(String::new());
    }
    let chosen: Option<Mode> = offered.iter().find_map(|p| mode_for(&request, p));
    let Some(mode) = chosen else {
        return plain(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: no supported protocol among {offered:?}"),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let protocol = mode.name();
    tokio::spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "streaming: the WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(ws, mode, request, runtime, idle).await;
    });
    let mut r = http::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        if let Ok(v) = HeaderValue::from_str(protocol) {
            h.insert("sec-websocket-protocol", v);
        }
    }
    r
}

/// What a negotiated protocol makes of the connection.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Command {
        name: &'static str,
        version: Version,
        base64: bool,
    },
    PortForward {
        name: &'static str,
        base64: bool,
    },
    Tunnel,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Command { name, .. } | Mode::PortForward { name, .. } => name,
            Mode::Tunnel => TUNNEL,
        }
    }
}

fn mode_for(request: &Request, protocol: &str) -> Option<Mode> {
    match request {
        Request::PortForward(_) => {
            if protocol == TUNNEL {
                return Some(Mode::Tunnel);
            }
            PORT_FORWARD_CHANNELS
                .iter()
                .find(|(p, _)| *p == protocol)
                .map(|(name, base64)| Mode::PortForward {
                    name,
                    base64: *base64,
                })
        }
        _ => {
            REMOTE_COMMAND
                .iter()
                .find(|(p, _, _)| *p == protocol)
                .map(|(name, version, base64)| Mode::Command {
                    name,
                    version: *version,
                    base64: *base64,
                })
        }
    }
}

async fn serve(ws: Ws, mode: Mode, request: Request, runtime: Arc<dyn Runtime>, idle: Duration) {
    match (mode, request) {
        (
            Mode::Command {
                version, base64, ..
            },
            Request::Exec(r),
        ) => remote_command(ws, version, base64, Command::Exec(r), runtime, idle).await,
        (
            Mode::Command {
                version, base64, ..
            },
            Request::Attach(r),
        ) => remote_command(ws, version, base64, Command::Attach(r), runtime, idle).await,
        (Mode::PortForward { base64, .. }, Request::PortForward(r)) => {
            port_forward(ws, base64, r, runtime, idle).await
        }
        (Mode::Tunnel, Request::PortForward(r)) => tunnel(ws, r, runtime, idle).await,
        _ => {}
    }
}

/// One message on channel `ch` in the negotiated framing.
fn frame(base64: bool, ch: u8, payload: &[u8]) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + payload.len() * 4 / 3 + 4);
        text.push(char::from(b'0'.wrapping_add(ch)));
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut text);
        Message::text(text)
    } else {
        let mut b = BytesMut::with_capacity(1 + payload.len());
        b.extend_from_slice(&[ch]);
        b.extend_from_slice(payload);
        Message::Binary(b.freeze())
    }
}

/// A message's channel and payload; `None` for control messages and
/// anything undecodable (dropped, as the reference does).
pub fn unframe(base64: bool, msg: Message) -> Option<(u8, Bytes)> {
    let data: Bytes = match msg {
        Message::Binary(b) => b,
        Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
        _ => return None,
    };
    let (&first, rest) = data.split_first()?;
    if base64 && first != CLOSE {
        let ch = first.wrapping_sub(b'0');
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        return Some((ch, Bytes::from(decoded)));
    }
    Some((first, data.slice(1..)))
}

/// The client's next message; `None` once it closed, failed, or sent
/// nothing for `idle`.
async fn next_message(
    stream: &mut futures::stream::SplitStream<Ws>,
    idle: Duration,
) -> Option<Message> {
    match tokio::time::timeout(idle, stream.next()).await {
        Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => None,
        Ok(Some(Ok(m))) => Some(m),
    }
}

/// The writer side: every message goes through one task.
fn spawn_writer(
    mut sink: futures::stream::SplitSink<Ws, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, task)
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

async fn remote_command(
    ws: Ws,
    version: Version,
    base64: bool,
    command: Command,
    runtime: Arc<dyn Runtime>,
    idle: Duration,
) {
    let want = command.wanted();
    let (sink, mut stream) = ws.split();
    let (out, writer) = spawn_writer(sink);
    // The first writable channel says the connection is ready.
    let first = if want.stdout {
        STDOUT
    } else if want.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send(frame(base64, first, &[])).await;
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(8);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut stdin = want.stdin.then_some(stdin_tx);
        let mut resize = want.tty.then_some(resize_tx);
        while let Some(msg) = next_message(&mut stream, idle).await {
            let Some((ch, payload)) = unframe(base64, msg) else {
                continue;
            };
            match ch {
                CLOSE if version == Version::V5 => {
                    if payload.len() != 1 {
                        tracing::debug!("a malformed close signal ends the connection");
                        break;
                    }
                    match payload[0] {
                        STDIN => stdin = None,
                        RESIZE => resize = None,
                        _ => {}
                    }
                }
                STDIN => {
                    if let Some(tx) = &stdin {
                        if !payload.is_empty() && tx.send(payload).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize {
                        if tx.send(payload).await.is_err() {
                            resize = None;
                        }
                    }
                }
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let mut pumps = Vec::new();
    let mut pump = |on: bool, ch: u8| {
        on.then(|| {
            let (tx, mut rx) = output();
            let out = out.clone();
            pumps.push(tokio::spawn(async move {
                let mut ok = true;
                while let Some(b) = rx.recv().await {
                    ok = ok && out.send(frame(base64, ch, &b)).await.is_ok();
                }
            }));
            tx
        })
    };
    let (stdout, stderr) = (pump(want.stdout, STDOUT), pump(want.stderr, STDERR));
    let io = ProcessIo {
        tty: want.tty,
        stdin: want.stdin.then_some(stdin_rx),
        stdout,
        stderr,
        resize: want.tty.then(|| spawn_resize_parser(resize_rx)),
        gone: Box::pin(async move {
            let _ = gone_rx.await;
        }),
    };
    let outcome = command.clone().run(&runtime, io).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(pumps)).await;
    if let Some(msg) = status_message(version, &command, &outcome) {
        let _ = out.send(frame(base64, ERROR, &msg)).await;
    }
    let _ = out.send(normal_close()).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    reader.abort();
}

/// Native WebSocket port-forward: the ports the CRI call named, each
/// with a data channel (2i) and an error channel (2i+1), both opened by
/// the port number (two bytes, little-endian).
async fn port_forward(
    ws: Ws,
    base64: bool,
    request: PortForwardRequest,
    runtime: Arc<dyn Runtime>,
    idle: Duration,
) {
    let (sink, mut stream) = ws.split();
    let (out, writer) = spawn_writer(sink);
    let ports = request.ports.clone();
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out.send(frame(base64, ch, &port.to_le_bytes())).await;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(tx));
        let (runtime, out, sandbox, port) = (
            runtime.clone(),
            out.clone(),
            request.sandbox_id.clone(),
            *port,
        );
        forwards.push(tokio::spawn(async move {
            let conn = match runtime.connect(&sandbox, port).await {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {sandbox}, uid : {e}");
                    let _ = out.send(frame(base64, err_ch, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut from_pod, mut to_pod) = conn.into_split();
            let up = async move {
                while let Some(b) = rx.recv().await {
                    if to_pod.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = to_pod.shutdown().await;
            };
            let down = async {
                let mut buf = BytesMut::with_capacity(32 * 1024);
                loop {
                    buf.reserve(32 * 1024);
                    match from_pod.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let chunk = buf.split();
                            if out.send(frame(base64, data_ch, &chunk)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            // The pod closing its side ends this port's forward.
            tokio::select! {
                _ = down => {}
                _ = up => {}
            }
        }));
    }
    let reader = tokio::spawn(async move {
        while let Some(msg) = next_message(&mut stream, idle).await {
            let Some((ch, payload)) = unframe(base64, msg) else {
                continue;
            };
            let i = usize::from(ch);
            if i % 2 == 0 {
                if let Some(Some(tx)) = inputs.get(i / 2) {
                    if tx.send(payload).await.is_err() {
                        inputs[i / 2] = None;
                    }
                }
            }
        }
    });
    let all = futures::future::join_all(forwards);
    tokio::select! {
        _ = all => {}
        _ = reader => {}
    }
    let _ = out.send(normal_close()).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
}

/// SPDY in binary messages: the payloads in each direction are one byte
/// stream, and the port-forward protocol runs over it as over an upgrade.
async fn tunnel(ws: Ws, request: PortForwardRequest, runtime: Arc<dyn Runtime>, idle: Duration) {
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (sink, mut stream) = ws.split();
    let (out, writer) = spawn_writer(sink);
    let inbound = tokio::spawn(async move {
        while let Some(msg) = next_message(&mut stream, idle).await {
            if let Message::Binary(b) = msg {
                if far_write.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
        let _ = far_write.shutdown().await;
    });
    let outbound = {
        let out = out.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                buf.reserve(64 * 1024);
                match far_read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if out
                            .send(Message::Binary(buf.split().freeze()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        })
    };
    let session = Session::new(near, SpdyRole::Server);
    crate::over_spdy::port_forward(
        session,
        request.sandbox_id,
        runtime,
        STREAM_CREATION_TIMEOUT,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), outbound).await;
    inbound.abort();
    let _ = out.send(normal_close()).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
}
