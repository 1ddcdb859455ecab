//! The OCI runtime spec of a container in a pod, made the way containerd's
//! CRI plugin makes it: the process from the CRI config over the image's
//! run config, the user looked up in the container's own `/etc/passwd` and
//! `/etc/group`, containerd's default capabilities, masked paths and
//! device rules, the pod's network/IPC/UTS (and maybe PID) namespaces
//! joined through its pause process, the pod's shared files bind-mounted,
//! and the CRI mounts, devices and resources.
//!
//! [`build`] only reads (the user database, device nodes, a seccomp
//! profile, the pod's hostname); [`prepare_host_paths`] is the one step with
//! a side effect and is left to the actor.

use super::messages::{
    ContainerConfig, ContainerSecurity, DeviceConfig, ImageRun, MountConfig, Propagation,
    Resources, SpecInputs, SupplementalGroupsPolicy,
};
use crate::sandbox::messages::NamespaceMode;
use crate::sandbox::spec::clamp_oom_score_adj;
use crate::{Error, Result};
use oci_spec::runtime::{
    Arch, Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxCpuBuilder,
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemory, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder, Process, ProcessBuilder, Root,
    RootBuilder, Spec, UserBuilder,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// What a process gets when neither the image nor kubelet sets PATH (the
/// same default docker and containerd use).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CFS period the kernel itself defaults to; a quota alone is
/// meaningless without one.
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// Annotations runc-based tooling reads to tell containers from sandboxes.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// containerd's default capability set for an unprivileged container.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Kernel interfaces that leak host details or allow host-wide changes,
/// hidden from unprivileged containers (containerd's list).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel interfaces unprivileged containers may read but not change.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What berth's "runtime/default" seccomp profile refuses with EPERM:
/// loading kernel code, tracing and key-ring syscalls, swapping, rebooting,
/// setting the clock and raw port I/O. Everything else is allowed. The
/// 32-bit siblings (`umount`, `stime`, `clock_settime64`) are listed too,
/// since the x86 and arm ABIs are in the filter; runc skips names the
/// running kernel does not know.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_settime",
    "clock_settime64",
    "create_module",
    "delete_module",
    "finit_module",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "reboot",
    "request_key",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "umount",
    "umount2",
];

/// How many symbolic links a lookup inside the root filesystem may follow
/// (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// oci-spec's builders only fail on their own consistency checks, which
/// berth's inputs should never trip: that would be berth's bug.
fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("container spec: {e}"))
}

