use super::*;
use crate::host::HostFacts;
use crate::sandbox::messages::PodSecurity;
use serde_json::{json, Value};
use std::collections::HashSet;
use tempfile::TempDir;

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment, then a line that does not parse
+nis
daemon:x:1:1::/:/sbin/nologin
www-data:x:33:33:www-data:/var/www:/bin/sh
alice:x:1002:1002::/home/alice:/bin/sh
";

const GROUP: &str = "\
root:x:0:
audio:x:29:www-data,alice
video:x:44:alice
www-data:x:33:
alice:x:1002:
staff:x:1004:
";

/// A root filesystem with a user database, and the pod's shared files.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("rootfs/etc");
        std::fs::create_dir_all(&etc).expect("etc");
        std::fs::write(etc.join("passwd"), PASSWD).expect("passwd");
        std::fs::write(etc.join("group"), GROUP).expect("group");
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(&pod).expect("pod dir");
        std::fs::write(pod.join("hostname"), "web-0\n").expect("hostname");
        std::fs::write(pod.join("hosts"), "127.0.0.1\tlocalhost\n").expect("hosts");
        std::fs::write(pod.join("resolv.conf"), "nameserver 10.0.0.10\n").expect("resolv");
        Fixture { dir }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn inputs(&self) -> SpecInputs {
        let pod = self.dir.path().join("pod");
        SpecInputs {
            target_pid: None,
            id: "c1".into(),
            config: ContainerConfig {
                name: "app".into(),
                image: "docker.io/library/app:1".into(),
                command: vec!["/app".into()],
                ..Default::default()
            },
            image: ImageRun::default(),
            rootfs: self.rootfs(),
            pod_pid: 4242,
            pod_security: PodSecurity::default(),
            hostname_file: pod.join("hostname"),
            hosts_file: pod.join("hosts"),
            resolv_conf: pod.join("resolv.conf"),
            shm: Some(pod.join("shm")),
            cgroups_path: "/kubepods/pod1/c1".into(),
            sysctls: BTreeMap::new(),
            host: std::sync::Arc::new(HostFacts::default()),
            runtime_handler: String::new(),
        }
    }
}

fn json_of(inputs: &SpecInputs) -> Value {
    serde_json::to_value(build(inputs).expect("spec")).expect("json")
}

fn invalid_message(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn mount_at<'a>(spec: &'a Value, dest: &str) -> Option<&'a Value> {
    spec["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["destination"] == dest)
}

fn sec(f: impl FnOnce(&mut ContainerSecurity)) -> ContainerSecurity {
    let mut s = ContainerSecurity::default();
    f(&mut s);
    s
}

// ---------------------------------------------------------------- process

#[test]
fn command_and_args_merge_as_docker_does() {
    let image = ImageRun {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["--cmd".into()],
        ..Default::default()
    };
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&["/cmd"], &[], &["/cmd"]),
        (&["/cmd"], &["a"], &["/cmd", "a"]),
        (&[], &["a", "b"], &["/entry", "a", "b"]),
        (&[], &[], &["/entry", "--cmd"]),
    ];
    for (command, args, want) in cases {
        let config = ContainerConfig {
            command: v(command),
            args: v(args),
            ..Default::default()
        };
        assert_eq!(
            command_line(&config, &image).expect("args"),
            v(want),
            "{command:?} {args:?}"
        );
    }
    // An image with only a CMD runs it.
    let only_cmd = ImageRun {
        cmd: vec!["/bin/sh".into()],
        ..Default::default()
    };
    assert_eq!(
        command_line(&ContainerConfig::default(), &only_cmd).expect("args"),
        v(&["/bin/sh"])
    );
}

#[test]
fn no_command_anywhere_is_invalid() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.command.clear();
    let m = invalid_message(build(&inputs));
    assert_eq!(
        m,
        "no command: neither the container nor the image names one"
    );
}

#[test]
fn kubelet_env_overrides_the_image_and_path_has_a_default() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.image.env = vec!["A=image".into(), "B=image".into()];
    inputs.config.envs = vec![("B".into(), "cri".into()), ("C".into(), "x=y".into())];
    let spec = json_of(&inputs);
    assert_eq!(
        strings(&spec["process"]["env"]),
        vec![
            format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=web-0".into(),
            "A=image".into(),
            "B=cri".into(),
            "C=x=y".into(),
        ]
    );

    // The image's PATH wins over the default, kubelet's over the image's.
    inputs.image.env = vec!["PATH=/image/bin".into()];
    inputs.config.envs.clear();
    let env = strings(&json_of(&inputs)["process"]["env"]);
    assert_eq!(env[0], "PATH=/image/bin");
    assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
    inputs.config.envs = vec![("PATH".into(), "/cri/bin".into())];
    assert_eq!(
        strings(&json_of(&inputs)["process"]["env"])[0],
        "PATH=/cri/bin"
    );

    inputs.config.envs = vec![("A=B".into(), "c".into())];
    assert!(invalid_message(build(&inputs)).contains("envs"));
}

