//! The bad-input sweep: every CRI RPC with malformed, oversized and hostile
//! requests against a real berthd. Each gets the status code the CRI
//! calls for and a message naming what was wrong; afterwards no actor has
//! restarted, berthd still answers, nothing was made or left behind
//! (fsck), and the node still runs a pod and a container.

use berth_protocol::admin::ListActorsRequest;
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::node::{container_config, create_container, pod_config, run_pod, Node};
use std::collections::BTreeMap;
use std::path::Path;
use tonic::transport::Channel;
use tonic::Code;

/// What the sweep saw: per expected code, how many requests; and every
/// request whose answer was not the expected one.
#[derive(Default)]
struct Sweep {
    outcomes: BTreeMap<String, usize>,
    wrong: Vec<String>,
}

impl Sweep {
    /// Records `got` for the request `what`, which must fail with `code`
    /// and a message holding `names` (case-insensitive).
    fn expect<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        got: Result<tonic::Response<T>, tonic::Status>,
        code: Code,
        names: &str,
    ) {
        match got {
            Err(s) if s.code() == code && s.message().to_lowercase().contains(names) => {
                *self.outcomes.entry(format!("{code:?}")).or_default() += 1;
            }
            Err(s) => self.wrong.push(format!(
                "{what}: wanted {code:?} naming {names:?}, got {:?}: {}",
                s.code(),
                s.message()
            )),
            Ok(r) => {
                let answer = format!("{:?}", r.into_inner());
                self.wrong.push(format!(
                    "{what}: wanted {code:?} naming {names:?}, got OK: {}",
                    answer.chars().take(160).collect::<String>()
                ))
            }
        }
    }
}

/// A change to a good request, what it is, and what the refusal names.
type Case<'a, T> = (&'a str, Box<dyn Fn(&mut T)>, &'a str);

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// A reference longer than any berth takes, whose 64th byte falls
/// inside a multibyte character.
fn straddling_reference() -> String {
    format!("registry.example/{}{}:tag", long(46), "é".repeat(2100))
}

fn pull(image: &str) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bad_references() -> Vec<(String, &'static str)> {
    vec![
        (String::new(), "image"),
        (straddling_reference(), "image"),
        (format!("example.com/{}", long(10_000)), "image"),
        ("busybox\0:latest".into(), "image"),
        ("BusyBox:latest".into(), "image"),
        ("busybox:".into(), "image"),
        ("busybox@sha256:zz".into(), "image"),
        (format!("busybox:{}", long(129)), "image"),
        ("bus box".into(), "image"),
        ("::::".into(), "image"),
    ]
}

async fn sweep_images(n: &Node, s: &mut Sweep) {
    let mut images = n.d.images().await;
    s.expect(
        "PullImage without an image",
        images.pull_image(PullImageRequest::default()).await,
        Code::InvalidArgument,
        "image",
    );
    // Many in a row: a crash would show as a restart and UNAVAILABLE.
    for round in 0..3 {
        for (r, names) in bad_references() {
            let what = format!(
                "PullImage {:?} (round {round})",
                r.chars().take(40).collect::<String>()
            );
            s.expect(
                &what,
                images.pull_image(pull(&r)).await,
                Code::InvalidArgument,
                names,
            );
        }
    }
    for (r, names) in bad_references().into_iter().skip(1) {
        let spec = Some(ImageSpec {
            image: r.clone(),
            ..Default::default()
        });
        s.expect(
            "ImageStatus of a bad reference",
            images
                .image_status(ImageStatusRequest {
                    image: spec.clone(),
                    verbose: true,
                })
                .await,
            Code::InvalidArgument,
            names,
        );
        s.expect(
            "RemoveImage of a bad reference",
            images
                .remove_image(RemoveImageRequest { image: spec })
                .await,
            Code::InvalidArgument,
            names,
        );
    }
    // Past the gRPC message limit (4 MiB): refused before it is decoded.
    s.expect(
        "PullImage of 5 MiB",
        images.pull_image(pull(&long(5 << 20))).await,
        Code::OutOfRange,
        "message length too large",
    );
    s.expect(
        "PullImage with a 1 MiB user name",
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: n.image.clone(),
                    ..Default::default()
                }),
                auth: Some(AuthConfig {
                    username: long(1 << 20),
                    password: "x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "username",
    );
}