/// The OCI runtime spec of the container `inputs` describes.
pub fn build(inputs: &SpecInputs) -> Result<Spec> {
    let config = &inputs.config;
    let sec = &config.security;
    // containerd refuses this too: a privileged container would otherwise
    // escape whatever the pod's admission decided for its sandbox.
    if sec.privileged && !inputs.pod_security.privileged {
        return Err(invalid(
            "privileged: the pod is not privileged, so its containers cannot be",
        ));
    }
    if !inputs.rootfs.is_absolute() {
        return Err(invalid(format!(
            "rootfs {} is not an absolute path",
            inputs.rootfs.display()
        )));
    }

    let mut spec = Spec::default();
    // The UTS namespace is the pod's: its hostname is already set.
    spec.set_hostname(None);
    spec.set_root(Some(root(inputs)?));
    spec.set_process(Some(process(inputs)?));
    spec.set_mounts(Some(mounts(inputs)?));
    spec.set_annotations(Some(annotations(config)));

    let (devices, mut device_rules) = devices(&config.devices)?;
    let mut rules = if sec.privileged {
        vec![device_rule(true, None, None, None, "rwm")?]
    } else {
        // Deny first, so that only what runc adds by default and what is
        // listed below is reachable, whatever CAP_MKNOD allows.
        vec![device_rule(false, None, None, None, "rwm")?]
    };
    rules.append(&mut device_rules);

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces(inputs)?));
    linux.set_cgroups_path(if inputs.cgroups_path.is_empty() {
        None
    } else {
        Some(PathBuf::from(&inputs.cgroups_path))
    });
    linux.set_sysctl(if inputs.sysctls.is_empty() {
        None
    } else {
        Some(inputs.sysctls.clone().into_iter().collect())
    });
    linux.set_resources(Some(resources(
        &config.resources,
        rules,
        inputs.host.hugetlb,
    )?));
    linux.set_devices(if devices.is_empty() {
        None
    } else {
        Some(devices)
    });
    linux.set_seccomp(seccomp(sec)?);
    if sec.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        let defaults = |list: &[&str]| list.iter().map(|p| p.to_string()).collect();
        linux.set_masked_paths(Some(
            sec.masked_paths
                .clone()
                .unwrap_or_else(|| defaults(&DEFAULT_MASKED_PATHS)),
        ));
        linux.set_readonly_paths(Some(
            sec.readonly_paths
                .clone()
                .unwrap_or_else(|| defaults(&DEFAULT_READONLY_PATHS)),
        ));
    }
    linux.set_rootfs_propagation(rootfs_propagation(&config.mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn root(inputs: &SpecInputs) -> Result<Root> {
    RootBuilder::default()
        .path(&inputs.rootfs)
        .readonly(inputs.config.security.readonly_rootfs)
        .build()
        .map_err(spec_err)
}

fn process(inputs: &SpecInputs) -> Result<Process> {
    let config = &inputs.config;
    let sec = &config.security;
    let args = command_line(config, &inputs.image)?;
    let env = environment(inputs)?;
    let cwd = working_dir(config, &inputs.image)?;
    let (uid, gid, additional_gids) = resolve_user(&inputs.rootfs, &inputs.image.user, sec)?;
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(additional_gids)
        .build()
        .map_err(spec_err)?;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(user)
        .capabilities(capabilities(sec, &inputs.host.capabilities)?)
        .no_new_privileges(sec.no_new_privs)
        .oom_score_adj(oom_score_adj(config.resources.oom_score_adj))
        .build()
        .map_err(spec_err)?;
    // No rlimits: the container inherits berthd's, as under containerd,
    // instead of oci-spec's default of 1024 open files.
    process.set_rlimits(None);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    Ok(process)
}

/// Out-of-range values are brought into the kernel's range first; the
/// result never goes below what this process may set, so it never fails.
fn oom_score_adj(wanted: i64) -> i32 {
    let in_range = wanted.clamp(-1000, 1000);
    clamp_oom_score_adj(i32::try_from(in_range).unwrap_or(0))
}

/// Docker's rule, which kubelet relies on: the CRI command replaces the
/// image's ENTRYPOINT and drops its CMD; CRI args alone replace only CMD.
fn command_line(config: &ContainerConfig, image: &ImageRun) -> Result<Vec<String>> {
    let mut args = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(invalid(
            "no command: neither the container nor the image names one",
        ));
    }
    Ok(args)
}

/// An ordered environment in which a later setting of a name replaces the
/// earlier one where it stood.
#[derive(Default)]
struct Environment {
    /// (name, the whole `name=value` entry).
    entries: Vec<(String, String)>,
}

impl Environment {
    fn set(&mut self, name: &str, entry: String) {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = entry,
            None => self.entries.push((name.to_string(), entry)),
        }
    }

    fn into_list(self) -> Vec<String> {
        self.entries.into_iter().map(|(_, e)| e).collect()
    }
}