#[test]
fn working_dir_terminal_and_defaults() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    let spec = json_of(&inputs);
    assert_eq!(spec["process"]["cwd"], "/");
    assert_eq!(spec["process"]["terminal"], false);
    assert_eq!(spec["process"]["noNewPrivileges"], false);
    assert!(spec["process"].get("rlimits").is_none());
    assert!(spec.get("hostname").is_none());
    assert_eq!(spec["root"]["path"], json!(fx.rootfs()));
    assert_eq!(spec["root"]["readonly"], false);

    inputs.image.working_dir = "/srv".into();
    assert_eq!(json_of(&inputs)["process"]["cwd"], "/srv");
    inputs.config.working_dir = "/work".into();
    inputs.config.tty = true;
    inputs.config.security.no_new_privs = true;
    let spec = json_of(&inputs);
    assert_eq!(spec["process"]["cwd"], "/work");
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert!(strings(&spec["process"]["env"]).contains(&"TERM=xterm".to_string()));

    inputs.config.working_dir = "relative".into();
    assert!(invalid_message(build(&inputs)).contains("working_dir"));
}

#[test]
fn readonly_rootfs() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.security.readonly_rootfs = true;
    let spec = build(&inputs).expect("spec");
    assert_eq!(spec.root().as_ref().expect("root").readonly(), Some(true));
}

// ------------------------------------------------------------------ users

/// uid, gid and supplementary gids.
type Identity = (u32, u32, Vec<u32>);

#[test]
fn users_from_the_image() {
    let fx = Fixture::new();
    let root = fx.rootfs();
    let none = ContainerSecurity::default();
    let cases: [(&str, Identity); 7] = [
        ("", (0, 0, vec![0])),
        ("1002", (1002, 1002, vec![1002, 29, 44])),
        ("www-data", (33, 33, vec![33, 29])),
        ("1003:1004", (1003, 1004, vec![1004])),
        ("www-data:1004", (33, 1004, vec![1004, 29])),
        ("1002:staff", (1002, 1004, vec![1004, 29, 44])),
        // A uid with no passwd entry gets gid 0.
        ("4000", (4000, 0, vec![0])),
    ];
    for (user, want) in cases {
        assert_eq!(
            resolve_user(&root, user, &none).expect(user),
            want,
            "{user}"
        );
    }
}

#[test]
fn users_from_kubelet_override_the_image() {
    let fx = Fixture::new();
    let root = fx.rootfs();
    let s = sec(|s| s.run_as_user = Some(1002));
    assert_eq!(
        resolve_user(&root, "www-data:1004", &s).expect("uid"),
        (1002, 1002, vec![1002, 29, 44])
    );
    let s = sec(|s| s.run_as_username = "alice".into());
    assert_eq!(
        resolve_user(&root, "www-data", &s).expect("name"),
        (1002, 1002, vec![1002, 29, 44])
    );
    let s = sec(|s| {
        s.run_as_user = Some(33);
        s.run_as_group = Some(5000);
    });
    assert_eq!(
        resolve_user(&root, "", &s).expect("group"),
        (33, 5000, vec![5000, 29])
    );
    // run_as_group over the image's USER too.
    let s = sec(|s| s.run_as_group = Some(7));
    assert_eq!(resolve_user(&root, "1002:1004", &s).expect("g").1, 7);
}

#[test]
fn supplemental_groups_merge_or_strict() {
    let fx = Fixture::new();
    let root = fx.rootfs();
    let merge = sec(|s| {
        s.run_as_user = Some(1002);
        s.supplemental_groups = vec![5000, 44];
    });
    assert_eq!(
        resolve_user(&root, "", &merge).expect("merge").2,
        vec![1002, 29, 44, 5000]
    );
    let strict = ContainerSecurity {
        supplemental_groups_policy: SupplementalGroupsPolicy::Strict,
        ..merge
    };
    assert_eq!(
        resolve_user(&root, "", &strict).expect("strict").2,
        vec![1002, 5000, 44]
    );
}

