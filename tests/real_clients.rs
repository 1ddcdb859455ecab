//! What the clients kubelet's world judges a runtime with (critest,
//! kubelet, gRPC clients other than grpc-go) found in berth, each kept as a
//! test against a real berthd, so that berth's own suite fails where they
//! did: pods without a hostname and with names longer than a hostname,
//! kubelet's hugepage limits on a node without the hugetlb controller,
//! privileged containers on a berthd without every capability, a group
//! without a user, what `Status` announces, deadlines, and the
//! `:authority` each gRPC implementation sends on a unix socket.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::node::{
    container_config, create_container, pod_config, remove_pod, run_pod, start_container, Node,
};
use berth_tests::Daemon;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

async fn exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, cmd: &[&str]) -> (i32, String) {
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.exit_code, text)
}

/// A running container `name` in `pod` that sleeps, made from `config`.
async fn sleeper(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    mut config: ContainerConfig,
) -> String {
    config.command = vec!["sleep".into(), "600".into()];
    let id = create_container(rt, pod, config)
        .await
        .expect("CreateContainer");
    start_container(rt, &id).await.expect("StartContainer");
    id
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .expect("gethostname")
        .into_string()
        .expect("utf-8 hostname")
}

async fn pod_ids(rt: &mut RuntimeServiceClient<Channel>) -> Vec<String> {
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// critest's pods name no hostname and have names longer than 64 bytes:
/// their hostname is the node's (as under containerd and CRI-O), and a
/// hostname kubelet could never have sent is refused before anything is
/// made.
#[tokio::test]
async fn pods_without_a_hostname_take_the_nodes_and_bad_hostnames_are_refused() {
    let n = Node::running("rh", "").await;
    let mut rt = n.d.runtime().await;
    let long = format!(
        "create-PodSandbox-for-container-{}",
        "0123456789abcdef".repeat(5)
    );
    assert!(long.len() > 64);
    let mut config = pod_config(&long, &n.logs());
    config.hostname.clear();
    let pod = run_pod(&mut rt, config.clone())
        .await
        .expect("a long name without a hostname");
    let c = sleeper(&mut rt, &pod, container_config("c", &n.image, &[])).await;
    let (code, out) = exec(&mut rt, &c, &["hostname"]).await;
    assert_eq!((code, out.trim()), (0, node_hostname().as_str()));
    let (_, file) = exec(&mut rt, &c, &["cat", "/etc/hostname"]).await;
    assert_eq!(file.trim(), node_hostname());

    for (hostname, what) in [
        ("a".repeat(65), "65 bytes"),
        ("web_server".to_string(), "an underscore"),
        ("-web".to_string(), "a leading hyphen"),
        ("web.".to_string(), "an empty label"),
    ] {
        let mut bad = pod_config(&format!("bad-{}", what.replace(' ', "-")), &n.logs());
        bad.hostname = hostname.clone();
        let err = run_pod(&mut rt, bad).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("hostname"), "{what}: {err:?}");
    }
    assert_eq!(
        pod_ids(&mut rt).await,
        vec![pod.clone()],
        "nothing else made"
    );
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}

fn node_has_hugetlb() -> bool {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "hugetlb"));
    }
    std::fs::read_to_string("/proc/cgroups").is_ok_and(|s| {
        s.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == "hugetlb" && f[1] != "0" && f[3] == "1"
        })
    })
}

/// kubelet sends a hugepage limit for every page size the node has, with
/// or without the hugetlb controller: the container runs either way, and
/// the limits reach the runtime only where the controller exists.
#[tokio::test]
async fn kubelets_hugepage_limits_run_with_or_without_the_controller() {
    let n = Node::running("rg", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("huge", &n.logs()))
        .await
        .expect("pod");
    let config = container_config("c", &n.image, &[]);
    let limits = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.hugepage_limits.len());
    assert_eq!(limits, Some(2), "the fixture sends kubelet's limits");
    let c = sleeper(&mut rt, &pod, config).await;
    let st = berth_tests::node::container_status(&mut rt, &c)
        .await
        .expect("status");
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    let spec = std::fs::read_to_string(
        n.d.dir
            .path()
            .join("run/shims")
            .join(&c)
            .join("config.json"),
    )
    .expect("the container's OCI spec");
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("json");
    let applied = spec["linux"]["resources"].get("hugepageLimits").is_some();
    assert_eq!(
        applied,
        node_has_hugetlb(),
        "{}",
        spec["linux"]["resources"]
    );
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}

fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .expect(field)
        .trim();
    u64::from_str_radix(hex, 16).expect("hex mask")
}

/// A privileged container, and one that adds ALL, gets every capability
/// berthd holds and no more (runc cannot give more: "unable to apply
/// caps"); asking for one berthd lacks is a clear error.
#[tokio::test]
async fn privileged_containers_get_the_capabilities_berthd_holds() {
    let n = Node::running("rp", "").await;
    let mut rt = n.d.runtime().await;
    let held = cap_mask(n.d.pid(), "CapEff:");
    let mut config = pod_config("priv", &n.logs());
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = true;
    }
    let pod = run_pod(&mut rt, config).await.expect("privileged pod");

    let mut privileged = container_config("p", &n.image, &[]);
    let mut all = container_config("all", &n.image, &[]);
    let mut missing = container_config("missing", &n.image, &[]);
    for (c, set) in [
        (
            &mut privileged,
            (|s| s.privileged = true) as fn(&mut LinuxContainerSecurityContext),
        ),
        (&mut all, |s| {
            s.capabilities = Some(Capability {
                add_capabilities: vec!["ALL".into()],
                ..Default::default()
            })
        }),
        (&mut missing, |s| {
            s.capabilities = Some(Capability {
                add_capabilities: vec!["CAP_SYS_RESOURCE".into()],
                ..Default::default()
            })
        }),
    ] {
        set(c
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("security context"));
    }
    for config in [privileged, all] {
        let c = sleeper(&mut rt, &pod, config).await;
        let pid = berth_tests::node::container_pid(&mut rt, &c).await;
        assert_eq!(cap_mask(pid, "CapEff:"), held, "effective");
        assert_eq!(cap_mask(pid, "CapBnd:"), held, "bounding");
    }
    const SYS_RESOURCE: u64 = 1 << 24;
    if held & SYS_RESOURCE == 0 {
        let err = create_container(&mut rt, &pod, missing)
            .await
            .expect_err("a capability berthd lacks");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("CAP_SYS_RESOURCE"), "{err:?}");
    } else {
        let c = sleeper(&mut rt, &pod, missing).await;
        let pid = berth_tests::node::container_pid(&mut rt, &c).await;
        assert_ne!(cap_mask(pid, "CapEff:") & SYS_RESOURCE, 0);
    }
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}

/// critest: "runtime should return error if RunAsGroup is set without
/// RunAsUser".
#[tokio::test]
async fn a_group_without_a_user_is_refused() {
    let n = Node::running("rr", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("group", &n.logs()))
        .await
        .expect("pod");
    let mut config = container_config("g", &n.image, &["true"]);
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.run_as_group = Some(Int64Value { value: 1000 });
    }
    let err = create_container(&mut rt, &pod, config)
        .await
        .expect_err("a group alone");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{err:?}");
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}

/// Whether runc on this node makes recursive read-only mounts: it says so
/// in `runc features`, and the kernel has mount_setattr (Linux 5.12).
fn node_makes_rro() -> bool {
    let features = std::process::Command::new("runc").arg("features").output();
    let runc = features.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"rro\""));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    runc && (major, minor) >= (5, 12)
}