fn environment(inputs: &SpecInputs) -> Result<Vec<String>> {
    let config = &inputs.config;
    let hostname = std::fs::read_to_string(&inputs.hostname_file).map_err(|e| {
        Error::Internal(format!(
            "read the pod's hostname file {}: {e}",
            inputs.hostname_file.display()
        ))
    })?;
    let mut env = Environment::default();
    // Defaults first, so that the image and kubelet can override them.
    env.set("PATH", format!("PATH={DEFAULT_PATH}"));
    env.set("HOSTNAME", format!("HOSTNAME={}", hostname.trim()));
    if config.tty {
        env.set("TERM", "TERM=xterm".to_string());
    }
    for entry in &inputs.image.env {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        env.set(name, entry.clone());
    }
    for (name, value) in &config.envs {
        if name.is_empty() || name.contains('=') {
            return Err(invalid(format!(
                "envs: {name:?} is not a valid environment variable name"
            )));
        }
        env.set(name, format!("{name}={value}"));
    }
    Ok(env.into_list())
}

fn working_dir(config: &ContainerConfig, image: &ImageRun) -> Result<PathBuf> {
    let (field, dir) = if !config.working_dir.is_empty() {
        ("working_dir", &config.working_dir)
    } else if !image.working_dir.is_empty() {
        ("the image's WorkingDir", &image.working_dir)
    } else {
        return Ok(PathBuf::from("/"));
    };
    if !Path::new(dir).is_absolute() {
        return Err(invalid(format!("{field} {dir:?} is not an absolute path")));
    }
    Ok(PathBuf::from(dir))
}

// ---------------------------------------------------------------- users

/// One line of `/etc/passwd`.
#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            // Lines that do not parse (NIS `+` entries, damage) are skipped,
            // as libc's lookups skip them.
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.trim().parse().ok()?,
                gid: fields.get(3)?.trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: fields.first()?.to_string(),
                gid: fields.get(2)?.trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Where `inner` (absolute, as the container sees it) is on the host, with
/// every symbolic link on the way resolved as if `root` were `/`: a link to
/// `/etc/shadow` or to `../../..` stays inside the image. None when some
/// part of the path does not exist.
fn resolve_in_root(root: &Path, inner: &Path) -> std::io::Result<Option<PathBuf>> {
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, inner);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            // `..` at the top stays at the top, as it does at `/`.
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Ok(None);
        }
        let target = std::fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        push_components(&mut pending, &target);
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(Some(path))
}

/// Queues `path`'s components so that its first is walked next; the root
/// and `.` say nothing about where to go.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(s) => pending.push(s.to_os_string()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The text of a file inside the image (`/etc/passwd`), or None when it is
/// missing or not a regular file.
fn read_in_rootfs(rootfs: &Path, inner: &str) -> Result<Option<String>> {
    let fail = |e: std::io::Error| Error::Internal(format!("read {inner} in the image: {e}"));
    let Some(path) = resolve_in_root(rootfs, Path::new(inner)).map_err(fail)? else {
        return Ok(None);
    };
    // O_NOFOLLOW: the last component was just found not to be a link; if
    // it became one since, refuse it rather than follow it out.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    if !file.metadata().map_err(fail)?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(fail)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A CRI id (i64) as the u32 the kernel takes.
fn id(field: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| invalid(format!("{field} {value} is not a valid id")))
}