#[test]
fn unknown_or_bad_users_are_invalid() {
    let fx = Fixture::new();
    let root = fx.rootfs();
    let none = ContainerSecurity::default();
    assert!(invalid_message(resolve_user(&root, "nobody2", &none)).contains("nobody2"));
    assert!(invalid_message(resolve_user(&root, "1002:nogroup", &none)).contains("nogroup"));
    assert!(invalid_message(resolve_user(&root, "1002:", &none)).contains("USER"));
    let s = sec(|s| s.run_as_username = "ghost".into());
    assert!(invalid_message(resolve_user(&root, "", &s)).contains("run_as_username"));
    let s = sec(|s| s.run_as_user = Some(-1));
    assert!(invalid_message(resolve_user(&root, "", &s)).contains("run_as_user"));
    let s = sec(|s| s.supplemental_groups = vec![-5]);
    assert!(invalid_message(resolve_user(&root, "", &s)).contains("supplemental_groups"));
}

#[test]
fn the_user_database_is_read_inside_the_rootfs_only() {
    let fx = Fixture::new();
    // A passwd on the host the image's links try to reach.
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("passwd"), "evil:x:666:666::/:/bin/sh\n").expect("evil");

    let root = fx.dir.path().join("escape");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    // Absolute: resolved inside the rootfs, where it does not exist.
    std::os::unix::fs::symlink(outside.join("passwd"), root.join("etc/passwd")).expect("link");
    let none = ContainerSecurity::default();
    assert!(resolve_user(&root, "evil", &none).is_err());
    // Relative and climbing: `..` stops at the rootfs.
    std::fs::remove_file(root.join("etc/passwd")).expect("rm");
    std::os::unix::fs::symlink("../../../../../../outside/passwd", root.join("etc/passwd"))
        .expect("link");
    assert!(resolve_user(&root, "evil", &none).is_err());

    // A link that stays inside the image is followed.
    std::fs::create_dir_all(root.join("lib")).expect("lib");
    std::fs::write(root.join("lib/passwd"), "bob:x:77:78::/:/bin/sh\n").expect("bob");
    std::fs::remove_file(root.join("etc/passwd")).expect("rm");
    std::os::unix::fs::symlink("/lib/passwd", root.join("etc/passwd")).expect("link");
    assert_eq!(
        resolve_user(&root, "bob", &none).expect("bob"),
        (77, 78, vec![78])
    );
    // A directory where the file should be is as good as no file.
    std::fs::remove_file(root.join("etc/passwd")).expect("rm");
    std::fs::create_dir(root.join("etc/passwd")).expect("dir");
    assert_eq!(resolve_user(&root, "5", &none).expect("5"), (5, 0, vec![0]));
    // A link loop ends.
    std::fs::remove_dir(root.join("etc/passwd")).expect("rmdir");
    std::os::unix::fs::symlink("passwd", root.join("etc/passwd")).expect("loop");
    assert_eq!(resolve_user(&root, "5", &none).expect("5"), (5, 0, vec![0]));
}

#[test]
fn the_spec_carries_the_resolved_user() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.image.user = "www-data".into();
    let spec = json_of(&inputs);
    assert_eq!(
        spec["process"]["user"],
        json!({"uid": 33, "gid": 33, "additionalGids": [33, 29]})
    );
}

// ----------------------------------------------------------- capabilities

/// Every capability: what berthd holds when it runs with all of them.
fn all_caps() -> Capabilities {
    HostFacts::default().capabilities
}

fn caps_of(s: &ContainerSecurity) -> HashSet<Capability> {
    capability_set(s, &all_caps()).expect("caps")
}

#[test]
fn capabilities_default_add_drop_and_all() {
    let default: HashSet<_> = DEFAULT_CAPABILITIES.into_iter().collect();
    assert_eq!(caps_of(&ContainerSecurity::default()), default);

    let s = sec(|s| {
        s.capabilities_add = vec!["sys_admin".into(), "CAP_NET_ADMIN".into()];
        s.capabilities_drop = vec!["Cap_Chown".into()];
    });
    let got = caps_of(&s);
    assert!(got.contains(&Capability::SysAdmin) && got.contains(&Capability::NetAdmin));
    assert!(!got.contains(&Capability::Chown));
    assert_eq!(got.len(), default.len() + 1);

    let s = sec(|s| {
        s.capabilities_drop = vec!["ALL".into()];
        s.capabilities_add = vec!["NET_BIND_SERVICE".into()];
    });
    assert_eq!(caps_of(&s), HashSet::from([Capability::NetBindService]));

    let s = sec(|s| s.capabilities_add = vec!["all".into()]);
    assert_eq!(caps_of(&s).len(), all_caps().len());

    let s = sec(|s| {
        s.capabilities_add = vec!["ALL".into()];
        s.capabilities_drop = vec!["CHOWN".into()];
    });
    let got = caps_of(&s);
    assert_eq!(got.len(), all_caps().len() - 1);
    assert!(!got.contains(&Capability::Chown));

    let s = sec(|s| s.capabilities_add = vec!["CAP_FLY".into()]);
    let m = invalid_message(capability_set(&s, &all_caps()));
    assert!(
        m.contains("capabilities_add") && m.contains("CAP_FLY"),
        "{m}"
    );
    let s = sec(|s| s.capabilities_drop = vec!["nope".into()]);
    assert!(invalid_message(capability_set(&s, &all_caps())).contains("capabilities_drop"));
}

