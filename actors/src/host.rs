//! What this node offers that containers' specs depend on, probed once at
//! start: the capabilities berthd itself holds (all a container can be
//! given), whether hugepage limits can be applied (the hugetlb cgroup
//! controller), and which runtime handlers make recursive read-only mounts.
//! `Status` announces features from the same facts, so what it says and
//! what CreateContainer does never disagree.

use oci_spec::runtime::{Capabilities, Capability};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// Every capability by its number in `linux/capability.h`.
const CAPABILITIES_BY_NUMBER: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The node's facts as the container actor uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The capabilities berthd holds (its effective set): what a
    /// privileged container and "ALL" get. A runtime cannot give a
    /// container more than its own bounding set, so asking for more only
    /// makes runc fail ("unable to apply caps").
    pub capabilities: Capabilities,
    /// Hugepage limits are applied: the node has the hugetlb controller
    /// and the operator did not turn it off. Otherwise they are dropped
    /// (kubelet sends them for every page size the node has, controller
    /// or not).
    pub hugetlb: bool,
    /// Runtime handlers whose OCI runtime, on this kernel, makes
    /// recursive read-only (`rro`) mounts.
    pub recursive_read_only: BTreeSet<String>,
    /// Runtime handlers that cannot run anything here, with the reason
    /// (their OCI runtime is missing or fails its probe): filled once the
    /// runtimes were tried, in the background after start (a try makes a
    /// container, which start-up does not wait for); until then every
    /// handler counts as usable.
    pub unusable: Arc<OnceLock<BTreeMap<String, String>>>,
    /// Whether pods can have user namespaces of their own here (the
    /// kernel mounts overlays on idmapped layers where berth keeps its
    /// snapshots), or why not: filled by the background probe too.
    pub user_namespaces: UsernsProbe,
}

/// The answer of the user namespace probe, once it ran.
pub type UsernsProbe = Arc<OnceLock<std::result::Result<(), String>>>;

impl Default for HostFacts {
    /// Everything allowed: what unit tests build specs against.
    fn default() -> Self {
        HostFacts {
            capabilities: CAPABILITIES_BY_NUMBER.into_iter().collect(),
            hugetlb: true,
            recursive_read_only: BTreeSet::from([String::new(), "runc".to_string()]),
            unusable: Arc::default(),
            user_namespaces: Arc::default(),
        }
    }
}

impl HostFacts {
    /// Probes this node. `handlers` are the runtime handlers by name with
    /// their OCI runtime binary; `disable_hugetlb` is the operator's
    /// `cgroup.disable_hugetlb_controller`.
    pub fn probe<'a>(
        handlers: impl IntoIterator<Item = (&'a str, &'a Path)>,
        disable_hugetlb: bool,
    ) -> HostFacts {
        let capabilities = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| effective_mask(&s))
            .map(capabilities_of)
            .unwrap_or_default();
        let hugetlb = !disable_hugetlb && has_controller("hugetlb");
        let kernel_rro = kernel_has_mount_setattr();
        // Several handlers may name one runtime ("" and "runc" do): each
        // binary is asked once.
        let mut asked: BTreeMap<&Path, bool> = BTreeMap::new();
        let recursive_read_only = handlers
            .into_iter()
            .filter(|(_, binary)| {
                kernel_rro
                    && *asked
                        .entry(binary)
                        .or_insert_with(|| runtime_mount_options(binary).contains("rro"))
            })
            .map(|(name, _)| name.to_string())
            .collect();
        let facts = HostFacts {
            capabilities,
            hugetlb,
            recursive_read_only,
            unusable: Arc::default(),
            user_namespaces: Arc::default(),
        };
        tracing::info!(
            capabilities = facts.capabilities.len(),
            hugetlb = facts.hugetlb,
            recursive_read_only = ?facts.recursive_read_only,
            "probed the node"
        );
        facts
    }

    /// Tries each handler's runtime with `works` (see [`try_runtime`]),
    /// each distinct binary once and all at the same time, and records
    /// the handlers that cannot run pods. Blocking.
    pub fn try_handlers<'a>(
        &self,
        handlers: impl IntoIterator<Item = (&'a str, &'a Path)>,
        works: &(dyn Fn(&Path) -> std::result::Result<(), String> + Sync),
    ) {
        let handlers: Vec<(&str, &Path)> = handlers.into_iter().collect();
        let binaries: BTreeSet<&Path> = handlers.iter().map(|(_, b)| *b).collect();
        let tried: BTreeMap<&Path, std::result::Result<(), String>> = std::thread::scope(|s| {
            let runs: Vec<_> = binaries
                .into_iter()
                .map(|b| (b, s.spawn(move || works(b))))
                .collect();
            runs.into_iter()
                .map(|(b, run)| {
                    let answer = run
                        .join()
                        .unwrap_or_else(|_| Err("the probe panicked".into()))
                        .map_err(|why| format!("{}: {why}", b.display()));
                    (b, answer)
                })
                .collect()
        });
        let unusable: BTreeMap<String, String> = handlers
            .iter()
            .filter_map(|(name, b)| {
                let why = tried.get(b)?.as_ref().err()?;
                Some((name.to_string(), why.clone()))
            })
            .collect();
        if unusable.is_empty() {
            tracing::info!("every runtime handler can run pods");
        } else {
            tracing::warn!(?unusable, "runtime handlers that cannot run pods here");
        }
        let _ = self.unusable.set(unusable);
    }

    /// Why handler `name` cannot run pods here, if it cannot (as far as
    /// the runtimes were tried yet).
    pub fn unusable(&self, name: &str) -> Option<&str> {
        self.unusable.get()?.get(name).map(String::as_str)
    }
}

