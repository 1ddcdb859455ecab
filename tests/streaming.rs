//! Exec, Attach and PortForward against a real berthd, runc and CNI,
//! through berth's own SPDY and WebSocket clients: output, exit codes,
//! stdin's end, terminals and their sizes, large output, attaches beside
//! the log, port-forward to a real server in a pod (and on the host), bad
//! requests, and clients that vanish leaving nothing behind.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_stream::client::{
    remote_command_spdy, remote_command_ws, spdy_upgrade, CommandIo, CommandOutput, PortForward,
};
use berth_stream::spdy::frame::rst;
use berth_stream::TermSize;
use berth_tests::eventually;
use berth_tests::node::{
    container_config, create_container, pod_config, remove_pod, run_pod, sh, start_container, Node,
};
use bytes::Bytes;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

type Rt = RuntimeServiceClient<Channel>;

async fn running(
    rt: &mut Rt,
    n: &Node,
    pod: &str,
    name: &str,
    edit: impl FnOnce(&mut ContainerConfig),
) -> String {
    let mut c = container_config(name, &n.image, &["sleep", "3600"]);
    edit(&mut c);
    let id = create_container(rt, pod, c).await.expect("create");
    start_container(rt, &id).await.expect("start");
    id
}

async fn exec_url(rt: &mut Rt, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .expect("Exec")
    .into_inner()
    .url
}

fn io(stdin: Option<&[u8]>, tty: bool) -> CommandIo {
    CommandIo {
        stdin: stdin.map(<[u8]>::to_vec),
        stdout: true,
        stderr: !tty,
        tty,
        ..Default::default()
    }
}

/// Runs `cmd` over SPDY and over WebSocket v5; both must agree.
async fn exec_both(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
    tty: bool,
) -> CommandOutput {
    let url = exec_url(rt, id, cmd, stdin.is_some(), tty).await;
    let (protocol, spdy) = remote_command_spdy(&url, io(stdin, tty))
        .await
        .expect("spdy exec");
    assert_eq!(protocol, "v4.channel.k8s.io");
    let url = exec_url(rt, id, cmd, stdin.is_some(), tty).await;
    let (ws, _) = remote_command_ws(&url, "v5.channel.k8s.io", io(stdin, tty))
        .await
        .expect("websocket exec");
    // A terminal echoes input as it comes: only its exit must agree.
    if tty && stdin.is_some() {
        assert_eq!(spdy.exit_code(), ws.exit_code(), "{cmd:?}");
        return spdy;
    }
    assert_eq!(
        (&spdy.stdout, &spdy.stderr, spdy.exit_code()),
        (&ws.stdout, &ws.stderr, ws.exit_code()),
        "SPDY and WebSocket disagree on {cmd:?}"
    );
    spdy
}

/// Nothing berthd made for a stream is left: no FIFO directory.
fn io_dirs(n: &Node) -> Vec<String> {
    std::fs::read_dir(n.d.dir.path().join("run/io"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

#[tokio::test]
async fn exec_streams_output_exit_codes_stdin_and_terminals() {
    let n = Node::running("sx", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("streamexec", &n.logs()))
        .await
        .expect("pod");
    let c = running(&mut rt, &n, &pod, "box", |_| {}).await;

    let out = exec_both(
        &mut rt,
        &c,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
        false,
    )
    .await;
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.exit_code(), Some(3));
    let out = exec_both(&mut rt, &c, &["true"], None, false).await;
    assert_eq!(out.exit_code(), Some(0));

    // stdin reaches the process, and its end ends `cat`.
    let out = exec_both(&mut rt, &c, &["cat"], Some(b"typed in\n"), false).await;
    assert_eq!(out.stdout, b"typed in\n");
    assert_eq!(out.exit_code(), Some(0));

    // Large output arrives whole and in order.
    let out = exec_both(&mut rt, &c, &["seq", "1", "300000"], None, false).await;
    let want: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), want.len());
    assert!(out.stdout == want.as_bytes(), "seq's output differs");

    // A terminal: the process sees one, output comes on stdout (with the
    // terminal's line endings), and the client's size reaches it.
    let out = exec_both(&mut rt, &c, &["sh", "-c", "tty; echo $TERM"], None, true).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("xterm\r\n"), "{text:?}");
    assert!(out.stderr.is_empty());
    let url = exec_url(&mut rt, &c, &["sh", "-c", "for i in $(seq 50); do s=$(busybox stty size 2>/dev/null); [ \"$s\" = '33 111' ] && break; sleep 0.1; done; echo \"$s\""], false, true).await;
    let mut tio = io(None, true);
    tio.resize = vec![TermSize {
        width: 111,
        height: 33,
    }];
    let (_, out) = remote_command_spdy(&url, tio.clone())
        .await
        .expect("tty exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "33 111");
    let url = exec_url(&mut rt, &c, &["sh", "-c", "for i in $(seq 50); do s=$(busybox stty size 2>/dev/null); [ \"$s\" = '33 111' ] && break; sleep 0.1; done; echo \"$s\""], false, true).await;
    let (out, _) = remote_command_ws(&url, "v5.channel.k8s.io", tio)
        .await
        .expect("tty exec ws");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "33 111");
    // With a terminal, a shell reads what the client types.
    let out = exec_both(&mut rt, &c, &["sh"], Some(b"echo from-tty; exit 5\n"), true).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-tty"),
        "{out:?}"
    );
    assert_eq!(out.exit_code(), Some(5));

    // Older protocols still work: the first one, over WebSocket, reports
    // a failure in words.
    let url = exec_url(&mut rt, &c, &["sh", "-c", "echo old; exit 2"], false, false).await;
    let (out, _) = remote_command_ws(&url, "base64.channel.k8s.io", io(None, false))
        .await
        .expect("base64 exec");
    assert_eq!(out.stdout, b"old\n");
    assert!(String::from_utf8_lossy(&out.status).contains("exit code 2"));

    assert!(io_dirs(&n).is_empty(), "left: {:?}", io_dirs(&n));
    remove_pod(&mut rt, &pod).await.expect("remove");
}