/// berthd without CAP_SYS_RESOURCE (as on a node that lacks it): ALL and
/// privileged mean what berthd holds, and asking for a capability it
/// lacks is a clear error, not runc's "unable to apply caps".
#[test]
fn capabilities_are_bounded_by_what_berthd_holds() {
    let mut held = all_caps();
    held.remove(&Capability::SysResource);
    let set = |s: &ContainerSecurity| capability_set(s, &held);

    let all = sec(|s| s.capabilities_add = vec!["ALL".into()]);
    assert_eq!(set(&all).expect("all"), held);
    let privileged = sec(|s| s.privileged = true);
    assert_eq!(set(&privileged).expect("privileged"), held);

    let one = sec(|s| s.capabilities_add = vec!["SYS_RESOURCE".into()]);
    match set(&one) {
        Err(Error::FailedPrecondition(m)) => {
            assert!(
                m.contains("capabilities_add") && m.contains("CAP_SYS_RESOURCE"),
                "{m}"
            )
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    // Defaults berthd lacks are left out rather than failing every
    // container.
    held.remove(&Capability::NetRaw);
    let got = capability_set(&ContainerSecurity::default(), &held).expect("defaults");
    assert_eq!(got.len(), DEFAULT_CAPABILITIES.len() - 1);
    assert!(!got.contains(&Capability::NetRaw));

    // The spec carries the same set.
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.host = std::sync::Arc::new(HostFacts {
        capabilities: held.clone(),
        ..HostFacts::default()
    });
    inputs.config.security.privileged = true;
    inputs.pod_security.privileged = true;
    let bounding = strings(&json_of(&inputs)["process"]["capabilities"]["bounding"]);
    assert_eq!(bounding.len(), held.len());
    assert!(!bounding.contains(&"CAP_SYS_RESOURCE".to_string()));
}

#[test]
fn capabilities_in_the_spec_leave_inheritable_and_ambient_empty() {
    let fx = Fixture::new();
    let spec = json_of(&fx.inputs());
    let caps = &spec["process"]["capabilities"];
    for set in ["bounding", "effective", "permitted"] {
        let mut got = strings(&caps[set]);
        got.sort();
        assert_eq!(got.len(), 14, "{set}");
        assert!(got.contains(&"CAP_AUDIT_WRITE".to_string()));
    }
    assert!(caps.get("inheritable").is_none());
    assert!(caps.get("ambient").is_none());
}

#[test]
fn privileged_containers() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.security.privileged = true;
    inputs.config.security.seccomp = "runtime/default".into();
    inputs.config.security.masked_paths = Some(vec!["/proc/x".into()]);
    // Only in a privileged pod.
    assert!(invalid_message(build(&inputs)).contains("privileged"));
    inputs.pod_security.privileged = true;
    let spec = json_of(&inputs);
    assert_eq!(
        spec["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps")
            .len(),
        all_caps().len()
    );
    assert_eq!(spec["process"]["noNewPrivileges"], false);
    let linux = &spec["linux"];
    assert!(linux.get("maskedPaths").is_none());
    assert!(linux.get("readonlyPaths").is_none());
    assert!(linux.get("seccomp").is_none());
    assert_eq!(
        linux["resources"]["devices"][0],
        json!({"allow": true, "access": "rwm"})
    );
    let dev = mount_at(&spec, "/dev").expect("/dev");
    assert_eq!(dev["type"], "bind");
    assert_eq!(dev["source"], "/dev");
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let options = strings(&mount_at(&spec, dest).expect(dest)["options"]);
        assert!(!options.contains(&"ro".to_string()), "{dest}: {options:?}");
    }
}