/// The effective capability mask in `/proc/<pid>/status`.
fn effective_mask(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities set in `mask`, by their kernel numbers; numbers this
/// table does not know (newer kernels) are left out.
fn capabilities_of(mask: u64) -> Capabilities {
    CAPABILITIES_BY_NUMBER
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// Where the node's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether this node has cgroup v2 at [`CGROUP_ROOT`], asked once: it does
/// not change while berthd runs. A hybrid node (v1 controllers, cgroup2
/// only at `/sys/fs/cgroup/unified` with no controllers in it) counts as
/// v1.
pub fn cgroup_unified() -> bool {
    static V2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V2.get_or_init(|| is_cgroup2(Path::new(CGROUP_ROOT)))
}

fn is_cgroup2(root: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    match statfs(root) {
        Ok(fs) => fs.filesystem_type() == CGROUP2_SUPER_MAGIC,
        // Only the root of a cgroup2 mount has this file; a hybrid node's
        // tmpfs at the root does not.
        Err(_) => root.join("cgroup.controllers").exists(),
    }
}

/// Whether the cgroup controller `name` can be used: on v2, listed in the
/// root's `cgroup.controllers`; on v1, attached to a mounted hierarchy.
fn has_controller(name: &str) -> bool {
    if cgroup_unified() {
        std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"))
            .is_ok_and(|s| v2_has(&s, name))
    } else {
        std::fs::read_to_string("/proc/cgroups").is_ok_and(|s| v1_has(&s, name))
    }
}

fn v2_has(controllers: &str, name: &str) -> bool {
    controllers.split_whitespace().any(|c| c == name)
}

/// `/proc/cgroups`: `subsys_name hierarchy num_cgroups enabled`; a
/// controller in no v1 hierarchy has hierarchy 0.
fn v1_has(proc_cgroups: &str, name: &str) -> bool {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.len() >= 4 && f[0] == name && f[1] != "0" && f[3] == "1")
}

/// Recursive read-only mounts need `mount_setattr(2)` (Linux 5.12). A call
/// with a bad descriptor fails with EBADF or EINVAL where it exists and
/// ENOSYS where it does not.
fn kernel_has_mount_setattr() -> bool {
    // SAFETY: no pointer is dereferenced: the path is empty and the
    // attribute pointer is null with size 0, so the kernel rejects the
    // call before reading anything.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null_mut::<libc::c_void>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// How long `<runtime> features` may take before berthd starts without
/// its answer.
const FEATURES_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The mount options an OCI runtime says it knows (`<runtime> features`,
/// runc 1.1 and crun); none when it cannot say, or does not in time.
fn runtime_mount_options(binary: &Path) -> BTreeSet<String> {
    match ask(binary, "features", FEATURES_LIMIT) {
        Ok(out) => mount_options(&out),
        Err(why) => {
            tracing::debug!(binary = %binary.display(), %why, "runtime features unknown");
            BTreeSet::new()
        }
    }
}

/// Whether a containerd runtime v2 shim binary runs here: it answers
/// `-v` with its version.
pub fn try_v2_shim(shim: &Path, limit: std::time::Duration) -> std::result::Result<(), String> {
    ask(shim, "-v", limit).map(|_| ())
}

/// Whether the OCI runtime `binary` can make a container on this node:
/// it answers `--version`, then creates (and deletes) a container of
/// `pause` in a bundle under `work`, with a cgroup of its own under
/// `cgroup_parent` (berth's, so that nothing of a probe cut short lands
/// elsewhere), as a pod would have. The error is the runtime's own last
/// word.
pub fn try_runtime(
    binary: &Path,
    work: &Path,
    pause: &Path,
    limit: std::time::Duration,
    cgroup_parent: &str,
) -> std::result::Result<(), String> {
    ask(binary, "--version", limit)?;
    static TRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = TRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("berth-probe-{}-{n}", std::process::id());
    let dir = work.join(&id);
    let rootfs = dir.join("rootfs");
    let root = dir.join("state");
    let cgroups_path = format!("{}/{id}", cgroup_parent.trim_end_matches('/'));
    let made = (|| -> std::result::Result<(), String> {
        std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
        std::fs::copy(pause, rootfs.join("pause"))
            .map_err(|e| format!("copy the pause program: {e}"))?;
        let config = crate::sandbox::messages::PodConfig::default();
        let spec = crate::sandbox::spec::PauseSpec {
            config: &config,
            rootfs: &rootfs,
            hostname: "probe",
            netns: None,
            cgroups_path: cgroups_path.clone(),
        }
        .build()
        .map_err(|e| e.to_string())?;
        spec.save(dir.join("config.json"))
            .map_err(|e| e.to_string())?;
        let (status, said) = run_limited(
            Command::new(binary)
                .arg("--root")
                .arg(&root)
                .args(["create", "--bundle"])
                .arg(&dir)
                .arg(&id),
            &dir.join("stderr"),
            limit,
        )?;
        if status.success() {
            Ok(())
        } else {
            Err(said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| format!("create failed ({status})")))
        }
    })();
    let _ = run_limited(
        Command::new(binary)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id]),
        &dir.join("stderr"),
        limit,
    );
    crate::shim::health::remove_cgroup(&cgroups_path);
    let _ = std::fs::remove_dir_all(&dir);
    made
}