/// Sends `pod` to RunPodSandbox expecting `code` naming `names`.
async fn bad_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    s: &mut Sweep,
    what: &str,
    pod: PodSandboxConfig,
    code: Code,
    names: &str,
) {
    let got = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod),
            ..Default::default()
        })
        .await;
    s.expect(&format!("RunPodSandbox: {what}"), got, code, names);
}

async fn sweep_pods(n: &Node, rt: &mut RuntimeServiceClient<Channel>, s: &mut Sweep) {
    let logs = n.logs();
    let good = || pod_config("hostile", &logs);
    s.expect(
        "RunPodSandbox without a config",
        rt.run_pod_sandbox(RunPodSandboxRequest::default()).await,
        Code::InvalidArgument,
        "config",
    );
    let sysctl = |name: &'static str, value: &'static str| {
        Box::new(move |p: &mut PodSandboxConfig| {
            p.linux
                .get_or_insert_with(Default::default)
                .sysctls
                .insert(name.into(), value.into());
        }) as Box<dyn Fn(&mut PodSandboxConfig)>
    };
    let port = |m: PortMapping| {
        Box::new(move |p: &mut PodSandboxConfig| p.port_mappings = vec![m.clone()])
            as Box<dyn Fn(&mut PodSandboxConfig)>
    };
    let edits: Vec<Case<PodSandboxConfig>> = vec![
        ("no metadata", Box::new(|p| p.metadata = None), "metadata"),
        (
            "a name of 10,000 bytes",
            Box::new(|p| p.metadata.as_mut().unwrap().name = long(10_000)),
            "name",
        ),
        (
            "a namespace with a NUL",
            Box::new(|p| p.metadata.as_mut().unwrap().namespace = "a\0b".into()),
            "namespace",
        ),
        (
            "a hostname with an underscore",
            Box::new(|p| p.hostname = "bad_host".into()),
            "hostname",
        ),
        (
            "a hostname of 65 bytes",
            Box::new(|p| p.hostname = long(65)),
            "hostname",
        ),
        (
            "a multibyte hostname",
            Box::new(|p| p.hostname = "hé".into()),
            "hostname",
        ),
        (
            "a relative log directory",
            Box::new(|p| p.log_directory = "logs".into()),
            "log directory",
        ),
        (
            "a log directory with a NUL",
            Box::new(|p| p.log_directory = "/tmp/a\0b".into()),
            "log directory",
        ),
        (
            "a log directory under /proc",
            Box::new(|p| p.log_directory = "/proc/self/berth-logs".into()),
            "log directory",
        ),
        (
            "a log directory under /sys",
            Box::new(|p| p.log_directory = "/sys/fs/berth-logs".into()),
            "log directory",
        ),
        (
            "a log directory naming a file",
            Box::new(|p| p.log_directory = "/etc/hostname".into()),
            "log directory",
        ),
        (
            "a log directory that climbs out",
            Box::new(|p| p.log_directory = "/var/log/../../proc/x".into()),
            "log directory",
        ),
        (
            "a sysctl that is not namespaced",
            sysctl("kernel.panic", "1"),
            "sysctl",
        ),
        (
            "a sysctl the kernel lacks",
            sysctl("net.ipv4.no_such_thing", "1"),
            "sysctl",
        ),
        (
            "a sysctl value with a newline",
            sysctl("net.ipv4.ip_forward", "1\n0"),
            "sysctl",
        ),
        (
            "a sysctl name that climbs out",
            sysctl("net/../../kernel/panic", "1"),
            "sysctl",
        ),
        (
            "a cgroup parent that climbs out",
            Box::new(|p| p.linux.as_mut().unwrap().cgroup_parent = "/a/../../b".into()),
            "cgroup parent",
        ),
        (
            "container port 70000",
            port(PortMapping {
                container_port: 70_000,
                ..Default::default()
            }),
            "port",
        ),
        (
            "host port -1",
            port(PortMapping {
                container_port: 80,
                host_port: -1,
                ..Default::default()
            }),
            "port",
        ),
        (
            "protocol 7",
            port(PortMapping {
                container_port: 80,
                protocol: 7,
                ..Default::default()
            }),
            "protocol",
        ),
        (
            "a host IP that is not an address",
            port(PortMapping {
                container_port: 80,
                host_port: 8080,
                host_ip: "not-an-ip".into(),
                ..Default::default()
            }),
            "host ip",
        ),
        (
            "1,000 host ports",
            Box::new(|p| {
                p.port_mappings = (0..1000)
                    .map(|i| PortMapping {
                        container_port: 10_000 + i,
                        host_port: 40_000 + i,
                        ..Default::default()
                    })
                    .collect()
            }),
            "port",
        ),
        (
            "a DNS server with a NUL",
            Box::new(|p| p.dns_config.as_mut().unwrap().servers = vec!["1.1.1.1\0".into()]),
            "dns",
        ),
        (
            "a DNS option with a newline",
            Box::new(|p| {
                p.dns_config.as_mut().unwrap().options = vec!["ndots:5\nnameserver 6.6.6.6".into()]
            }),
            "dns",
        ),
        (
            "a label key of 10,000 bytes",
            Box::new(|p| {
                p.labels.insert(long(10_000), "v".into());
            }),
            "label",
        ),
        (
            "annotations of 2 MiB",
            Box::new(|p| {
                p.annotations.insert("big".into(), long(2 << 20));
            }),
            "annotation",
        ),
        (
            "a negative CPU quota below -1",
            Box::new(|p| {
                p.linux
                    .as_mut()
                    .unwrap()
                    .resources
                    .as_mut()
                    .unwrap()
                    .cpu_quota = -5;
            }),
            "cpu",
        ),
    ];
    for (attempt, (what, edit, names)) in (1..).zip(edits) {
        let mut p = good();
        // Each its own name: one that was wrongly made must not make the
        // next fail for its name.
        p.metadata.as_mut().unwrap().attempt = attempt;
        edit(&mut p);
        bad_pod(rt, s, what, p, Code::InvalidArgument, names).await;
    }
    let mut p = good();
    p.metadata.as_mut().unwrap().attempt = 0;
    let got = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(p),
            runtime_handler: "no-such-handler".into(),
        })
        .await;
    s.expect(
        "RunPodSandbox with an unknown handler",
        got,
        Code::InvalidArgument,
        "handler",
    );
    for (what, id, code) in [
        ("an unknown pod", "0123456789abcdef", Code::NotFound),
        ("an empty id", "", Code::InvalidArgument),
    ] {
        s.expect(
            &format!("PodSandboxStatus of {what}"),
            rt.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await,
            Code::NotFound,
            "pod",
        );
        s.expect(
            &format!("PortForward into {what}"),
            rt.port_forward(PortForwardRequest {
                pod_sandbox_id: id.into(),
                port: vec![80],
            })
            .await,
            code,
            "pod",
        );
    }
}

