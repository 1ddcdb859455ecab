//! The streaming server against a fake runtime, through berth's own SPDY
//! and WebSocket clients: tokens, negotiation, every protocol's framing,
//! exit codes, stdin's end, resizes, port-forward, and clients that go.

use berth_stream::client::{
    remote_command_spdy, remote_command_ws, spdy_upgrade, ws_connect, ClientError, CommandIo,
    PortForward,
};
use berth_stream::{
    AttachRequest, Config, ExecRequest, PortForwardRequest, ProcessIo, Request, Runtime,
    StreamError, StreamServer, TermSize,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs "commands" without processes: `cat CODE` copies stdin to stdout
/// (and says "bye" on stderr) and exits with CODE; `sizes` prints each
/// terminal size; `hang` waits for the client to go; `big N` writes N
/// bytes; `fail` cannot run.
#[derive(Default)]
struct Fake {
    gone: AtomicUsize,
}

async fn send(to: &Option<tokio::sync::mpsc::Sender<Bytes>>, b: impl Into<Bytes>) {
    if let Some(t) = to {
        let _ = t.send(b.into()).await;
    }
}

impl Fake {
    async fn run(self: Arc<Self>, cmd: Vec<String>, mut io: ProcessIo) -> Result<(), StreamError> {
        let arg = |i: usize| cmd.get(i).cloned().unwrap_or_default();
        match arg(0).as_str() {
            "cat" => {
                if let Some(mut input) = io.stdin.take() {
                    while let Some(b) = input.recv().await {
                        send(&io.stdout, b).await;
                    }
                }
                send(&io.stderr, "bye").await;
                match arg(1).parse::<i32>().unwrap_or(0) {
                    0 => Ok(()),
                    n => Err(StreamError::ExitCode(n)),
                }
            }
            "sizes" => {
                let mut sizes = io.resize.take().expect("a resize stream");
                for _ in 0..arg(1).parse::<usize>().unwrap_or(1) {
                    let Some(s) = sizes.recv().await else { break };
                    send(&io.stdout, format!("{}x{}\n", s.width, s.height)).await;
                }
                Ok(())
            }
            "hang" => {
                io.gone.await;
                self.gone.fetch_add(1, Ordering::SeqCst);
                Err(StreamError::Failed("client gone".into()))
            }
            "big" => {
                let n: usize = arg(1).parse().unwrap_or(0);
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    send(&io.stdout, chunk.slice(..k)).await;
                    left -= k;
                }
                Ok(())
            }
            "fail" => Err(StreamError::Failed("no such thing".into())),
            other => Err(StreamError::Failed(format!("unknown fake {other}"))),
        }
    }
}

struct FakeRuntime(Arc<Fake>);

impl Runtime for FakeRuntime {
    fn exec(&self, req: ExecRequest, io: ProcessIo) -> BoxFuture<'static, Result<(), StreamError>> {
        Box::pin(self.0.clone().run(req.cmd, io))
    }
    fn attach(
        &self,
        _req: AttachRequest,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), StreamError>> {
        Box::pin(self.0.clone().run(vec!["cat".into()], io))
    }
    fn connect(
        &self,
        _sandbox: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, StreamError>> {
        Box::pin(async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| StreamError::Failed(e.to_string()))
        })
    }
}

async fn server() -> (StreamServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"));
    config.stream_creation_timeout = Duration::from_secs(2);
    let s = StreamServer::start(config, Arc::new(FakeRuntime(fake.clone())))
        .await
        .expect("start");
    (s, fake)
}