/// Ends what an earlier probe under `work` left (a berthd killed while
/// it probed): each container deleted by whichever of `binaries` made
/// it, its cgroup and its directory removed.
pub fn clear_probes(work: &Path, binaries: &[&Path], cgroup_parent: &str) {
    // The cgroups of probes whose berthd is gone, even where their work
    // directory went with them.
    let parent = cgroup_parent.trim_matches('/');
    let hierarchies = std::fs::read_dir(CGROUP_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path())
        .chain([std::path::PathBuf::from(CGROUP_ROOT)]);
    for h in hierarchies {
        for e in std::fs::read_dir(h.join(parent))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let owner = name
                .strip_prefix("berth-probe-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let gone = owner.is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
            if gone {
                crate::shim::health::remove_cgroup(&format!("/{parent}/{name}"));
            }
        }
    }
    for e in std::fs::read_dir(work).into_iter().flatten().flatten() {
        let dir = e.path();
        let id = e.file_name().to_string_lossy().to_string();
        for binary in binaries {
            let _ = run_limited(
                Command::new(binary)
                    .arg("--root")
                    .arg(dir.join("state"))
                    .args(["delete", "--force", &id]),
                &dir.join("stderr"),
                FEATURES_LIMIT,
            );
        }
        crate::shim::health::remove_cgroup(&format!("/{parent}/{id}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Ends a child that runs in a process group of its own, and everything
/// it started there.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: a signal to the group this child leads.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` (leading a process group of its own) for at most
/// `limit`; past it, the group is ended.
fn wait_limited(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::result::Result<std::process::ExitStatus, String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                kill_group(child);
                return Err(format!("no answer in {}s", limit.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs `cmd` to its end or for at most `limit`; answers its exit and
/// what it wrote to stderr. The stderr is a file, not a pipe: a created
/// container's process holds it open until it is deleted.
fn run_limited(
    cmd: &mut Command,
    stderr: &Path,
    limit: std::time::Duration,
) -> std::result::Result<(std::process::ExitStatus, String), String> {
    let mut err = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(stderr)
        .map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        // Its own process group: a timeout ends whatever it started.
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    let status = wait_limited(&mut child, limit)?;
    use std::io::{Read, Seek};
    let mut said = String::new();
    let _ = err.rewind();
    let _ = (&mut err).take(64 * 1024).read_to_string(&mut said);
    Ok((status, said))
}

/// The stdout of `<binary> <arg>`, if it succeeds within `limit` (its
/// answer is a few KiB, which the pipe holds until it is read).
fn ask(binary: &Path, arg: &str, limit: std::time::Duration) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(binary)
        .arg(arg)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_string(),
            _ => e.to_string(),
        })?;
    let status = wait_limited(&mut child, limit)?;
    if !status.success() {
        return Err(format!("`{arg}` failed ({status})"));
    }
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(1 << 20)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn mount_options(features_json: &[u8]) -> BTreeSet<String> {
    serde_json::from_slice::<serde_json::Value>(features_json)
        .ok()
        .and_then(|v| {
            v.get("mountOptions")?.as_array().map(|list| {
                list.iter()
                    .filter_map(|o| o.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_is_tried_once_and_its_handlers_share_the_answer() {
        let tried = std::sync::Mutex::new(Vec::new());
        let works = |b: &Path| {
            tried.lock().expect("lock").push(b.display().to_string());
            if b.ends_with("crun") {
                Err("cgroups in hybrid mode not supported".to_string())
            } else {
                Ok(())
            }
        };
        let (runc, crun) = (Path::new("/usr/bin/runc"), Path::new("/usr/bin/crun"));
        let facts = HostFacts::default();
        assert_eq!(facts.unusable("crun"), None, "none before the try");
        facts.try_handlers(
            [
                ("", runc),
                ("runc", runc),
                ("crun", crun),
                ("crun-too", crun),
            ],
            &works,
        );
        let mut tried = tried.into_inner().expect("lock");
        tried.sort();
        assert_eq!(tried, ["/usr/bin/crun", "/usr/bin/runc"]);
        let why = "/usr/bin/crun: cgroups in hybrid mode not supported".to_string();
        assert_eq!(
            facts.unusable.get(),
            Some(&BTreeMap::from([
                ("crun".to_string(), why.clone()),
                ("crun-too".to_string(), why)
            ]))
        );
        assert_eq!(facts.unusable("runc"), None);
    }

    #[test]
    fn cgroups_of_probes_whose_berthd_is_gone_are_removed() {
        let parent = format!("/berth-unit-probe-{}", std::process::id());
        let hierarchy = Path::new(CGROUP_ROOT).join("memory");
        if !hierarchy.is_dir() {
            // No v1 memory hierarchy to try it on.
            return;
        }
        let rel = parent.trim_start_matches('/');
        let gone = hierarchy.join(rel).join("berth-probe-4194304-0");
        let ours = hierarchy
            .join(rel)
            .join(format!("berth-probe-{}-0", std::process::id()));
        let other = hierarchy.join(rel).join("not-a-probe");
        for d in [&gone, &ours, &other] {
            std::fs::create_dir_all(d).expect("cgroup (the tests run as root)");
        }
        clear_probes(Path::new("/nonexistent/probe-work"), &[], &parent);
        assert!(!gone.exists(), "the dead berthd's probe cgroup is removed");
        assert!(ours.exists(), "a running berthd's probe is left alone");
        assert!(other.exists());
        for d in [&ours, &other] {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir(hierarchy.join(rel));
    }

    #[test]
    fn a_missing_runtime_is_said_to_be_not_found() {
        let dir = std::env::temp_dir();
        let err = try_runtime(
            Path::new("/nonexistent/runtime"),
            &dir,
            Path::new("/bin/true"),
            std::time::Duration::from_secs(5),
            "/berth",
        )
        .expect_err("missing");
        assert_eq!(err, "not found");
    }

    #[test]
    fn capabilities_come_from_the_effective_mask() {
        let status = "Name:\tberthd\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let caps = capabilities_of(effective_mask(status).expect("mask"));
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource));
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(caps.contains(&Capability::CheckpointRestore));
        assert_eq!(
            capabilities_of(1 << 13 | 1),
            Capabilities::from([Capability::Chown, Capability::NetRaw])
        );
        assert_eq!(effective_mask("CapEff:\tzz\n"), None);
    }

    #[test]
    fn controllers_are_read_from_either_layout() {
        let v1 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
                  memory\t4\t37\t1\nhugetlb\t0\t1\t1\npids\t8\t1\t1\nblkio\t7\t1\t0\n";
        assert!(v1_has(v1, "memory"));
        assert!(!v1_has(v1, "hugetlb"), "in no hierarchy");
        assert!(!v1_has(v1, "blkio"), "disabled");
        assert!(!v1_has(v1, "cpu"), "unknown");
        assert!(v2_has("cpuset cpu io memory hugetlb pids\n", "hugetlb"));
        assert!(!v2_has("cpuset cpu io memory pids\n", "hugetlb"));
    }

    #[test]
    fn a_plain_directory_is_not_cgroup2() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_cgroup2(dir.path()));
    }

    #[test]
    fn cgroup2_detection_agrees_with_the_mount_table() {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
            return;
        };
        let v2 = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == CGROUP_ROOT && f[2] == "cgroup2"
        });
        assert_eq!(cgroup_unified(), v2);
    }

    #[test]
    fn mount_options_come_from_runtime_features() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rbind"]}"#;
        assert!(mount_options(json).contains("rro"));
        assert!(mount_options(b"{}").is_empty());
        assert!(mount_options(b"not json").is_empty());
    }
}