#[tokio::test]
async fn clients_that_vanish_leave_no_process_and_no_fifo() {
    let n = Node::running("sv", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("streamgone", &n.logs()))
        .await
        .expect("pod");
    let c = running(&mut rt, &n, &pod, "box", |_| {}).await;
    // One exec first, so that what berthd opens once is open.
    let _ = exec_both(&mut rt, &c, &["true"], None, false).await;
    let fds_before = open_fds(n.d.pid());
    // Over SPDY: the client opens its streams, the process starts, the
    // connection drops.
    let url = exec_url(&mut rt, &c, &["sleep", "1001"], true, false).await;
    let conn = spdy_upgrade(&url, &["v4.channel.k8s.io"])
        .await
        .expect("upgrade");
    for kind in ["error", "stdin", "stdout", "stderr"] {
        let s = conn
            .session
            .open(vec![("streamtype".into(), kind.into())])
            .await
            .expect("stream");
        std::mem::forget(s);
    }
    eventually(Duration::from_secs(10), "the exec to start", || {
        let mut rt = rt.clone();
        let c = c.clone();
        async move {
            sh(&mut rt, &c, "ps")
                .await
                .0
                .contains("sleep 1001")
                .then_some(())
        }
    })
    .await;
    drop(conn);
    // Over WebSocket, likewise, with a terminal.
    let url = exec_url(&mut rt, &c, &["sleep", "1002"], true, true).await;
    let (ws, _) = berth_stream::client::ws_connect(&url, &["v5.channel.k8s.io"])
        .await
        .expect("ws");
    eventually(Duration::from_secs(10), "the tty exec to start", || {
        let mut rt = rt.clone();
        let c = c.clone();
        async move {
            sh(&mut rt, &c, "ps")
                .await
                .0
                .contains("sleep 1002")
                .then_some(())
        }
    })
    .await;
    drop(ws);
    eventually(
        Duration::from_secs(20),
        "both processes to be ended",
        || {
            let mut rt = rt.clone();
            let c = c.clone();
            async move {
                let ps = sh(&mut rt, &c, "ps").await.0;
                (!ps.contains("sleep 1001") && !ps.contains("sleep 1002")).then_some(())
            }
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the FIFOs to go", || {
        let left = io_dirs(&n);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    // Nor a descriptor: berthd holds what it held before.
    let pid = n.d.pid();
    eventually(
        Duration::from_secs(10),
        "berthd's descriptors to close",
        || {
            let now = open_fds(pid);
            async move { (now <= fds_before).then_some(()) }
        },
    )
    .await;
    remove_pod(&mut rt, &pod).await.expect("remove");
}

/// How many descriptors `pid` holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn attach_joins_the_containers_stdio_beside_its_log() {
    let n = Node::running("sa", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("streamattach", &n.logs()))
        .await
        .expect("pod");
    // A shell on stdin, once: the attach's end ends its input.
    let c = running(&mut rt, &n, &pod, "shell", |c| {
        c.command = vec!["sh".into()];
        c.stdin = true;
        c.stdin_once = true;
    })
    .await;
    let url = rt
        .attach(AttachRequest {
            container_id: c.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (_, out) = remote_command_spdy(
        &url,
        io(Some(b"echo attached; echo oops >&2; exit 4\n"), false),
    )
    .await
    .expect("attach");
    assert_eq!(out.stdout, b"attached\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.exit_code(), Some(0), "attach reports no exit code");
    let st = eventually(Duration::from_secs(10), "the shell to exit", || {
        let mut rt = rt.clone();
        let c = c.clone();
        async move {
            let st = berth_tests::node::container_status(&mut rt, &c)
                .await
                .ok()?;
            (st.state == ContainerState::ContainerExited as i32).then_some(st)
        }
    })
    .await;
    assert_eq!(st.exit_code, 4);
    let log = std::fs::read_to_string(n.logs().join("shell/0.log")).expect("log");
    assert!(
        log.lines().any(|l| l.contains(" stdout F attached")),
        "{log}"
    );

    // Several attaches at once, over SPDY and WebSocket, to a container
    // that talks on its own; both end when it stops.
    let t = running(&mut rt, &n, &pod, "ticker", |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "while true; do echo tick; sleep 0.1; done".into(),
        ];
    })
    .await;
    let attach = AttachRequest {
        container_id: t.clone(),
        stdin: false,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let urls = [
        rt.attach(attach.clone())
            .await
            .expect("attach")
            .into_inner()
            .url,
        rt.attach(attach).await.expect("attach").into_inner().url,
    ];
    let no_stdin = CommandIo {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let a = tokio::spawn({
        let (url, io) = (urls[0].clone(), no_stdin.clone());
        async move { remote_command_spdy(&url, io).await }
    });
    let b = tokio::spawn({
        let url = urls[1].clone();
        async move { remote_command_ws(&url, "v5.channel.k8s.io", no_stdin).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    rt.stop_container(StopContainerRequest {
        container_id: t.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    let (_, a) = tokio::time::timeout(Duration::from_secs(20), a)
        .await
        .expect("the SPDY attach ends")
        .expect("join")
        .expect("attach");
    let (b, _) = tokio::time::timeout(Duration::from_secs(20), b)
        .await
        .expect("the WebSocket attach ends")
        .expect("join")
        .expect("attach");
    assert!(String::from_utf8_lossy(&a.stdout).contains("tick\n"));
    assert!(String::from_utf8_lossy(&b.stdout).contains("tick\n"));
    assert!(io_dirs(&n).is_empty(), "left: {:?}", io_dirs(&n));
    remove_pod(&mut rt, &pod).await.expect("remove");
}

/// GET /n over a forwarded connection; answers the response body.
async fn http_get(pf: &PortForward, port: u16) -> Result<Vec<u8>, String> {
    let mut f = pf.connect(port).await.map_err(|e| e.to_string())?;
    // A failed connection may be reset before the request goes: what went
    // wrong is then on the error stream.
    let sent = f
        .data
        .send(Bytes::from_static(b"GET /n HTTP/1.0\r\nHost: pod\r\n\r\n"))
        .await;
    let resp = f.data.read_to_end(64 << 20).await;
    // As client-go does once the pod's side ended.
    f.data.sender().reset(rst::CANCEL).await;
    let err = f.error.read_to_end(4096).await;
    if !err.is_empty() {
        return Err(String::from_utf8_lossy(&err).to_string());
    }
    sent.map_err(|e| e.to_string())?;
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {:?}", String::from_utf8_lossy(&resp)))?;
    Ok(resp[at + 4..].to_vec())
}

const SERVE: &str =
    "mkdir -p /tmp/www && seq 1 100000 > /tmp/www/n && exec busybox httpd -f -h /tmp/www -p";

#[tokio::test]
async fn port_forward_reaches_servers_in_pods_and_on_the_host_network() {
    let n = Node::running("sp", "").await;
    let mut rt = n.d.runtime().await;
    let want: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let pod = run_pod(&mut rt, pod_config("streampf", &n.logs()))
        .await
        .expect("pod");
    running(&mut rt, &n, &pod, "web", |c| {
        c.command = vec!["sh".into(), "-c".into(), format!("{SERVE} 8080")];
    })
    .await;
    // The host-network pod's server on a port of the node's own.
    let host_port = 20000 + (std::process::id() % 10000) as u16;
    let mut host = pod_config("streampfhost", &n.logs());
    if let Some(opts) = host
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        opts.network = NamespaceMode::Node as i32;
    }
    let host_pod = run_pod(&mut rt, host).await.expect("host pod");
    running(&mut rt, &n, &host_pod, "hostweb", |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            format!("{SERVE} 127.0.0.1:{host_port}"),
        ];
        if let Some(ns) = c
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.network = NamespaceMode::Node as i32;
        }
    })
    .await;
    for (p, port) in [(&pod, 8080u16), (&host_pod, host_port)] {
        for tunnel in [false, true] {
            let url = rt
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: p.to_string(),
                    port: vec![],
                })
                .await
                .expect("PortForward")
                .into_inner()
                .url;
            let pf = std::sync::Arc::new(if tunnel {
                PortForward::tunnel(&url).await.expect("tunnel")
            } else {
                PortForward::spdy(&url).await.expect("spdy")
            });
            // The server may still be starting.
            let first = eventually(Duration::from_secs(20), "the server in the pod", || {
                let pf = pf.clone();
                async move { http_get(&pf, port).await.ok() }
            })
            .await;
            assert!(first == want.as_bytes());
            // Many connections at once over the one session.
            let all: Vec<_> = (0..16)
                .map(|_| {
                    let pf = pf.clone();
                    tokio::spawn(async move { http_get(&pf, port).await })
                })
                .collect();
            for t in all {
                let body = t.await.expect("join").expect("GET");
                assert!(body == want.as_bytes(), "a forwarded body differs");
            }
            // A port nothing listens on: said on the error stream.
            let err = http_get(&pf, 9).await.expect_err("nothing on port 9");
            assert!(err.contains("error forwarding port 9"), "{err}");
            pf.close().await;
        }
    }
    remove_pod(&mut rt, &pod).await.expect("remove");
    remove_pod(&mut rt, &host_pod).await.expect("remove");
}

#[tokio::test]
async fn bad_streaming_requests_are_refused_and_the_server_stays_on_loopback() {
    let n = Node::running("sb", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("streambad", &n.logs()))
        .await
        .expect("pod");
    let c = running(&mut rt, &n, &pod, "box", |_| {}).await;
    let exec = |cmd: &[&str], tty: bool, stderr: bool| ExecRequest {
        container_id: c.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    for (req, code, needle) in [
        (exec(&[], false, true), Code::InvalidArgument, "cmd"),
        (
            exec(&["sh"], true, true),
            Code::InvalidArgument,
            "tty and stderr",
        ),
        (
            ExecRequest {
                stdout: false,
                ..exec(&["sh"], false, false)
            },
            Code::InvalidArgument,
            "stdin, stdout, or stderr",
        ),
        (
            ExecRequest {
                container_id: "nosuch".into(),
                ..exec(&["sh"], false, true)
            },
            Code::NotFound,
            "nosuch",
        ),
        (
            ExecRequest {
                container_id: String::new(),
                ..exec(&["sh"], false, true)
            },
            Code::InvalidArgument,
            "container_id",
        ),
    ] {
        let err = rt.exec(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "{err:?}");
    }
    let err = rt
        .attach(AttachRequest {
            container_id: c.clone(),
            tty: true,
            stdout: true,
            stderr: true,
            stdin: false,
        })
        .await
        .expect_err("tty and stderr");
    assert_eq!(err.code(), Code::InvalidArgument);
    for (id, ports, code) in [
        ("nosuch", vec![], Code::NotFound),
        ("", vec![], Code::InvalidArgument),
        (pod.as_str(), vec![0], Code::InvalidArgument),
        (pod.as_str(), vec![70000], Code::InvalidArgument),
    ] {
        let err = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: id.into(),
                port: ports,
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{id:?}: {err:?}");
    }
    // A stopped container takes no exec.
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    let err = rt
        .exec(exec(&["sh"], false, true))
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The server listens on loopback only, and URLs say where.
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let listening = berthd_tcp_listeners(n.d.pid());
    assert!(!listening.is_empty(), "berthd listens for streams");
    assert!(
        listening.iter().all(|a| a.starts_with("0100007F:")),
        "berthd listens beyond loopback: {listening:?}"
    );
    remove_pod(&mut rt, &pod).await.expect("remove");
}

/// The local addresses (as /proc/net/tcp writes them) of berthd's
/// listening TCP sockets.
fn berthd_tcp_listeners(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                found.push(f[1].to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn the_streaming_server_serves_https_with_a_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write");
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).expect("write");
    let n = Node::running(
        "st",
        &format!(
            "[stream]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert_pem.display(),
            key_pem.display()
        ),
    )
    .await;
    berth_stream::client::trust(berth_stream::tls::client_config(&cert_pem).expect("roots"));
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("streamtls", &n.logs()))
        .await
        .expect("pod");
    let c = running(&mut rt, &n, &pod, "box", |_| {}).await;
    let url = exec_url(&mut rt, &c, &["echo", "over tls"], false, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (_, out) = remote_command_spdy(&url, io(None, false))
        .await
        .expect("https exec");
    assert_eq!(out.stdout, b"over tls\n");
    let url = exec_url(&mut rt, &c, &["echo", "over wss"], false, false).await;
    let (out, _) = remote_command_ws(&url, "v5.channel.k8s.io", io(None, false))
        .await
        .expect("wss exec");
    assert_eq!(out.stdout, b"over wss\n");
    remove_pod(&mut rt, &pod).await.expect("remove");
}