/// critest skips the recursive read-only and SupplementalGroupsPolicy specs
/// unless `Status` announces them: berth announces what works on this
/// node, and what it announces works.
#[tokio::test]
async fn status_announces_what_works_and_rro_mounts_are_read_only_all_the_way_down() {
    let n = Node::running("rs", "").await;
    let mut rt = n.d.runtime().await;
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(
        status.features.map(|f| f.supplemental_groups_policy),
        Some(true)
    );
    let rro = node_makes_rro();
    let handlers: Vec<(String, bool)> = status
        .runtime_handlers
        .iter()
        .map(|h| {
            let f = h.features.unwrap_or_default();
            (h.name.clone(), f.recursive_read_only_mounts)
        })
        .collect();
    let names: Vec<&str> = handlers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["", "runc", "runc-v2", "youki"]);
    // runc-v2's shim drives runc too (youki says what it can itself).
    for (name, has) in &handlers {
        if name != "youki" {
            assert_eq!(*has, rro, "{name}");
        }
    }

    // A host directory with a tmpfs mounted inside it.
    let host = tempfile::tempdir().expect("host dir");
    let sub = host.path().join("tmpfs");
    std::fs::create_dir(&sub).expect("mkdir");
    nix::mount::mount(
        Some("none"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&sub);

    let pod = run_pod(&mut rt, pod_config("rro", &n.logs()))
        .await
        .expect("pod");
    let with_mount = |name: &str, recursive: bool| {
        let mut c = container_config(name, &n.image, &[]);
        c.mounts = vec![Mount {
            container_path: "/mnt".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            recursive_read_only: recursive,
            ..Default::default()
        }];
        c
    };
    let plain = sleeper(&mut rt, &pod, with_mount("ro", false)).await;
    let (code, out) = exec(&mut rt, &plain, &["touch", "/mnt/tmpfs/file"]).await;
    assert_eq!(
        code, 0,
        "a plain read-only mount leaves its submounts: {out}"
    );
    let (code, _) = exec(&mut rt, &plain, &["touch", "/mnt/file"]).await;
    assert_ne!(code, 0, "but is read-only itself");
    if rro {
        let recursive = sleeper(&mut rt, &pod, with_mount("rro", true)).await;
        let (code, out) = exec(&mut rt, &recursive, &["touch", "/mnt/tmpfs/other"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("Read-only file system"), "{out}");
    } else {
        let err = create_container(&mut rt, &pod, with_mount("rro", true))
            .await
            .expect_err("not announced, not made");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    remove_pod(&mut rt, &pod).await.expect("remove");
    n.assert_consistent();
}

/// A registry that accepts connections and never answers.
fn silent_registry() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let accept = listener.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in accept.incoming().flatten() {
            held.push(conn);
        }
    });
    (listener, host)
}

/// A gRPC call made by hand over HTTP/2: no client library stands
/// between the test and what berthd answers.
struct RawCall<'a> {
    authority: &'a [u8],
    path: &'a str,
    /// Extra request headers (`grpc-timeout`).
    headers: Vec<(&'a [u8], &'a [u8])>,
    message: Vec<u8>,
}

/// What berthd answered a [`RawCall`]: `grpc-status` (or how the stream
/// was refused), `grpc-message`, and the response's bytes.
struct RawAnswer {
    status: String,
    message: String,
    body: Vec<u8>,
}

impl RawCall<'_> {
    fn send(self, socket: &Path) -> RawAnswer {
        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            out.extend_from_slice(&[kind, flags]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(payload);
            out
        }
        let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", self.path.as_bytes()),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        headers.extend(self.headers);
        let block = loona_hpack::Encoder::new().encode(headers);
        let mut grpc = vec![0];
        grpc.extend_from_slice(&(self.message.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&self.message);
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(frame(0x1, 0x4, 1, &block));
        out.extend(frame(0x0, 0x1, 1, &grpc));
        s.write_all(&out).expect("send");

        let mut decoder = loona_hpack::Decoder::new();
        let mut body = Vec::new();
        let refused = |what: &str, payload: &[u8], body: Vec<u8>| RawAnswer {
            status: format!("{what} {payload:?}"),
            message: String::new(),
            body,
        };
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).expect("frame payload");
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match (head[3], stream) {
                (0x4, 0) if head[4] & 0x1 == 0 => {
                    s.write_all(&frame(0x4, 0x1, 0, &[])).expect("settings ack")
                }
                (0x3, 1) => return refused("RST_STREAM", &payload, body),
                (0x7, _) => return refused("GOAWAY", &payload, body),
                (0x0, 1) => body.extend_from_slice(&payload),
                (0x1, 1) => {
                    let fields = decoder.decode(&payload).expect("hpack");
                    let get = |name: &[u8]| {
                        fields
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    };
                    if let Some(status) = get(b"grpc-status") {
                        return RawAnswer {
                            status,
                            message: get(b"grpc-message").unwrap_or_default(),
                            body,
                        };
                    }
                }
                _ => {}
            }
        }
    }
}

