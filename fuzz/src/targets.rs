//! The fuzz targets: every parser berth runs on data from outside (a
//! client, a registry, an image, a plugin, a shim, a streaming peer), each
//! with seeds and a dictionary. A target answers a signature of what the
//! parser did; it panics where the parser broke a promise (a round trip
//! that changed the value, a file written outside the snapshot, an
//! unchecked input reaching the spec as an internal error).

use crate::engine::{signature, Target};
use berth_actors::Error;
use bytes::BytesMut;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn err_sig(e: &Error) -> String {
    let debug = format!("{e:?}");
    let kind = debug.split('(').next().unwrap_or_default().to_string();
    signature(&kind, &e.to_string())
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn reference(data: &[u8]) -> String {
    use berth_actors::image::reference::Reference;
    let s = text(data);
    match Reference::parse(&s) {
        Ok(r) => {
            // What berth prints of a reference parses back the same.
            let again = Reference::parse(&r.to_string())
                .unwrap_or_else(|e| panic!("{r} does not parse back: {e}"));
            assert_eq!(again.to_string(), r.to_string(), "round trip of {s:?}");
            format!("ok:{}", r.to_string().matches('/').count())
        }
        Err(e) => err_sig(&e),
    }
}

const MEDIA_TYPES: [&str; 5] = [
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn manifest(data: &[u8]) -> String {
    use berth_actors::image::manifest::Manifest;
    let Some((&pick, bytes)) = data.split_first() else {
        return "empty".into();
    };
    let header = MEDIA_TYPES[pick as usize % MEDIA_TYPES.len()];
    match Manifest::parse(bytes, header) {
        Ok(_) => format!("ok:{pick}"),
        Err(e) => err_sig(&e),
    }
}

fn image_config(data: &[u8]) -> String {
    use berth_actors::image::manifest::ImageConfigFile;
    match ImageConfigFile::parse(data) {
        Ok(c) => format!("ok:{}", c.rootfs.diff_ids.len().min(3)),
        Err(e) => err_sig(&e),
    }
}

/// Path pieces a hostile layer is made of.
const SEGMENTS: [&str; 14] = [
    "a",
    "b",
    "..",
    ".",
    "etc",
    "",
    "lnk",
    ".wh.a",
    ".wh..wh..opq",
    "dev",
    "a/b",
    "/",
    "x/../..",
    "c",
];

/// Builds a tar layer from `data` (entries of every kind with hostile
/// names, written raw so that nothing is cleaned on the way), applies it
/// into `root`, and checks that nothing landed beside `root`.
fn layer(data: &[u8]) -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return format!("tempdir:{e}"),
    };
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    if std::fs::create_dir(&root).is_err() || std::fs::create_dir(&outside).is_err() {
        return "mkdir".into();
    }
    let outside_abs = outside.display().to_string();
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    let mut builder = tar::Builder::new(Vec::new());
    let mut entries = 0;
    while let Some(op) = next() {
        if entries >= 64 {
            break;
        }
        entries += 1;
        let mut path = String::new();
        for _ in 0..1 + next().unwrap_or(0) % 3 {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(SEGMENTS[next().unwrap_or(0) as usize % SEGMENTS.len()]);
        }
        let target = match next().unwrap_or(0) % 4 {
            0 => outside_abs.clone(),
            1 => "../../outside".to_string(),
            2 => "a".to_string(),
            _ => "/etc/passwd".to_string(),
        };
        let size = next().unwrap_or(0) as usize % 32;
        let mut h = tar::Header::new_gnu();
        let kind = match op % 8 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            3 => tar::EntryType::Link,
            4 => tar::EntryType::Char,
            5 => tar::EntryType::Fifo,
            6 => tar::EntryType::Regular,
            _ => tar::EntryType::Directory,
        };
        h.set_entry_type(kind);
        h.set_mode(0o755);
        if kind == tar::EntryType::Char {
            // Only harmless devices: null, or a whiteout's 0/0.
            let (major, minor) = if op & 0x80 != 0 { (1, 3) } else { (0, 0) };
            let _ = h.set_device_major(major);
            let _ = h.set_device_minor(minor);
        }
        let body = if kind == tar::EntryType::Regular {
            vec![b'x'; size]
        } else {
            Vec::new()
        };
        h.set_size(body.len() as u64);
        {
            let old = h.as_old_mut();
            let name = path.as_bytes();
            let n = name.len().min(old.name.len());
            old.name[..n].copy_from_slice(&name[..n]);
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                let t = target.as_bytes();
                let n = t.len().min(old.linkname.len());
                old.linkname[..n].copy_from_slice(&t[..n]);
            }
        }
        h.set_cksum();
        if builder.append(&h, body.as_slice()).is_err() {
            return "append".into();
        }
    }
    let tar = match builder.into_inner() {
        Ok(t) => t,
        Err(_) => return "finish".into(),
    };
    let sig = match berth_actors::image::unpack::apply(tar.as_slice(), &root) {
        Ok(a) => format!("ok:{}:{}", a.entries.min(4), a.whiteouts.min(2)),
        Err(e) => err_sig(&e),
    };
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(escaped.is_empty(), "the layer wrote outside: {escaped:?}");
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "root" && n != "outside")
        .collect();
    assert!(
        beside.is_empty(),
        "the layer wrote beside its root: {beside:?}"
    );
    sig
}

