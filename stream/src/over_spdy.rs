//! Exec, Attach and PortForward over a SPDY session (after the HTTP
//! upgrade, or inside a WebSocket tunnel), as Kubernetes' clients open
//! them: one stream per stdio channel (`streamtype`), or a data and an
//! error stream per forwarded connection (`port`, `requestid`).

use crate::remotecommand::{output, spawn_resize_parser, status_message, Command, Version};
use crate::request::{ProcessIo, Runtime};
use crate::spdy::{frame::rst, Session, Stream, StreamSender};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the output pumps may take to flush after the process ended.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Read size when copying a forwarded connection.
const FORWARD_CHUNK: usize = 128 * 1024;

/// Runs `command` over `session`: waits for the client's streams, runs,
/// reports on the error stream, then ends the session.
pub async fn remote_command(
    mut session: Session,
    version: Version,
    command: Command,
    runtime: Arc<dyn Runtime>,
    creation_timeout: Duration,
) {
    let want = command.wanted();
    let mut expected = vec!["error"];
    for (on, kind) in [
        (want.stdin, "stdin"),
        (want.stdout, "stdout"),
        (want.stderr, "stderr"),
        (want.tty && version >= Version::V3, "resize"),
    ] {
        if on {
            expected.push(kind);
        }
    }
    let mut streams: HashMap<&'static str, Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + creation_timeout;
    while streams.len() < expected.len() {
        let stream = match tokio::time::timeout_at(deadline, session.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(
                    got = streams.len(),
                    expected = expected.len(),
                    "timed out waiting for the client to create streams"
                );
                session.go_away().await;
                return;
            }
        };
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        match expected.iter().find(|k| **k == kind) {
            Some(k) if !streams.contains_key(k) => {
                streams.insert(k, stream);
            }
            _ => tracing::debug!(kind, "an unexpected stream is ignored"),
        }
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    // Senders of the client→server streams stay open until the end: a
    // FIN on stdin would tell the client to stop sending.
    let mut held: Vec<StreamSender> = Vec::new();
    let stdin = streams.remove("stdin").map(|s| {
        let (rx, tx) = s.split();
        held.push(tx);
        rx
    });
    if version == Version::V1 {
        // The first protocol's server ended its side of stdin at once.
        held.clear();
    }
    let resize = streams.remove("resize").map(|s| {
        let (rx, tx) = s.split();
        held.push(tx);
        spawn_resize_parser(rx)
    });
    let mut pumps = Vec::new();
    let mut out = |kind: &str| {
        streams.remove(kind).map(|s| {
            let (tx, mut rx) = output();
            let (_, sender) = s.split();
            pumps.push(tokio::spawn(async move {
                let mut ok = true;
                while let Some(b) = rx.recv().await {
                    // A client gone: the rest is drained and dropped, so
                    // the process is never stuck writing.
                    ok = ok && sender.send(b).await.is_ok();
                }
                let _ = sender.finish().await;
            }));
            tx
        })
    };
    let (stdout, stderr) = (out("stdout"), out("stderr"));
    let gone = session.handle();
    let io = ProcessIo {
        tty: want.tty,
        stdin,
        stdout,
        stderr,
        resize,
        gone: Box::pin(async move { gone.closed().await }),
    };
    let outcome = command.clone().run(&runtime, io).await;
    let flushed = tokio::time::timeout(FLUSH_LIMIT, futures::future::join_all(pumps)).await;
    if flushed.is_err() {
        tracing::debug!("output still flowing after the process ended: cut");
    }
    if let Some(msg) = status_message(version, &command, &outcome) {
        let _ = error.send(Bytes::from(msg)).await;
    }
    let _ = error.finish().await;
    drop(held);
    drop(error);
    session.go_away().await;
}

/// One forwarded connection's streams, as they arrive.
struct Pair {
    port: u16,
    error: Option<Stream>,
    data: Option<Stream>,
    since: Instant,
}

/// Serves port-forward streams on `session` until the client ends it.
pub async fn port_forward(
    mut session: Session,
    sandbox_id: String,
    runtime: Arc<dyn Runtime>,
    creation_timeout: Duration,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = session.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = tick.tick() => {
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() >= creation_timeout)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in stale {
                    if let Some(p) = pairs.remove(&id) {
                        tracing::debug!(request = %id, "timed out waiting for the port-forward streams");
                        if let Some(e) = p.error {
                            let msg = format!("(request={id}) timed out waiting for streams");
                            let _ = e.send(Bytes::from(msg)).await;
                            e.sender().reset(rst::CANCEL).await;
                        }
                    }
                }
                continue;
            }
        };
        let port = stream
            .header("port")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p > 0);
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let Some(port) = port.filter(|_| kind == "error" || kind == "data") else {
            tracing::debug!(kind, port = ?stream.header("port"), "a port-forward stream refused");
            stream.sender().reset(rst::CANCEL).await;
            continue;
        };
        // Old clients name no request: the error stream's id pairs with
        // the data stream opened right after it.
        let request = match stream.header("requestid") {
            Some(r) => r.to_string(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
            port,
            error: None,
            data: None,
            since: Instant::now(),
        });
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            if let Some(e) = &pair.error {
                let msg = format!(
                    "error processing stream for request {request}: {kind} stream already assigned"
                );
                let _ = e.send(Bytes::from(msg)).await;
            }
            stream.sender().reset(rst::CANCEL).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                port,
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request)
            {
                tokio::spawn(forward(
                    runtime.clone(),
                    sandbox_id.clone(),
                    port,
                    error,
                    data,
                ));
            }
        }
    }
    session.go_away().await;
}

/// Copies one forwarded connection both ways; a failure goes on its error
/// stream.
async fn forward(
    runtime: Arc<dyn Runtime>,
    sandbox_id: String,
    port: u16,
    error: Stream,
    data: Stream,
) {
    let conn = match runtime.connect(&sandbox_id, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox_id}, uid : {e}");
            tracing::debug!(%msg, "port-forward");
            let _ = error.send(Bytes::from(msg)).await;
            error.sender().reset(rst::CANCEL).await;
            data.sender().reset(rst::CANCEL).await;
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    let (mut from_pod, mut to_pod) = conn.into_split();
    let (mut from_client, to_client) = data.split();
    let upstream = async move {
        while let Some(b) = from_client.recv().await {
            if to_pod.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = {
        let to_client = to_client.clone();
        async move {
            let mut buf = BytesMut::with_capacity(FORWARD_CHUNK);
            loop {
                buf.reserve(FORWARD_CHUNK);
                match from_pod.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if to_client.send(buf.split().freeze()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to_client.finish().await;
        }
    };
    tokio::join!(upstream, downstream);
    let _ = error.finish().await;
    drop(to_client);
}