/// The effective uid, gid and supplementary gids of the container's
/// process: `run_as_user`, else `run_as_username`, else the image's USER
/// (`name`, `uid`, `uid:gid`, `name:gid`, `uid:group`, `name:group`),
/// looked up in the image's own `/etc/passwd` and `/etc/group`. The gid is
/// `run_as_group`, else USER's group, else the user's primary group (0 for
/// a uid with no passwd entry). The supplementary list starts with that
/// gid (runc's setgroups replaces the whole list), then, unless the policy
/// is Strict, the groups `/etc/group` lists the user in, then the CRI's
/// `supplemental_groups`.
pub fn resolve_user(
    rootfs: &Path,
    image_user: &str,
    sec: &ContainerSecurity,
) -> Result<(u32, u32, Vec<u32>)> {
    let passwd = parse_passwd(&read_in_rootfs(rootfs, "/etc/passwd")?.unwrap_or_default());
    let groups = parse_group(&read_in_rootfs(rootfs, "/etc/group")?.unwrap_or_default());
    let by_uid = |uid: u32| passwd.iter().find(|e| e.uid == uid);
    let by_name = |name: &str| passwd.iter().find(|e| e.name == name);

    let (uid, entry, user_group) = if let Some(v) = sec.run_as_user {
        let uid = id("run_as_user", v)?;
        (uid, by_uid(uid), None)
    } else if !sec.run_as_username.is_empty() {
        let entry = by_name(&sec.run_as_username).ok_or_else(|| {
            invalid(format!(
                "run_as_username {:?} is not in the image's /etc/passwd",
                sec.run_as_username
            ))
        })?;
        (entry.uid, Some(entry), None)
    } else {
        let (user, group) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (uid, entry) = if user.is_empty() {
            if group.is_some() {
                return Err(invalid(format!(
                    "the image's USER {image_user:?} names no user"
                )));
            }
            (0, by_uid(0))
        } else if let Ok(uid) = user.parse::<u32>() {
            (uid, by_uid(uid))
        } else {
            let entry = by_name(user).ok_or_else(|| {
                invalid(format!(
                    "the image's USER {image_user:?}: user {user:?} is not in the image's /etc/passwd"
                ))
            })?;
            (entry.uid, Some(entry))
        };
        let gid = match group {
            None => None,
            Some("") => {
                return Err(invalid(format!(
                    "the image's USER {image_user:?} names an empty group"
                )))
            }
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| {
                            invalid(format!(
                            "the image's USER {image_user:?}: group {g:?} is not in the image's /etc/group"
                        ))
                        })?
                        .gid
                }
            }),
        };
        (uid, entry, gid)
    };

    let gid = match sec.run_as_group {
        Some(v) => id("run_as_group", v)?,
        None => user_group.unwrap_or_else(|| entry.map_or(0, |e| e.gid)),
    };
    let mut gids = vec![gid];
    if sec.supplemental_groups_policy == SupplementalGroupsPolicy::Merge {
        if let Some(entry) = entry {
            gids.extend(
                groups
                    .iter()
                    .filter(|g| g.members.contains(&entry.name))
                    .map(|g| g.gid),
            );
        }
    }
    for g in &sec.supplemental_groups {
        gids.push(id("supplemental_groups", *g)?);
    }
    let mut seen = std::collections::HashSet::new();
    gids.retain(|g| seen.insert(*g));
    Ok((uid, gid, gids))
}

// ---------------------------------------------------------- capabilities

/// A capability as kubelet may spell it: any case, with or without
/// `CAP_`. None for "ALL".
fn parse_capability(field: &str, name: &str) -> Result<Option<Capability>> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(None);
    }
    Capability::from_str(bare)
        .map(Some)
        .map_err(|_| invalid(format!("{field}: unknown capability {name:?}")))
}

/// containerd's order: "ALL" added, then "ALL" dropped, then each single
/// add, then each single drop, so that add ALL + drop CHOWN is everything
/// but CHOWN and drop ALL + add NET_ADMIN is NET_ADMIN alone. "ALL" and
/// privileged mean every capability berthd holds (`held`), as containerd
/// and CRI-O grant: no runtime can give more than its own bounding set.
fn capability_set(sec: &ContainerSecurity, held: &Capabilities) -> Result<Capabilities> {
    let parse = |field: &str, list: &[String]| -> Result<(bool, Vec<Capability>)> {
        let mut all = false;
        let mut caps = Vec::new();
        for name in list {
            match parse_capability(field, name)? {
                Some(c) => caps.push(c),
                None => all = true,
            }
        }
        Ok((all, caps))
    };
    let (add_all, add) = parse("capabilities_add", &sec.capabilities_add)?;
    let (drop_all, drop) = parse("capabilities_drop", &sec.capabilities_drop)?;
    if sec.privileged {
        return Ok(held.clone());
    }
    if let Some(c) = add.iter().find(|c| !held.contains(c)) {
        return Err(Error::FailedPrecondition(format!(
            "capabilities_add: CAP_{c} is not held by berthd on this node, so no container can have it"
        )));
    }
    let mut set: Capabilities = DEFAULT_CAPABILITIES
        .into_iter()
        .filter(|c| held.contains(c))
        .collect();
    if add_all {
        set.extend(held.iter().copied());
    }
    if drop_all {
        set.clear();
    }
    set.extend(add);
    for c in drop {
        set.remove(&c);
    }
    Ok(set)
}