#[test]
fn unprivileged_defaults() {
    let fx = Fixture::new();
    let spec = json_of(&fx.inputs());
    let linux = &spec["linux"];
    assert_eq!(
        linux["resources"]["devices"][0],
        json!({"allow": false, "access": "rwm"})
    );
    assert_eq!(
        strings(&linux["maskedPaths"]),
        DEFAULT_MASKED_PATHS.to_vec()
    );
    assert_eq!(
        strings(&linux["readonlyPaths"]),
        DEFAULT_READONLY_PATHS.to_vec()
    );
    assert_eq!(mount_at(&spec, "/dev").expect("/dev")["type"], "tmpfs");
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let options = strings(&mount_at(&spec, dest).expect(dest)["options"]);
        assert!(options.contains(&"ro".to_string()), "{dest}");
    }
    assert_eq!(linux["cgroupsPath"], "/kubepods/pod1/c1");
    assert!(linux.get("sysctl").is_none());
    assert!(linux.get("seccomp").is_none());
}

#[test]
fn explicit_masked_and_readonly_paths_replace_the_defaults() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.security.masked_paths = Some(vec!["/proc/a".into()]);
    inputs.config.security.readonly_paths = Some(vec![]);
    let spec = json_of(&inputs);
    assert_eq!(strings(&spec["linux"]["maskedPaths"]), vec!["/proc/a"]);
    assert!(strings(&spec["linux"]["readonlyPaths"]).is_empty());
}

// ---------------------------------------------------------------- seccomp

#[test]
fn seccomp_profiles() {
    let fx = Fixture::new();
    let mut s = ContainerSecurity::default();
    for none in ["", "unconfined"] {
        s.seccomp = none.into();
        assert_eq!(seccomp(&s).expect(none), None);
    }

    s.seccomp = "runtime/default".into();
    let profile = seccomp(&s).expect("default").expect("a profile");
    assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
    let rules = profile.syscalls().as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(rules[0].errno_ret(), Some(libc::EPERM as u32));
    for name in ["kexec_load", "bpf", "keyctl", "umount2", "reboot"] {
        assert!(rules[0].names().iter().any(|n| n == name), "{name}");
    }
    assert!(!rules[0].names().iter().any(|n| n == "mount"));
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            profile.architectures().as_ref().expect("archs"),
            &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
    }

    let path = fx.dir.path().join("profile.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .expect("profile");
    s.seccomp = format!("localhost/{}", path.display());
    let profile = seccomp(&s).expect("localhost").expect("a profile");
    assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);

    std::fs::write(&path, "{not json").expect("bad");
    let m = invalid_message(seccomp(&s));
    assert!(m.contains(&path.display().to_string()), "{m}");

    let missing = fx.dir.path().join("missing.json");
    s.seccomp = format!("localhost/{}", missing.display());
    let m = invalid_message(seccomp(&s));
    assert!(m.contains("missing.json"), "{m}");

    s.seccomp = "localhost/relative.json".into();
    assert!(invalid_message(seccomp(&s)).contains("relative.json"));
    s.seccomp = "something/else".into();
    assert!(invalid_message(seccomp(&s)).contains("seccomp"));
}

#[test]
fn the_default_profile_is_in_the_spec() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.security.seccomp = "runtime/default".into();
    let spec = json_of(&inputs);
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
}

// ----------------------------------------------------------------- mounts

#[test]
fn pod_files_and_shm_are_bound() {
    let fx = Fixture::new();
    let inputs = fx.inputs();
    let spec = json_of(&inputs);
    for (dest, source) in [
        ("/etc/hostname", &inputs.hostname_file),
        ("/etc/hosts", &inputs.hosts_file),
        ("/etc/resolv.conf", &inputs.resolv_conf),
        ("/dev/shm", inputs.shm.as_ref().expect("shm")),
    ] {
        let m = mount_at(&spec, dest).expect(dest);
        assert_eq!(m["type"], "bind", "{dest}");
        assert_eq!(m["source"], json!(source), "{dest}");
        assert_eq!(strings(&m["options"]), vec!["rbind", "rprivate", "rw"]);
    }
    let shm_count = spec["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["destination"] == "/dev/shm")
        .count();
    assert_eq!(shm_count, 1);
    for dest in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(mount_at(&spec, dest).is_some(), "{dest}");
    }
}

#[test]
fn host_ipc_binds_the_hosts_shm() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.shm = None;
    inputs.pod_security.namespaces.ipc = NamespaceMode::Node;
    let spec = json_of(&inputs);
    let m = mount_at(&spec, "/dev/shm").expect("shm");
    assert_eq!(m["type"], "bind");
    assert_eq!(m["source"], "/dev/shm");
}