async fn sweep_containers(
    n: &Node,
    rt: &mut RuntimeServiceClient<Channel>,
    s: &mut Sweep,
    pod: &str,
    pod_config: &PodSandboxConfig,
) {
    let good = || container_config("c", &n.image, &["sleep", "3600"]);
    let mut fifo = std::env::temp_dir();
    fifo.push(format!("berth-hostile-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let big_profile =
        std::env::temp_dir().join(format!("berth-hostile-big-{}", std::process::id()));
    std::fs::write(&big_profile, vec![b' '; 8 << 20]).expect("big profile");
    let localhost = |path: &Path| {
        let path = path.display().to_string();
        Box::new(move |c: &mut ContainerConfig| {
            c.linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .seccomp = Some(SecurityProfile {
                profile_type: security_profile::ProfileType::Localhost as i32,
                localhost_ref: path.clone(),
            });
        }) as Box<dyn Fn(&mut ContainerConfig)>
    };
    let res = |f: fn(&mut LinuxContainerResources)| {
        Box::new(move |c: &mut ContainerConfig| {
            f(c.linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default))
        }) as Box<dyn Fn(&mut ContainerConfig)>
    };
    let sec = |f: fn(&mut LinuxContainerSecurityContext)| {
        Box::new(move |c: &mut ContainerConfig| {
            f(c.linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default))
        }) as Box<dyn Fn(&mut ContainerConfig)>
    };
    let mount = |container_path: &'static str, host_path: &'static str| {
        Box::new(move |c: &mut ContainerConfig| {
            c.mounts = vec![Mount {
                container_path: container_path.into(),
                host_path: host_path.into(),
                ..Default::default()
            }]
        }) as Box<dyn Fn(&mut ContainerConfig)>
    };
    let edits: Vec<Case<ContainerConfig>> = vec![
        ("no metadata", Box::new(|c| c.metadata = None), "metadata"),
        (
            "an empty name",
            Box::new(|c| c.metadata.as_mut().unwrap().name = String::new()),
            "name",
        ),
        (
            "a name of 10,000 bytes",
            Box::new(|c| c.metadata.as_mut().unwrap().name = long(10_000)),
            "name",
        ),
        ("no image", Box::new(|c| c.image = None), "image"),
        (
            "an image reference straddling byte 64",
            Box::new(|c| c.image.as_mut().unwrap().image = straddling_reference()),
            "image",
        ),
        (
            "a command with a NUL",
            Box::new(|c| c.command = vec!["sh\0".into()]),
            "command",
        ),
        (
            "an argument with a NUL",
            Box::new(|c| c.args = vec!["a\0b".into()]),
            "arg",
        ),
        (
            "an environment name with '='",
            Box::new(|c| {
                c.envs = vec![KeyValue {
                    key: "A=B".into(),
                    value: "c".into(),
                }]
            }),
            "env",
        ),
        (
            "an environment value with a NUL",
            Box::new(|c| {
                c.envs = vec![KeyValue {
                    key: "A".into(),
                    value: "b\0c".into(),
                }]
            }),
            "env",
        ),
        (
            "a relative working dir",
            Box::new(|c| c.working_dir = "tmp".into()),
            "working dir",
        ),
        (
            "a working dir with a NUL",
            Box::new(|c| c.working_dir = "/tmp\0x".into()),
            "working dir",
        ),
        (
            "a log path with a NUL",
            Box::new(|c| c.log_path = "c/0\0.log".into()),
            "log path",
        ),
        (
            "a log path that climbs out",
            Box::new(|c| c.log_path = "../../etc/cron.d/x".into()),
            "log path",
        ),
        (
            "an absolute log path",
            Box::new(|c| c.log_path = "/etc/passwd".into()),
            "log path",
        ),
        (
            "a relative container path",
            mount("data", "/tmp"),
            "container path",
        ),
        (
            "a container path with a NUL",
            mount("/da\0ta", "/tmp"),
            "container path",
        ),
        ("a relative host path", mount("/data", "tmp"), "host path"),
        (
            "a host path with a NUL",
            mount("/data", "/tm\0p"),
            "host path",
        ),
        (
            "a container path that climbs out",
            mount("/../../etc", "/tmp"),
            "container path",
        ),
        (
            "a device with bad permissions",
            Box::new(|c| {
                c.devices = vec![Device {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rwxz".into(),
                }]
            }),
            "device",
        ),
        (
            "a device with a relative path",
            Box::new(|c| {
                c.devices = vec![Device {
                    container_path: "dev/x".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rw".into(),
                }]
            }),
            "device",
        ),
        (
            "cpuset_cpus \"abc\"",
            res(|r| r.cpuset_cpus = "abc".into()),
            "cpuset_cpus",
        ),
        (
            "cpuset_cpus \"999\"",
            res(|r| r.cpuset_cpus = "999".into()),
            "cpuset_cpus",
        ),
        (
            "cpuset_cpus \"3-1\"",
            res(|r| r.cpuset_cpus = "3-1".into()),
            "cpuset_cpus",
        ),
        (
            "cpuset_mems \"x\"",
            res(|r| r.cpuset_mems = "x".into()),
            "cpuset_mems",
        ),
        (
            "cpuset_mems \"64\"",
            res(|r| r.cpuset_mems = "64".into()),
            "cpuset_mems",
        ),
        ("cpu_period 1", res(|r| r.cpu_period = 1), "cpu_period"),
        (
            "cpu_period 10 s",
            res(|r| r.cpu_period = 10_000_000),
            "cpu_period",
        ),
        ("cpu_quota 5", res(|r| r.cpu_quota = 5), "cpu_quota"),
        ("cpu_shares -3", res(|r| r.cpu_shares = -3), "cpu_shares"),
        (
            "a 1-byte memory limit",
            res(|r| r.memory_limit_in_bytes = 1),
            "memory",
        ),
        (
            "a negative memory limit",
            res(|r| r.memory_limit_in_bytes = -7),
            "memory",
        ),
        (
            "swap below the memory limit",
            res(|r| {
                r.memory_limit_in_bytes = 256 << 20;
                r.memory_swap_limit_in_bytes = 16 << 20;
            }),
            "swap",
        ),
        (
            "a hugepage size that is not one",
            res(|r| {
                r.hugepage_limits = vec![HugepageLimit {
                    page_size: "3MB".into(),
                    limit: 1 << 20,
                }]
            }),
            "hugepage",
        ),
        (
            "a unified key that climbs out",
            res(|r| {
                r.unified.insert("../../cgroup.procs".into(), "1".into());
            }),
            "unified",
        ),
        (
            "a unified value with a newline",
            res(|r| {
                r.unified.insert("memory.high".into(), "1\n2".into());
            }),
            "unified",
        ),
        (
            "a seccomp profile that never ends (/dev/zero)",
            localhost(Path::new("/dev/zero")),
            "seccomp",
        ),
        ("a seccomp profile on a FIFO", localhost(&fifo), "seccomp"),
        (
            "a seccomp profile of 8 MiB",
            localhost(&big_profile),
            "seccomp",
        ),
        (
            "a relative seccomp profile",
            localhost(Path::new("profile.json")),
            "seccomp",
        ),
        (
            "a seccomp profile that is a directory",
            localhost(Path::new("/etc")),
            "seccomp",
        ),
        (
            "a seccomp profile that is not JSON",
            localhost(Path::new("/etc/hostname")),
            "seccomp",
        ),
        (
            "an unknown capability",
            sec(|sc| {
                sc.capabilities = Some(Capability {
                    add_capabilities: vec!["CAP_NO_SUCH".into()],
                    ..Default::default()
                })
            }),
            "capabilit",
        ),
        (
            "a user name with a NUL",
            sec(|sc| sc.run_as_username = "ro\0ot".into()),
            "run_as_username",
        ),
        (
            "a relative masked path",
            sec(|sc| sc.masked_paths = vec!["proc/kcore".into()]),
            "masked",
        ),
        (
            "a read-only path with a NUL",
            sec(|sc| sc.readonly_paths = vec!["/proc/\0".into()]),
            "readonly",
        ),
    ];
    for (attempt, (what, edit, names)) in (1..).zip(edits) {
        let mut c = good();
        c.metadata.as_mut().unwrap().attempt = attempt;
        edit(&mut c);
        let got = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(c),
                sandbox_config: Some(pod_config.clone()),
            })
            .await;
        s.expect(
            &format!("CreateContainer: {what}"),
            got,
            Code::InvalidArgument,
            names,
        );
    }
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&big_profile);
    s.expect(
        "CreateContainer in an unknown pod",
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            config: Some(good()),
            sandbox_config: Some(pod_config.clone()),
        })
        .await,
        Code::NotFound,
        "pod",
    );
    // A real container for the calls that act on one.
    let id = create_container(
        rt,
        pod,
        container_config("good", &n.image, &["sleep", "3600"]),
    )
    .await
    .expect("a good container is made");
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    let exec = |cmd: Vec<&str>, timeout: i64| ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.into_iter().map(String::from).collect(),
        timeout,
    };
    s.expect(
        "ExecSync without a command",
        rt.exec_sync(exec(vec![], 0)).await,
        Code::InvalidArgument,
        "cmd",
    );
    s.expect(
        "ExecSync with a NUL",
        rt.exec_sync(exec(vec!["ec\0ho"], 0)).await,
        Code::InvalidArgument,
        "cmd",
    );
    s.expect(
        "ExecSync with a negative timeout",
        rt.exec_sync(exec(vec!["true"], -1)).await,
        Code::InvalidArgument,
        "timeout",
    );
    s.expect(
        "Exec with a terminal and stderr",
        rt.exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "stderr",
    );
    s.expect(
        "Exec with no stream",
        rt.exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "stdin",
    );
    for port in [0, -1, 70_000] {
        s.expect(
            &format!("PortForward to port {port}"),
            rt.port_forward(PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: vec![port],
            })
            .await,
            Code::InvalidArgument,
            "port",
        );
    }
    s.expect(
        "UpdateContainerResources with cpu_period 1",
        rt.update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_period: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "cpu_period",
    );
    s.expect(
        "UpdateContainerResources with cpuset \"abc\"",
        rt.update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpuset_cpus: "abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "cpuset_cpus",
    );
    for unknown in ["0123456789abcdef", ""] {
        s.expect(
            "StartContainer of an unknown container",
            rt.start_container(StartContainerRequest {
                container_id: unknown.into(),
            })
            .await,
            Code::NotFound,
            "container",
        );
        s.expect(
            "ContainerStatus of an unknown container",
            rt.container_status(ContainerStatusRequest {
                container_id: unknown.into(),
                verbose: true,
            })
            .await,
            Code::NotFound,
            "container",
        );
        s.expect(
            "ContainerStats of an unknown container",
            rt.container_stats(ContainerStatsRequest {
                container_id: unknown.into(),
            })
            .await,
            Code::NotFound,
            "container",
        );
        s.expect(
            "ReopenContainerLog of an unknown container",
            rt.reopen_container_log(ReopenContainerLogRequest {
                container_id: unknown.into(),
            })
            .await,
            Code::NotFound,
            "container",
        );
        s.expect(
            "ExecSync in an unknown container",
            rt.exec_sync(ExecSyncRequest {
                container_id: unknown.into(),
                cmd: vec!["true".into()],
                timeout: 0,
            })
            .await,
            Code::NotFound,
            "container",
        );
    }
    s.expect(
        "ListContainers filtered by state 99",
        rt.list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue { state: 99 }),
                ..Default::default()
            }),
        })
        .await,
        Code::InvalidArgument,
        "state",
    );
    s.expect(
        "ListPodSandbox filtered by state 99",
        rt.list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue { state: 99 }),
                ..Default::default()
            }),
        })
        .await,
        Code::InvalidArgument,
        "state",
    );
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .expect("RemoveContainer");
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    let n = Node::running("hs", "").await;
    let mut rt = n.d.runtime().await;
    let mut s = Sweep::default();

    sweep_images(&n, &mut s).await;
    sweep_pods(&n, &mut rt, &mut s).await;

    // Nothing the refused pods asked for was made.
    let pods = berth_tests::node::list_pods(&mut rt).await;
    for p in pods {
        let name = p.metadata.map(|m| m.name).unwrap_or_default();
        s.wrong.push(format!(
            "a refused pod was made: {:?}",
            name.chars().take(40).collect::<String>()
        ));
        let _ = berth_tests::node::remove_pod(&mut rt, &p.id).await;
    }

    let config = pod_config("hostile-good", &n.logs());
    let pod = run_pod(&mut rt, config.clone()).await.expect("a good pod");
    sweep_containers(&n, &mut rt, &mut s, &pod, &config).await;
    let containers = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    for c in containers {
        let name = c.metadata.map(|m| m.name).unwrap_or_default();
        s.wrong.push(format!(
            "a refused container was made: {:?}",
            name.chars().take(40).collect::<String>()
        ));
        let _ = rt
            .remove_container(RemoveContainerRequest { container_id: c.id })
            .await;
    }

    // The pinned sandbox image is in use by every pod to come.
    let mut images = n.d.images().await;
    let pinned: Vec<_> = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
        .into_iter()
        .filter(|i| i.pinned)
        .collect();
    assert!(!pinned.is_empty(), "the sandbox image is listed as pinned");
    for image in pinned {
        s.expect(
            "RemoveImage of the pinned sandbox image",
            images
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image.id.clone(),
                        ..Default::default()
                    }),
                })
                .await,
            Code::FailedPrecondition,
            "pinned",
        );
    }

    let total: usize = s.outcomes.values().sum::<usize>() + s.wrong.len();
    eprintln!(
        "bad-input sweep: {total} requests; as expected: {:?}; wrong: {}",
        s.outcomes,
        s.wrong.len()
    );
    assert!(
        s.wrong.is_empty(),
        "{} of {total} answers were wrong:\n{}",
        s.wrong.len(),
        s.wrong.join("\n")
    );

    let actors =
        n.d.admin()
            .await
            .list_actors(ListActorsRequest {})
            .await
            .expect("berthd still answers")
            .into_inner()
            .actors;
    assert!(
        actors.iter().all(|a| a.restarts == 0),
        "an actor restarted: {actors:?}"
    );
    // Another pod still runs after it all.
    let again = run_pod(&mut rt, pod_config("hostile-after", &n.logs()))
        .await
        .expect("a pod after the sweep");
    for id in [pod, again] {
        berth_tests::node::remove_pod(&mut rt, &id)
            .await
            .expect("RemovePodSandbox");
    }
    n.assert_consistent();
}