/// Inheritable and ambient stay empty: a non-root process in the container
/// gets no capability it did not ask for through file capabilities.
fn capabilities(sec: &ContainerSecurity, held: &Capabilities) -> Result<LinuxCapabilities> {
    let set = capability_set(sec, held)?;
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    Ok(caps)
}

// ---------------------------------------------------------------- seccomp

fn seccomp(sec: &ContainerSecurity) -> Result<Option<LinuxSeccomp>> {
    if sec.privileged {
        return Ok(None);
    }
    match sec.seccomp.as_str() {
        "" | "unconfined" => Ok(None),
        // "docker/default" is the name kubelet used before runtime/default.
        "runtime/default" | "docker/default" => default_seccomp().map(Some),
        other => match other.strip_prefix("localhost/") {
            Some(path) => load_seccomp(path).map(Some),
            None => Err(invalid(format!("seccomp: unknown profile {other:?}"))),
        },
    }
}

/// The syscall ABIs a process on this machine can use: all of them must be
/// in a default-allow filter, or the denied calls stay reachable through
/// the other ABI.
fn seccomp_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        // Empty: libseccomp filters the native ABI.
        Vec::new()
    }
}

/// berth's "runtime/default": allow everything but [`DENIED_SYSCALLS`].
pub fn default_seccomp() -> Result<LinuxSeccomp> {
    let denied = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(spec_err)?;
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![denied]);
    let archs = seccomp_architectures();
    if !archs.is_empty() {
        builder = builder.architectures(archs);
    }
    builder.build().map_err(spec_err)
}

fn load_seccomp(path: &str) -> Result<LinuxSeccomp> {
    if !Path::new(path).is_absolute() {
        return Err(invalid(format!(
            "seccomp: localhost profile {path:?} is not an absolute path"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("seccomp: localhost profile {path}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        invalid(format!(
            "seccomp: localhost profile {path} is not an OCI seccomp profile: {e}"
        ))
    })
}

// ----------------------------------------------------------------- mounts

fn bind(destination: &Path, source: &Path, options: Vec<String>) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(spec_err)
}

fn propagation_option(p: Propagation) -> &'static str {
    match p {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => "rslave",
        Propagation::Bidirectional => "rshared",
    }
}

/// A CRI mount as a bind mount, checked. `rro` says whether the pod's
/// runtime handler makes recursive read-only mounts on this node.
fn cri_mount(m: &MountConfig, rro: bool) -> Result<Mount> {
    if !Path::new(&m.container_path).is_absolute() {
        return Err(invalid(format!(
            "mounts: container_path {:?} is not an absolute path",
            m.container_path
        )));
    }
    if !Path::new(&m.host_path).is_absolute() {
        return Err(invalid(format!(
            "mounts: host_path {:?} (for {}) is not an absolute path",
            m.host_path, m.container_path
        )));
    }
    if m.recursive_read_only && !m.readonly {
        return Err(invalid(format!(
            "mounts: {} is recursive_read_only but not readonly",
            m.container_path
        )));
    }
    if m.recursive_read_only && m.propagation != Propagation::Private {
        return Err(invalid(format!(
            "mounts: {} is recursive_read_only, which needs private propagation",
            m.container_path
        )));
    }
    if m.recursive_read_only && !rro {
        return Err(Error::FailedPrecondition(format!(
            "mounts: {} is recursive_read_only, which this runtime handler cannot do on this node",
            m.container_path
        )));
    }
    let access = if m.recursive_read_only {
        "rro"
    } else if m.readonly {
        "ro"
    } else {
        "rw"
    };
    bind(
        Path::new(&m.container_path),
        Path::new(&m.host_path),
        vec![
            "rbind".to_string(),
            propagation_option(m.propagation).to_string(),
            access.to_string(),
        ],
    )
}