#[test]
fn cri_mounts_propagation_readonly_and_order() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    let mount = |c: &str, h: &str, readonly: bool, propagation| MountConfig {
        container_path: c.into(),
        host_path: h.into(),
        readonly,
        recursive_read_only: false,
        propagation,
        ..Default::default()
    };
    inputs.config.mounts = vec![
        mount("/data/cache/deep", "/h/deep", false, Propagation::Private),
        mount("/data", "/h/data", true, Propagation::HostToContainer),
        mount("/shared", "/h/shared", false, Propagation::Bidirectional),
        MountConfig {
            recursive_read_only: true,
            ..mount("/etc/hosts", "/h/hosts", true, Propagation::Private)
        },
    ];
    let spec = json_of(&inputs);
    let options = |d: &str| strings(&mount_at(&spec, d).expect(d)["options"]);
    assert_eq!(options("/data/cache/deep"), vec!["rbind", "rprivate", "rw"]);
    assert_eq!(options("/data"), vec!["rbind", "rslave", "ro"]);
    assert_eq!(options("/shared"), vec!["rbind", "rshared", "rw"]);
    assert_eq!(options("/etc/hosts"), vec!["rbind", "rprivate", "rro"]);
    // The CRI mount replaced the pod's hosts file.
    assert_eq!(
        mount_at(&spec, "/etc/hosts").expect("hosts")["source"],
        "/h/hosts"
    );
    assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");

    let order: Vec<String> = spec["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["destination"].as_str().expect("dest").to_string())
        .collect();
    let at = |d: &str| order.iter().position(|o| o == d).expect(d);
    assert!(at("/data") < at("/data/cache/deep"));
    assert!(at("/proc") < at("/data"));

    inputs.config.mounts = vec![mount("/x", "/h/x", false, Propagation::HostToContainer)];
    assert_eq!(json_of(&inputs)["linux"]["rootfsPropagation"], "rslave");
}

#[test]
fn cri_mount_paths_must_be_absolute() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.mounts = vec![MountConfig {
        container_path: "data".into(),
        host_path: "/h".into(),
        ..Default::default()
    }];
    let m = invalid_message(build(&inputs));
    assert!(m.contains("container_path") && m.contains("data"), "{m}");
    inputs.config.mounts = vec![MountConfig {
        container_path: "/data".into(),
        host_path: "h".into(),
        ..Default::default()
    }];
    let m = invalid_message(build(&inputs));
    assert!(m.contains("host_path"), "{m}");
    inputs.config.mounts = vec![MountConfig {
        container_path: "/data".into(),
        host_path: "/h".into(),
        recursive_read_only: true,
        ..Default::default()
    }];
    assert!(invalid_message(build(&inputs)).contains("recursive_read_only"));
}