fn cni_result(data: &[u8]) -> String {
    use berth_actors::network::cni::{pod_ips, NetworkList};
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return "json".into();
    };
    let ips = pod_ips(&v);
    let list = NetworkList::from_json(&v);
    if let Some(l) = &list {
        let again = NetworkList::from_json(&l.to_json());
        assert!(again.is_some(), "a network list does not read back");
    }
    format!("ok:{}:{}", ips.len().min(3), list.is_some())
}

/// A root filesystem and pod files for building specs, made once.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-spec-{}", std::process::id()));
        let etc = dir.join("rootfs/etc");
        let _ = std::fs::create_dir_all(&etc);
        let _ = std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        );
        let _ = std::fs::write(etc.join("group"), "root:x:0:\nusers:x:100:user\n");
        let pod = dir.join("pod");
        let _ = std::fs::create_dir_all(&pod);
        for f in ["hostname", "hosts", "resolv.conf"] {
            let _ = std::fs::write(pod.join(f), "x\n");
        }
        dir
    })
}

fn container_config(data: &[u8]) -> String {
    use berth_actors::container::messages::{ImageRun, SpecInputs};
    use berth_protocol::cri;
    use prost::Message;
    let Ok(c) = cri::ContainerConfig::decode(data) else {
        return "decode".into();
    };
    let config = match berthd::convert::container_config(Some(c)) {
        Ok(c) => c,
        Err(e) => return err_sig(&e),
    };
    if let Err(e) = berth_actors::container::validate::container(&config) {
        return err_sig(&e);
    }
    let dir = fixture();
    let pod = dir.join("pod");
    let inputs = SpecInputs {
        id: "c1".into(),
        config,
        image: ImageRun::default(),
        rootfs: dir.join("rootfs"),
        pod_pid: 4242,
        target_pid: None,
        pod_security: Default::default(),
        hostname_file: pod.join("hostname"),
        hosts_file: pod.join("hosts"),
        resolv_conf: pod.join("resolv.conf"),
        shm: Some(pod.join("shm")),
        cgroups_path: "/berth-fuzz/c1".into(),
        sysctls: Default::default(),
        host: std::sync::Arc::new(berth_actors::host::HostFacts::default()),
        runtime_handler: String::new(),
    };
    match berth_actors::container::spec::build(&inputs) {
        Ok(spec) => {
            serde_json::to_vec(&spec).expect("a built spec serializes");
            "ok".into()
        }
        Err(e @ Error::Internal(_)) => {
            panic!("a checked config reached the spec as an internal error: {e}")
        }
        Err(e) => err_sig(&e),
    }
}

fn pod_config(data: &[u8]) -> String {
    use berth_protocol::cri;
    use prost::Message;
    let Ok(c) = cri::PodSandboxConfig::decode(data) else {
        return "decode".into();
    };
    match berthd::convert::pod_config(Some(c))
        .and_then(|p| berth_actors::sandbox::validate::pod(&p).map(|_| p))
    {
        Ok(_) => "ok".into(),
        Err(e) => err_sig(&e),
    }
}

fn config_toml(data: &[u8]) -> String {
    match berthd::config::Config::parse(&text(data)) {
        Ok(_) => "ok".into(),
        // The message names the key and quotes the text; its first
        // clause says what kind of mistake it is.
        Err(e) => {
            let what = e.split_once("): ").map_or(e.as_str(), |(_, m)| m);
            signature("config", what.split(':').next().unwrap_or_default())
        }
    }
}

fn exit_record(data: &[u8]) -> String {
    use berth_protocol::shim::ExitRecord;
    match ExitRecord::parse(&text(data)) {
        Ok(r) => {
            let again = ExitRecord::parse(&r.to_json()).expect("a record reads back");
            assert_eq!(again, r, "exit record round trip");
            "ok".into()
        }
        Err(e) => signature("exit", &e),
    }
}