/// Mounts are made in order: a parent must come before what is mounted
/// under it, or it would hide it.
fn depth(m: &Mount) -> usize {
    m.destination()
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

fn mounts(inputs: &SpecInputs) -> Result<Vec<Mount>> {
    let config = &inputs.config;
    let privileged = config.security.privileged;
    let rro = inputs
        .host
        .recursive_read_only
        .contains(&inputs.runtime_handler);
    let cri: Vec<Mount> = config
        .mounts
        .iter()
        .map(|m| cri_mount(m, rro))
        .collect::<Result<_>>()?;
    let targeted = |dest: &Path| cri.iter().any(|m| m.destination() == dest);
    let dev = Path::new("/dev");
    let dev_shm = Path::new("/dev/shm");
    // A pod on the host's IPC namespace gets the host's /dev/shm.
    let shm = inputs.shm.clone().or_else(|| {
        (inputs.pod_security.namespaces.ipc == NamespaceMode::Node)
            .then(|| PathBuf::from("/dev/shm"))
    });

    let mut out = Vec::new();
    for mut m in Spec::default().mounts().clone().unwrap_or_default() {
        let dest = m.destination().clone();
        // A CRI mount replaces the default at its path; a CRI /dev replaces
        // everything the defaults put under /dev.
        if targeted(&dest) || (dest.starts_with(dev) && targeted(dev)) {
            continue;
        }
        if dest == dev_shm && shm.is_some() {
            continue;
        }
        if dest == dev && privileged {
            // Every host device, by binding the host's /dev; the devpts,
            // shm and mqueue mounts still go over it.
            out.push(bind(
                dev,
                dev,
                vec![
                    "rbind".into(),
                    "rprivate".into(),
                    "nosuid".into(),
                    "rw".into(),
                ],
            )?);
            continue;
        }
        if privileged && (dest == Path::new("/sys") || dest == Path::new("/sys/fs/cgroup")) {
            if let Some(options) = m.options_mut() {
                for o in options.iter_mut().filter(|o| *o == "ro") {
                    *o = "rw".to_string();
                }
            }
        }
        out.push(m);
    }

    let rw = || {
        vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            "rw".to_string(),
        ]
    };
    let mut extra = Vec::new();
    if let Some(shm) = &shm {
        if !targeted(dev_shm) && !targeted(dev) {
            extra.push(bind(dev_shm, shm, rw())?);
        }
    }
    for (dest, source) in [
        ("/etc/hostname", &inputs.hostname_file),
        ("/etc/hosts", &inputs.hosts_file),
        ("/etc/resolv.conf", &inputs.resolv_conf),
    ] {
        if !targeted(Path::new(dest)) {
            extra.push(bind(Path::new(dest), source, rw())?);
        }
    }
    extra.extend(cri);
    // Stable: among mounts of the same depth, kubelet's order is kept.
    extra.sort_by_key(depth);
    out.extend(extra);
    Ok(out)
}

/// A mount that propagates needs the container's root to propagate too.
fn rootfs_propagation(mounts: &[MountConfig]) -> Option<String> {
    if mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared".to_string())
    } else if mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave".to_string())
    } else {
        None
    }
}