fn exec(cmd: &[&str], stdin: bool, tty: bool) -> Request {
    Request::Exec(ExecRequest {
        container_id: "c".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
}

fn io(stdin: &[u8]) -> CommandIo {
    CommandIo {
        stdin: Some(stdin.to_vec()),
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn spdy_exec_carries_stdio_and_the_exit_code() {
    let (s, _) = server().await;
    let url = s.url_for(exec(&["cat", "3"], true, false)).expect("url");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (protocol, out) = remote_command_spdy(&url, io(b"hello")).await.expect("exec");
    assert_eq!(protocol, "v4.channel.k8s.io");
    assert_eq!(out.stdout, b"hello");
    assert_eq!(out.stderr, b"bye");
    assert_eq!(out.exit_code(), Some(3));
    let url = s.url_for(exec(&["cat", "0"], true, false)).expect("url");
    let (_, out) = remote_command_spdy(&url, io(b"")).await.expect("exec");
    assert_eq!(out.exit_code(), Some(0));
    let status: serde_json::Value = serde_json::from_slice(&out.status).expect("json");
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn large_output_arrives_whole() {
    let (s, _) = server().await;
    let n = 20 * 1024 * 1024 + 7;
    let url = s
        .url_for(exec(&["big", &n.to_string()], false, false))
        .expect("url");
    let (_, out) = remote_command_spdy(
        &url,
        CommandIo {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .expect("exec");
    assert_eq!(out.stdout.len(), n);
    let url = s
        .url_for(exec(&["big", &n.to_string()], false, false))
        .expect("url");
    let (out, _) = remote_command_ws(
        &url,
        "v5.channel.k8s.io",
        CommandIo {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .expect("ws exec");
    assert_eq!(out.stdout.len(), n);
}

#[tokio::test]
async fn tokens_are_single_use_and_bound_to_their_verb() {
    let (s, _) = server().await;
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let wrong = url.replace("/exec/", "/attach/");
    let err = spdy_upgrade(&wrong, &["v4.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 404, .. })),
        "{err:?}"
    );
    // Taken by the wrong verb: gone for the right one too.
    let err = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 404, .. })),
        "{err:?}"
    );
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let _ = remote_command_spdy(&url, io(b"")).await.expect("first use");
    let err = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 404, .. })),
        "{err:?}"
    );
    let host = url.split('/').nth(2).expect("host").to_string();
    let err = spdy_upgrade(
        &format!("http://{host}/exec/nosuchtoken"),
        &["v4.channel.k8s.io"],
    )
    .await
    .err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 404, .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn spdy_negotiation_refuses_what_it_cannot_speak() {
    let (s, _) = server().await;
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let err = spdy_upgrade(&url, &[]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 400, ref body }) if body.contains("X-Stream-Protocol-Version")),
        "{err:?}"
    );
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let err = spdy_upgrade(&url, &["v9.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 403, .. })),
        "{err:?}"
    );
    // The client's order wins among what the server speaks.
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let conn = spdy_upgrade(&url, &["v2.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .expect("upgrade");
    assert_eq!(conn.protocol, "v2.channel.k8s.io");
    let url = s
        .url_for(Request::PortForward(PortForwardRequest {
            sandbox_id: "p".into(),
            ports: vec![],
        }))
        .expect("url");
    let err = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 403, .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_client_that_opens_too_few_streams_is_let_go() {
    let (s, _) = server().await;
    let url = s.url_for(exec(&["cat"], true, false)).expect("url");
    let conn = spdy_upgrade(&url, &["v4.channel.k8s.io"])
        .await
        .expect("upgrade");
    // Only the error stream, of the four expected.
    let _e = conn
        .session
        .open(vec![("streamtype".into(), "error".into())])
        .await
        .expect("error stream");
    tokio::time::timeout(Duration::from_secs(10), conn.session.closed())
        .await
        .expect("the server ends the session after the creation timeout");
}

#[tokio::test]
async fn v1_to_v3_report_failures_in_words() {
    let (s, _) = server().await;
    let url = s.url_for(exec(&["fail"], false, false)).expect("url");
    let conn = spdy_upgrade(&url, &["v3.channel.k8s.io"])
        .await
        .expect("upgrade");
    assert_eq!(conn.protocol, "v3.channel.k8s.io");
    let mut error = conn
        .session
        .open(vec![("streamtype".into(), "error".into())])
        .await
        .expect("error");
    let mut out = Vec::new();
    for kind in ["stdout", "stderr"] {
        out.push(
            conn.session
                .open(vec![("streamtype".into(), kind.into())])
                .await
                .expect("stream"),
        );
    }
    let text = String::from_utf8(error.read_to_end(4096).await).expect("utf8");
    assert_eq!(text, "no such thing");
}

#[tokio::test]
async fn websocket_protocols_frame_as_named() {
    let (s, _) = server().await;
    for protocol in [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "channel.k8s.io",
        "base64.channel.k8s.io",
    ] {
        let v5 = protocol.starts_with("v5");
        // Without the close signal, stdin never ends: the fake gets none.
        let url = s.url_for(exec(&["cat", "2"], v5, false)).expect("url");
        let (out, seen) = remote_command_ws(
            &url,
            protocol,
            CommandIo {
                stdin: v5.then(|| b"typed".to_vec()),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(
            seen.first(),
            Some(&(1, 0)),
            "{protocol}: the ready message first"
        );
        if v5 {
            assert_eq!(out.stdout, b"typed", "{protocol}");
        }
        assert_eq!(out.stderr, b"bye", "{protocol}");
        if protocol.starts_with('v') {
            assert_eq!(out.exit_code(), Some(2), "{protocol}");
        } else {
            let text = String::from_utf8_lossy(&out.status).to_string();
            assert!(text.contains("exit code 2"), "{protocol}: {text}");
        }
    }
    let url = s.url_for(exec(&["cat"], false, false)).expect("url");
    let err = ws_connect(&url, &["v9.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 403, .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn terminal_sizes_reach_the_runtime() {
    let (s, _) = server().await;
    let sizes = vec![
        TermSize {
            width: 80,
            height: 24,
        },
        TermSize {
            width: 120,
            height: 40,
        },
    ];
    let url = s.url_for(exec(&["sizes", "2"], false, true)).expect("url");
    let (_, out) = remote_command_spdy(
        &url,
        CommandIo {
            stdout: true,
            tty: true,
            resize: sizes.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("spdy");
    assert_eq!(out.stdout, b"80x24\n120x40\n");
    let url = s.url_for(exec(&["sizes", "2"], false, true)).expect("url");
    let (out, _) = remote_command_ws(
        &url,
        "v5.channel.k8s.io",
        CommandIo {
            stdout: true,
            tty: true,
            resize: sizes,
            ..Default::default()
        },
    )
    .await
    .expect("ws");
    assert_eq!(out.stdout, b"80x24\n120x40\n");
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_command() {
    let (s, fake) = server().await;
    let url = s.url_for(exec(&["hang"], true, false)).expect("url");
    let conn = spdy_upgrade(&url, &["v4.channel.k8s.io"])
        .await
        .expect("upgrade");
    for kind in ["error", "stdin", "stdout", "stderr"] {
        let _ = conn
            .session
            .open(vec![("streamtype".into(), kind.into())])
            .await
            .expect("stream");
    }
    drop(conn);
    let url = s.url_for(exec(&["hang"], false, false)).expect("url");
    let (ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await.expect("ws");
    drop(ws);
    for _ in 0..100 {
        if fake.gone.load(Ordering::SeqCst) == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the runtime saw {} of 2 clients go",
        fake.gone.load(Ordering::SeqCst)
    );
}

/// A TCP server that answers every connection with what it reads,
/// upper-cased, until the client ends.
async fn upper_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf[..n].make_ascii_uppercase();
                            if c.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

async fn forward_round_trip(pf: &PortForward, port: u16, text: &[u8]) -> Vec<u8> {
    let mut f = pf.connect(port).await.expect("connect");
    f.data
        .send(Bytes::copy_from_slice(text))
        .await
        .expect("send");
    f.data.finish().await.expect("fin");
    let got = f.data.read_to_end(1 << 30).await;
    let err = f.error.read_to_end(4096).await;
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    got
}

#[tokio::test]
async fn port_forward_carries_many_connections_over_one_session() {
    let (s, _) = server().await;
    let port = upper_server().await;
    for tunnel in [false, true] {
        let url = s
            .url_for(Request::PortForward(PortForwardRequest {
                sandbox_id: "p".into(),
                ports: vec![],
            }))
            .expect("url");
        let pf = Arc::new(if tunnel {
            PortForward::tunnel(&url).await.expect("tunnel")
        } else {
            PortForward::spdy(&url).await.expect("spdy")
        });
        let mut all = Vec::new();
        for i in 0..20 {
            let pf = pf.clone();
            all.push(tokio::spawn(async move {
                let text = format!("conn {i} ").repeat(1000);
                let got = forward_round_trip(&pf, port, text.as_bytes()).await;
                assert_eq!(got, text.to_uppercase().as_bytes());
            }));
        }
        for t in all {
            t.await.expect("join");
        }
        // A closed port: the error stream says so.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut f = pf.connect(closed).await.expect("connect");
        let err = String::from_utf8(f.error.read_to_end(4096).await).expect("utf8");
        assert!(
            err.contains(&format!("error forwarding port {closed}")),
            "{err}"
        );
        pf.close().await;
    }
}

#[tokio::test]
async fn websocket_port_forward_uses_the_requests_ports() {
    let (s, _) = server().await;
    let port = upper_server().await;
    let url = s
        .url_for(Request::PortForward(PortForwardRequest {
            sandbox_id: "p".into(),
            ports: vec![port],
        }))
        .expect("url");
    let (ws, chosen) = ws_connect(&url, &["v4.channel.k8s.io"]).await.expect("ws");
    assert_eq!(chosen, "v4.channel.k8s.io");
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = ws.split();
    // Both channels open with the port, little-endian.
    let mut firsts = Vec::new();
    while firsts.len() < 2 {
        if let Some(Ok(Message::Binary(b))) = stream.next().await {
            firsts.push(b.to_vec());
        }
    }
    let le = port.to_le_bytes();
    assert!(firsts.contains(&vec![0, le[0], le[1]]));
    assert!(firsts.contains(&vec![1, le[0], le[1]]));
    sink.send(Message::Binary(Bytes::from_static(b"\x00hello")))
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < 5 {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => got.extend_from_slice(&b[1..]),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"HELLO");
}

#[tokio::test]
async fn tls_serves_https_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write");
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).expect("write");
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"));
    config.tls = Some(berth_stream::tls::server_config(&cert_pem, &key_pem).expect("tls"));
    let s = StreamServer::start(config, Arc::new(FakeRuntime(Arc::new(Fake::default()))))
        .await
        .expect("start");
    berth_stream::client::trust(berth_stream::tls::client_config(&cert_pem).expect("roots"));
    let url = s.url_for(exec(&["cat", "0"], true, false)).expect("url");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (_, out) = remote_command_spdy(&url, io(b"over tls"))
        .await
        .expect("spdy");
    assert_eq!(out.stdout, b"over tls");
    let url = s.url_for(exec(&["cat", "0"], true, false)).expect("url");
    let (out, _) = remote_command_ws(&url, "v5.channel.k8s.io", io(b"wss too"))
        .await
        .expect("wss");
    assert_eq!(out.stdout, b"wss too");
    // Plain HTTP to the TLS port gets no answer it can use.
    let url = s.url_for(exec(&["cat", "0"], true, false)).expect("url");
    let plain = url.replacen("https://", "http://", 1);
    assert!(spdy_upgrade(&plain, &["v4.channel.k8s.io"]).await.is_err());
    // Nor does a client that trusts something else.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).expect("write");
    berth_stream::client::trust(berth_stream::tls::client_config(&other_pem).expect("roots"));
    let url = s.url_for(exec(&["cat", "0"], true, false)).expect("url");
    assert!(spdy_upgrade(&url, &["v4.channel.k8s.io"]).await.is_err());
}

async fn server_with(edit: impl FnOnce(&mut Config)) -> (StreamServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"));
    edit(&mut config);
    let s = StreamServer::start(config, Arc::new(FakeRuntime(fake.clone())))
        .await
        .expect("start");
    (s, fake)
}

/// Opens every stream a `hang` exec without stdin expects.
async fn open_hang(url: &str) -> berth_stream::client::SpdyConn {
    let conn = spdy_upgrade(url, &["v4.channel.k8s.io"])
        .await
        .expect("upgrade");
    for kind in ["error", "stdout", "stderr"] {
        let s = conn
            .session
            .open(vec![("streamtype".into(), kind.into())])
            .await
            .expect("stream");
        std::mem::forget(s);
    }
    conn
}

#[tokio::test]
async fn sessions_at_once_are_bounded() {
    let (s, _) = server_with(|c| c.max_sessions = 2).await;
    let a = open_hang(&s.url_for(exec(&["hang"], false, false)).expect("url")).await;
    let b = open_hang(&s.url_for(exec(&["hang"], false, false)).expect("url")).await;
    let url = s.url_for(exec(&["hang"], false, false)).expect("url");
    let err = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await.err();
    assert!(
        matches!(err, Some(ClientError::Refused { status: 429, .. })),
        "{err:?}"
    );
    // One ends: room for another.
    drop(a);
    let mut served = false;
    for _ in 0..100 {
        let url = s.url_for(exec(&["cat", "0"], false, false)).expect("url");
        if remote_command_spdy(&url, io(b"")).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a session ended, and none could start");
    drop(b);
}

#[tokio::test]
async fn an_idle_session_is_ended() {
    let (s, fake) = server_with(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let conn = open_hang(&s.url_for(exec(&["hang"], false, false)).expect("url")).await;
    tokio::time::timeout(Duration::from_secs(10), conn.session.closed())
        .await
        .expect("the idle session is ended");
    for _ in 0..100 {
        if fake.gone.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the runtime was not told the client is gone");
}