/// critest "public image should timeout if requested": a call whose
/// deadline passes answers DEADLINE_EXCEEDED (tonic's own server said
/// CANCELLED, which a client can read before its own timer fires), and
/// berthd serves on.
#[tokio::test]
async fn a_call_past_its_deadline_answers_deadline_exceeded() {
    let (_registry, host) = silent_registry();
    let mut d = Daemon::configure(&format!("[registries.\"{host}\"]\ninsecure = true\n"));
    d.spawn();
    let request = PullImageRequest {
        image: Some(ImageSpec {
            image: format!("{host}/stalls:v1"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let answer = RawCall {
        authority: b"localhost",
        path: "/runtime.v1.ImageService/PullImage",
        headers: vec![(b"grpc-timeout", b"300m")],
        message: prost::Message::encode_to_vec(&request),
    }
    .send(&d.cri_socket());
    assert_eq!(answer.status, "4", "DEADLINE_EXCEEDED: {}", answer.message);
    assert!(answer.message.contains("deadline"), "{}", answer.message);
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut rt = d.runtime().await;
    rt.version(VersionRequest::default())
        .await
        .expect("still serving");
}

/// grpc-core (Python, Ruby, C++) sends the socket path percent-encoded as
/// `:authority`, grpc-java the bare path, grpc-go `localhost`: h2 refused
/// the first two with RST_STREAM PROTOCOL_ERROR. Each is served.
#[test]
fn every_authority_grpc_clients_send_is_served() {
    let d = Daemon::start();
    let socket = d.cri_socket();
    let encoded = socket
        .display()
        .to_string()
        .trim_start_matches('/')
        .replace('/', "%2F");
    for authority in [
        encoded.as_str(),
        &socket.display().to_string(),
        "localhost",
        "",
        "berth runtime",
    ] {
        let answer = RawCall {
            authority: authority.as_bytes(),
            path: "/runtime.v1.RuntimeService/Version",
            headers: Vec::new(),
            message: Vec::new(),
        }
        .send(&socket);
        assert_eq!(
            answer.status, "0",
            "authority {authority:?}: {}",
            answer.message
        );
        let text = String::from_utf8_lossy(&answer.body);
        assert!(text.contains("berth"), "authority {authority:?}: {text:?}");
    }
}

/// The same with a real non-Go client: Python's grpcio (grpc-core), when
/// the test run provides one (`tests/run` installs it from PyPI and sets
/// BERTH_TEST_PYTHON).
#[test]
fn a_python_grpcio_client_is_served() {
    let Some(python) = std::env::var_os("BERTH_TEST_PYTHON") else {
        eprintln!("skipped: BERTH_TEST_PYTHON names no Python with grpcio (tests/run sets it)");
        return;
    };
    let d = Daemon::start();
    let script = r#"
import grpc, sys
print("grpcio", grpc.__version__, file=sys.stderr)
for target in ("unix:" + sys.argv[1], "unix://" + sys.argv[1]):
    channel = grpc.insecure_channel(target)
    for method in ("Version", "Status"):
        call = channel.unary_unary("/runtime.v1.RuntimeService/" + method,
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        print(target, method, call(b"", timeout=10).hex())
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(d.cri_socket())
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let seen: HashSet<&str> = stdout.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(seen, HashSet::from(["Version", "Status"]), "{stdout}");
    assert!(
        stdout.contains(&hex::encode("berth")),
        "Version names berth: {stdout}"
    );
}