/// Creates the host path of every CRI mount that does not exist yet, as a
/// directory (kubelet expects that of a runtime). Blocking; the one side
/// effect of making a container's spec, kept out of [`build`].
pub fn prepare_host_paths(config: &ContainerConfig) -> Result<()> {
    for m in &config.mounts {
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(invalid(format!(
                "mounts: host_path {:?} (for {}) is not an absolute path",
                m.host_path, m.container_path
            )));
        }
        match std::fs::symlink_metadata(host) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(host).map_err(|e| {
                    Error::Internal(format!("create mount host_path {}: {e}", host.display()))
                })?;
            }
            Err(e) => {
                return Err(Error::Internal(format!(
                    "mount host_path {}: {e}",
                    host.display()
                )))
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- devices

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(n) = major {
        b = b.major(n);
    }
    if let Some(n) = minor {
        b = b.minor(n);
    }
    b.build().map_err(spec_err)
}

/// Each CRI device as a node in the container and a cgroup rule letting
/// the container use it.
fn devices(list: &[DeviceConfig]) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in list {
        if !Path::new(&d.container_path).is_absolute() {
            return Err(invalid(format!(
                "devices: container_path {:?} is not an absolute path",
                d.container_path
            )));
        }
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(format!(
                "devices: permissions {:?} for {} are not a combination of r, w and m",
                d.permissions, d.host_path
            )));
        }
        // Follows symlinks: /dev/disk/by-id/... names are links to nodes.
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| invalid(format!("devices: host_path {:?}: {e}", d.host_path)))?;
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(invalid(format!(
                "devices: host_path {:?} is not a device",
                d.host_path
            )));
        };
        let rdev = meta.rdev();
        let major = i64::try_from(nix::sys::stat::major(rdev)).map_err(spec_err)?;
        let minor = i64::try_from(nix::sys::stat::minor(rdev)).map_err(spec_err)?;
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(&d.container_path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(spec_err)?,
        );
        rules.push(device_rule(
            true,
            Some(typ),
            Some(major),
            Some(minor),
            access,
        )?);
    }
    Ok((nodes, rules))
}

// ------------------------------------------------------------- namespaces

fn namespaces(inputs: &SpecInputs) -> Result<Vec<LinuxNamespace>> {
    let pod = &inputs.pod_security.namespaces;
    let new = |typ: LinuxNamespaceType| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(spec_err)
    };
    let join = |typ: LinuxNamespaceType, name: &str| {
        if inputs.pod_pid == 0 {
            return Err(Error::FailedPrecondition(
                "the pod has no pause process whose namespaces to join".to_string(),
            ));
        }
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(format!("/proc/{}/ns/{name}", inputs.pod_pid))
            .build()
            .map_err(spec_err)
    };
    let mut list = vec![new(LinuxNamespaceType::Mount)?];
    // With neither entry, a host-network pod's containers stay in the
    // host's network and UTS namespaces, as its pause container does.
    if pod.network != NamespaceMode::Node {
        list.push(join(LinuxNamespaceType::Network, "net")?);
        list.push(join(LinuxNamespaceType::Uts, "uts")?);
    }
    if pod.ipc != NamespaceMode::Node {
        list.push(join(LinuxNamespaceType::Ipc, "ipc")?);
    }
    match inputs.config.security.pid_namespace {
        NamespaceMode::Pod => list.push(join(LinuxNamespaceType::Pid, "pid")?),
        NamespaceMode::Container => list.push(new(LinuxNamespaceType::Pid)?),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            // The target container's own PID namespace (debug containers).
            let pid = inputs.target_pid.filter(|p| *p > 0).ok_or_else(|| {
                invalid("pid_namespace: target mode names no running target container")
            })?;
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(format!("/proc/{pid}/ns/pid"))
                    .build()
                    .map_err(spec_err)?,
            );
        }
    }
    Ok(list)
}

// -------------------------------------------------------------- resources

fn non_negative(field: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| invalid(format!("resources: {field} {value} is negative")))
}

/// Page sizes as the kernel's hugetlb controller names them: a number and
/// a unit ("2MB", "1GB", "64KB").
fn valid_page_size(size: &str) -> bool {
    let digits = size.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && matches!(&size[digits..], "KB" | "MB" | "GB" | "TB" | "PB")
}