fn attach_request(data: &[u8]) -> String {
    use berth_protocol::shim::AttachRequest;
    match AttachRequest::parse(&text(data)) {
        Ok(r) => match r.to_line() {
            Ok(line) => {
                let again = AttachRequest::parse(&line).expect("a request reads back");
                assert_eq!(again, r, "attach request round trip");
                "ok".into()
            }
            Err(e) => signature("unwritable", &e),
        },
        Err(e) => signature("attach", &e),
    }
}

fn spdy(data: &[u8]) -> String {
    let mut codec = berth_stream::spdy::frame::Codec::new();
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(_)) if frames < 1000 => frames += 1,
            Ok(_) => return format!("ok:{}", frames.min(4)),
            Err(e) => return signature("spdy", &e.to_string()),
        }
    }
}

/// A peer's bytes to read, and a sink for what the server writes back.
struct Wire<'a> {
    input: &'a [u8],
}

impl std::io::Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl std::io::Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn websocket(data: &[u8]) -> String {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    let Some((&mode, rest)) = data.split_first() else {
        return "empty".into();
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(1 << 20);
    config.max_frame_size = Some(1 << 20);
    let mut ws = WebSocket::from_raw_socket(Wire { input: rest }, Role::Server, Some(config));
    let mut channels = 0;
    for _ in 0..1000 {
        match ws.read() {
            Ok(msg) => {
                if berth_stream::ws::unframe(mode & 1 == 1, msg).is_some() {
                    channels += 1;
                }
            }
            Err(e) => return signature("ws", &format!("{e}:{}", channels.min(3))),
        }
    }
    "many".into()
}

fn seeds_of(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn encode<M: prost::Message>(m: M) -> Vec<u8> {
    m.encode_to_vec()
}

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "reference",
            run: reference,
            seeds: || {
                seeds_of(&[
                    "busybox",
                    "docker.io/library/busybox:1.36",
                    "localhost:5000/a/b/c:v1",
                    "registry.k8s.io/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
                    "sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
                    "[::1]:5000/x:y",
                ])
            },
            dictionary: &[
                "/",
                ":",
                "@",
                "sha256:",
                ".",
                "-",
                "__",
                "localhost",
                "é",
                "[",
                "]",
                "docker.io",
                "library/",
            ],
            max_len: 8192,
        },
        Target {
            name: "manifest",
            run: manifest,
            seeds: || {
                seeds_of(&[
                    "\x01{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":2},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":32}]}",
                    "\x02{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":7,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}}]}",
                ])
            },
            dictionary: &[
                "\"schemaVersion\"",
                "\"mediaType\"",
                "\"digest\"",
                "\"size\"",
                "\"layers\"",
                "\"manifests\"",
                "\"platform\"",
                "sha256:",
                "-1",
                "1e400",
                "null",
                "[]",
                "{}",
            ],
            max_len: 16384,
        },
        Target {
            name: "image_config",
            run: image_config,
            seeds: || {
                seeds_of(&["{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"User\":\"1000:1000\",\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\",\"StopSignal\":\"SIGTERM\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\"]}}"])
            },
            dictionary: &[
                "\"User\"",
                "\"Env\"",
                "\"Entrypoint\"",
                "\"Cmd\"",
                "\"diff_ids\"",
                "null",
                "[]",
                "{}",
                "\"\\u0000\"",
            ],
            max_len: 16384,
        },
        Target {
            name: "layer",
            run: layer,
            seeds: || {
                vec![
                    vec![0, 0, 0, 0, 5],
                    vec![2, 0, 6, 0, 0, 0, 1, 6, 0, 0],
                    vec![3, 1, 4, 9, 3, 2, 0, 0, 0, 4, 4, 0, 7, 1, 0],
                ]
            },
            dictionary: &[],
            max_len: 512,
        },
        Target {
            name: "cni_result",
            run: cni_result,
            seeds: || {
                seeds_of(&[
                    "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"/run/netns/x\"}],\"ips\":[{\"address\":\"10.88.0.5/16\",\"gateway\":\"10.88.0.1\",\"interface\":0}]}",
                    "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"plugins\":[{\"type\":\"bridge\",\"ipam\":{\"type\":\"host-local\"}},{\"type\":\"portmap\",\"capabilities\":{\"portMappings\":true}}]}",
                ])
            },
            dictionary: &[
                "\"ips\"",
                "\"address\"",
                "\"interface\"",
                "\"plugins\"",
                "\"type\"",
                "\"name\"",
                "::1/128",
                "/33",
                "-1",
                "null",
            ],
            max_len: 8192,
        },
        Target {
            name: "container_config",
            run: container_config,
            seeds: || {
                use berth_protocol::cri::*;
                vec![encode(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    command: vec!["sh".into()],
                    working_dir: "/srv".into(),
                    envs: vec![KeyValue {
                        key: "A".into(),
                        value: "b".into(),
                    }],
                    mounts: vec![Mount {
                        container_path: "/data".into(),
                        host_path: "/tmp".into(),
                        ..Default::default()
                    }],
                    log_path: "app/0.log".into(),
                    linux: Some(LinuxContainerConfig {
                        resources: Some(LinuxContainerResources {
                            cpu_period: 100_000,
                            cpu_shares: 2,
                            memory_limit_in_bytes: 64 << 20,
                            ..Default::default()
                        }),
                        security_context: Some(LinuxContainerSecurityContext {
                            run_as_user: Some(Int64Value { value: 1000 }),
                            capabilities: Some(Capability {
                                add_capabilities: vec!["NET_ADMIN".into()],
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                })]
            },
            dictionary: &[
                "/",
                "..",
                "\0",
                "ALL",
                "CAP_",
                "localhost/",
                "runtime/default",
            ],
            max_len: 4096,
        },
        Target {
            name: "pod_config",
            run: pod_config,
            seeds: || {
                use berth_protocol::cri::*;
                vec![encode(PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: "web".into(),
                        uid: "u1".into(),
                        namespace: "ns".into(),
                        attempt: 0,
                    }),
                    hostname: "web-0".into(),
                    log_directory: "/var/log/pods/x".into(),
                    dns_config: Some(DnsConfig {
                        servers: vec!["10.0.0.10".into()],
                        searches: vec!["svc".into()],
                        options: vec!["ndots:5".into()],
                    }),
                    port_mappings: vec![PortMapping {
                        protocol: 0,
                        container_port: 80,
                        host_port: 8080,
                        host_ip: "127.0.0.1".into(),
                    }],
                    ..Default::default()
                })]
            },
            dictionary: &["/", "..", "\0", "net.", "kernel.", "/proc/"],
            max_len: 4096,
        },
        Target {
            name: "config_toml",
            run: config_toml,
            seeds: || {
                seeds_of(&[
                    "root = \"/var/lib/berth\"\n[cri]\nsocket = \"/run/berth/berth.sock\"\n[log]\nlevel = \"debug\"\n[stream]\nport = 0\n[runtimes.crun]\nbinary = \"crun\"\n[registries.\"localhost:5000\"]\ninsecure = true\nmirrors = [\"http://m\"]\n",
                    "[chaos]\nenabled = true\ninterval_ms = 10\n[cni]\nbin_dirs = []\nmasquerade = [\"10.0.0.0/8\"]\n",
                ])
            },
            dictionary: &[
                "[",
                "]",
                "=",
                "\"",
                "\n",
                "true",
                "-1",
                "99999999999999999999",
                "[[x]]",
                "{}",
            ],
            max_len: 8192,
        },
        Target {
            name: "exit_record",
            run: exit_record,
            seeds: || {
                seeds_of(&["{\"status\":137,\"exited_at_unix_nanos\":1700000000000000000,\"note\":\"the shim died\"}", "{}"])
            },
            dictionary: &[
                "\"status\"",
                "\"note\"",
                ":",
                ",",
                "\\u00e9",
                "\\\"",
                "-",
                "1e9",
            ],
            max_len: 4096,
        },
        Target {
            name: "attach_request",
            run: attach_request,
            seeds: || seeds_of(&["attach\tstdin=/run/a/in\tstdout=/run/a/out\tclose_stdin=1\n"]),
            dictionary: &["\t", "=", "stdin", "stdout", "stderr", "close_stdin", "\n"],
            max_len: 4096,
        },
        Target {
            name: "spdy",
            run: spdy,
            seeds: || {
                vec![
                    vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7],
                    vec![0, 0, 0, 1, 1, 0, 0, 2, b'h', b'i'],
                    vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 5],
                    vec![
                        0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x78, 0xbb,
                    ],
                ]
            },
            dictionary: &["\u{80}\u{3}", "\u{0}\u{0}\u{0}\u{1}", "\u{78}\u{bb}"],
            max_len: 8192,
        },
        Target {
            name: "websocket",
            run: websocket,
            seeds: || {
                vec![
                    vec![0, 0x82, 0x83, 1, 2, 3, 4, 1, b'h', b'i'],
                    vec![1, 0x81, 0x85, 0, 0, 0, 0, b'1', b'a', b'G', b'k', b'='],
                    vec![0, 0x88, 0x82, 0, 0, 0, 0, 3, 232],
                ]
            },
            dictionary: &[],
            max_len: 8192,
        },
    ]
}