#[test]
fn recursive_read_only_needs_a_handler_that_makes_it() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.mounts = vec![MountConfig {
        container_path: "/data".into(),
        host_path: "/h".into(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    }];
    assert!(build(&inputs).is_ok());
    inputs.runtime_handler = "kata".into();
    match build(&inputs) {
        Err(Error::FailedPrecondition(m)) => {
            assert!(
                m.contains("recursive_read_only") && m.contains("/data"),
                "{m}"
            )
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

#[test]
fn an_image_volume_sub_path_resolves_inside_the_image() {
    let fx = Fixture::new();
    let root = fx.dir.path().join("volume");
    std::fs::create_dir_all(root.join("model")).expect("mkdir");
    std::os::unix::fs::symlink("/model", root.join("latest")).expect("link");
    std::os::unix::fs::symlink("../../../..", root.join("up")).expect("link");
    let source = |sub: &str| image_volume_source(&root, sub).expect("resolve");
    assert_eq!(source(""), Some(root.clone()));
    assert_eq!(source("model"), Some(root.join("model")));
    // An absolute link is the image's, not the host's.
    assert_eq!(source("latest"), Some(root.join("model")));
    // A link climbing out stops at the image's top.
    assert_eq!(source("up/model"), Some(root.join("model")));
    assert_eq!(source("model/missing"), None);
}

#[test]
fn image_volumes_need_no_host_path_and_are_left_to_berth() {
    let fx = Fixture::new();
    let config = ContainerConfig {
        mounts: vec![MountConfig {
            container_path: "/data".into(),
            image: "data:1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let entries = || std::fs::read_dir(fx.dir.path()).expect("dir").count();
    let before = entries();
    prepare_host_paths(&config).expect("nothing to prepare");
    assert_eq!(entries(), before);
}

#[test]
fn prepare_host_paths_creates_missing_directories() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("volumes/a/b");
    let config = ContainerConfig {
        mounts: vec![
            MountConfig {
                container_path: "/a".into(),
                host_path: missing.display().to_string(),
                ..Default::default()
            },
            MountConfig {
                container_path: "/etc/hosts".into(),
                host_path: fx.dir.path().join("pod/hosts").display().to_string(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    prepare_host_paths(&config).expect("prepare");
    assert!(missing.is_dir());
    assert!(fx.dir.path().join("pod/hosts").is_file());
    let relative = ContainerConfig {
        mounts: vec![MountConfig {
            container_path: "/a".into(),
            host_path: "rel".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(invalid_message(prepare_host_paths(&relative)).contains("host_path"));
}

// ---------------------------------------------------------------- devices

#[test]
fn devices_are_stat_ed_and_allowed() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.devices = vec![DeviceConfig {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let spec = json_of(&inputs);
    let dev = &spec["linux"]["devices"][0];
    assert_eq!(dev["path"], "/dev/mynull");
    assert_eq!(dev["type"], "c");
    assert_eq!(dev["major"], 1);
    assert_eq!(dev["minor"], 3);
    assert_eq!(
        spec["linux"]["resources"]["devices"][1],
        json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
    );

    let file = fx.dir.path().join("pod/hosts");
    inputs.config.devices[0].host_path = file.display().to_string();
    let m = invalid_message(build(&inputs));
    assert!(m.contains("not a device"), "{m}");
    inputs.config.devices[0].host_path = "/dev/does-not-exist".into();
    assert!(invalid_message(build(&inputs)).contains("/dev/does-not-exist"));
    inputs.config.devices[0].host_path = "/dev/null".into();
    inputs.config.devices[0].permissions = "rwx".into();
    assert!(invalid_message(build(&inputs)).contains("permissions"));
}

// ------------------------------------------------------------- namespaces

fn namespaces_of(spec: &Value) -> Vec<(String, Option<String>)> {
    spec["linux"]["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| {
            (
                n["type"].as_str().expect("type").to_string(),
                n.get("path").map(|p| p.as_str().expect("path").to_string()),
            )
        })
        .collect()
}

fn ns(t: &str, path: Option<&str>) -> (String, Option<String>) {
    (t.to_string(), path.map(str::to_string))
}

#[test]
fn namespaces_of_a_normal_pod() {
    let fx = Fixture::new();
    let spec = json_of(&fx.inputs());
    assert_eq!(
        namespaces_of(&spec),
        vec![
            ns("mount", None),
            ns("network", Some("/proc/4242/ns/net")),
            ns("uts", Some("/proc/4242/ns/uts")),
            ns("ipc", Some("/proc/4242/ns/ipc")),
            ns("pid", Some("/proc/4242/ns/pid")),
        ]
    );
}

#[test]
fn namespaces_of_a_host_network_and_host_ipc_pod() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.pod_security.namespaces.network = NamespaceMode::Node;
    let kinds: Vec<String> = namespaces_of(&json_of(&inputs))
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(kinds, vec!["mount", "ipc", "pid"]);
    inputs.pod_security.namespaces.ipc = NamespaceMode::Node;
    inputs.shm = None;
    let kinds: Vec<String> = namespaces_of(&json_of(&inputs))
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(kinds, vec!["mount", "pid"]);
}

#[test]
fn pid_namespace_modes() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.security.pid_namespace = NamespaceMode::Container;
    let list = namespaces_of(&json_of(&inputs));
    assert!(list.contains(&ns("pid", None)));
    inputs.config.security.pid_namespace = NamespaceMode::Node;
    let list = namespaces_of(&json_of(&inputs));
    assert!(!list.iter().any(|(t, _)| t == "pid"));
    inputs.config.security.pid_namespace = NamespaceMode::Target;
    inputs.config.security.target_id = "other".into();
    assert!(invalid_message(build(&inputs)).contains("pid_namespace"));
}

#[test]
fn a_pod_without_a_pause_process_cannot_be_joined() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.pod_pid = 0;
    assert!(matches!(build(&inputs), Err(Error::FailedPrecondition(_))));
}

// -------------------------------------------------------------- resources

#[test]
fn resources_in_the_spec() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.resources = Resources {
        cpu_period: 50_000,
        cpu_quota: 25_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        memory_swap_limit_in_bytes: 512 << 20,
        oom_score_adj: 900,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: BTreeMap::from([("2MB".to_string(), 4 << 20)]),
        unified: BTreeMap::from([("memory.high".to_string(), "1000000".to_string())]),
    };
    inputs.sysctls = BTreeMap::from([("net.core.somaxconn".to_string(), "1024".to_string())]);
    let spec = json_of(&inputs);
    let r = &spec["linux"]["resources"];
    assert_eq!(
        r["cpu"],
        json!({"shares": 512, "quota": 25000, "period": 50000, "cpus": "0-1", "mems": "0"})
    );
    assert_eq!(r["memory"], json!({"limit": 256 << 20, "swap": 512 << 20}));
    assert_eq!(
        r["hugepageLimits"],
        json!([{"pageSize": "2MB", "limit": 4 << 20}])
    );
    // Without the hugetlb controller the limits are dropped (runc would
    // fail on them), and only they.
    let mut no_hugetlb = inputs.clone();
    no_hugetlb.host = std::sync::Arc::new(HostFacts {
        hugetlb: false,
        ..HostFacts::default()
    });
    let without = json_of(&no_hugetlb);
    assert!(without["linux"]["resources"]
        .get("hugepageLimits")
        .is_none());
    assert_eq!(without["linux"]["resources"]["memory"], r["memory"]);
    let update = update_resources(&no_hugetlb.config.resources, false).expect("update");
    assert!(update.hugepage_limits().is_none());
    assert_eq!(r["unified"], json!({"memory.high": "1000000"}));
    assert!(r.get("pids").is_none());
    assert_eq!(
        spec["process"]["oomScoreAdj"],
        json!(clamp_oom_score_adj(900))
    );
    assert_eq!(
        spec["linux"]["sysctl"],
        json!({"net.core.somaxconn": "1024"})
    );
}

#[test]
fn a_quota_alone_gets_the_default_period_and_nothing_set_is_nothing() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    let spec = json_of(&inputs);
    assert!(spec["linux"]["resources"].get("cpu").is_none());
    assert!(spec["linux"]["resources"].get("memory").is_none());
    inputs.config.resources.cpu_quota = 20_000;
    let spec = json_of(&inputs);
    assert_eq!(
        spec["linux"]["resources"]["cpu"],
        json!({"quota": 20000, "period": 100000})
    );
}

#[test]
fn negative_or_malformed_resources_are_invalid() {
    let fx = Fixture::new();
    for (field, set) in [
        (
            "cpu_shares",
            (|r: &mut Resources| r.cpu_shares = -2) as fn(&mut Resources),
        ),
        ("cpu_quota", |r| r.cpu_quota = -1),
        ("cpu_period", |r| r.cpu_period = -1),
        ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -1),
        ("memory_swap_limit_in_bytes", |r| {
            r.memory_swap_limit_in_bytes = -2
        }),
        ("hugepage_limits", |r| {
            r.hugepage_limits.insert("2M".into(), 1);
        }),
    ] {
        let mut inputs = fx.inputs();
        set(&mut inputs.config.resources);
        let m = invalid_message(build(&inputs));
        assert!(m.contains(field), "{field}: {m}");
        // Checked whether or not the node applies hugepage limits.
        let host = HostFacts {
            hugetlb: false,
            ..HostFacts::default()
        };
        inputs.host = std::sync::Arc::new(host);
        let m = invalid_message(build(&inputs));
        assert!(m.contains(field), "{field} without hugetlb: {m}");
    }
    // Unlimited swap is how kubelet spells it on cgroup v1.
    let mut inputs = fx.inputs();
    inputs.config.resources.memory_swap_limit_in_bytes = -1;
    assert_eq!(
        json_of(&inputs)["linux"]["resources"]["memory"],
        json!({"swap": -1})
    );
}

#[test]
fn oom_score_adj_never_fails() {
    for wanted in [i64::MIN, -1000, 0, 1000, i64::MAX] {
        let got = oom_score_adj(wanted);
        assert!((-1000..=1000).contains(&got), "{wanted}: {got}");
    }
}

// ------------------------------------------------------------ annotations

#[test]
fn annotations_are_kubelets_plus_the_cri_ones() {
    let fx = Fixture::new();
    let mut inputs = fx.inputs();
    inputs.config.annotations = BTreeMap::from([
        ("a".to_string(), "b".to_string()),
        (ANNOTATION_CONTAINER_TYPE.to_string(), "sandbox".to_string()),
    ]);
    inputs.config.labels = BTreeMap::from([("label".to_string(), "x".to_string())]);
    let spec = json_of(&inputs);
    assert_eq!(
        spec["annotations"],
        json!({
            "a": "b",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "docker.io/library/app:1",
        })
    );
}

#[test]
fn the_spec_round_trips_through_json() {
    let fx = Fixture::new();
    let spec = build(&fx.inputs()).expect("spec");
    let text = serde_json::to_string(&spec).expect("to json");
    let back: Spec = serde_json::from_str(&text).expect("from json");
    assert_eq!(back, spec);
}