/// The OCI resources for UpdateContainerResources (no device rules: those
/// stay as created).
pub fn update_resources(r: &Resources, hugetlb: bool) -> Result<LinuxResources> {
    resources(r, Vec::new(), hugetlb)
}

/// Hugepage limits are checked either way but applied only when `hugetlb`
/// (the node has the controller): kubelet sends one for every page size
/// the node has, and runc fails on a limit it cannot set.
fn resources(
    r: &Resources,
    devices: Vec<LinuxDeviceCgroup>,
    hugetlb: bool,
) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    out.set_cpu(cpu(r)?);
    out.set_memory(memory(r)?);
    let mut hugepages = Vec::new();
    for (size, limit) in &r.hugepage_limits {
        if !valid_page_size(size) {
            return Err(invalid(format!(
                "resources: hugepage_limits page size {size:?} is not like \"2MB\""
            )));
        }
        let limit = i64::try_from(*limit).map_err(|_| {
            invalid(format!(
                "resources: hugepage_limits {size} limit {limit} is too large"
            ))
        })?;
        hugepages.push(
            LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(limit)
                .build()
                .map_err(spec_err)?,
        );
    }
    if !hugetlb && !hugepages.is_empty() {
        tracing::debug!(
            limits = hugepages.len(),
            "hugepage limits dropped: no hugetlb cgroup controller (or it is turned off)"
        );
        hugepages.clear();
    }
    out.set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages));
    out.set_unified(unified(&r.unified));
    Ok(out)
}

fn unified(map: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!map.is_empty()).then(|| map.clone().into_iter().collect())
}

fn cpu(r: &Resources) -> Result<Option<LinuxCpu>> {
    let shares = non_negative("cpu_shares", r.cpu_shares)?;
    let quota = non_negative("cpu_quota", r.cpu_quota)?;
    let period = non_negative("cpu_period", r.cpu_period)?;
    let mut b = LinuxCpuBuilder::default();
    let mut any = false;
    if shares > 0 {
        b = b.shares(shares);
        any = true;
    }
    if quota > 0 {
        b = b.quota(r.cpu_quota).period(if period > 0 {
            period
        } else {
            DEFAULT_CPU_PERIOD
        });
        any = true;
    } else if period > 0 {
        b = b.period(period);
        any = true;
    }
    if !r.cpuset_cpus.is_empty() {
        b = b.cpus(r.cpuset_cpus.clone());
        any = true;
    }
    if !r.cpuset_mems.is_empty() {
        b = b.mems(r.cpuset_mems.clone());
        any = true;
    }
    if !any {
        return Ok(None);
    }
    b.build().map(Some).map_err(spec_err)
}

fn memory(r: &Resources) -> Result<Option<LinuxMemory>> {
    let limit = non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    // -1 is how kubelet (UnlimitedSwap on cgroup v1) asks for unlimited
    // swap, and runc takes it as that; anything lower is a mistake.
    let swap = if r.memory_swap_limit_in_bytes == -1 {
        -1
    } else {
        non_negative("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)?;
        r.memory_swap_limit_in_bytes
    };
    let mut b = LinuxMemoryBuilder::default();
    let mut any = false;
    if limit > 0 {
        b = b.limit(r.memory_limit_in_bytes);
        any = true;
    }
    // runc reads swap as the memory+swap total, which is what the CRI
    // field holds.
    if swap != 0 {
        b = b.swap(swap);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    b.build().map(Some).map_err(spec_err)
}

// ------------------------------------------------------------ annotations

fn annotations(config: &ContainerConfig) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    // Ours last: a pod cannot pass itself off as something else.
    out.insert(ANNOTATION_CONTAINER_TYPE.into(), "container".into());
    out.insert(ANNOTATION_CONTAINER_NAME.into(), config.name.clone());
    out.insert(ANNOTATION_IMAGE_NAME.into(), config.image.clone());
    out
}
