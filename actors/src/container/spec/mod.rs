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

mod capabilities;
mod devices;
mod mounts;
mod namespaces;
mod resources;
mod seccomp;
mod user;

use capabilities::*;
use devices::*;
use mounts::*;
use namespaces::*;
use resources::*;
use seccomp::*;

pub(crate) use capabilities::parse_capability;
pub use mounts::{image_volume_source, prepare_host_paths};
pub use resources::update_resources;
pub use seccomp::default_seccomp;
pub use user::resolve_user;

#[cfg(test)]
mod tests;

/// What a process gets when neither the image nor kubelet sets PATH (the
/// same default docker and containerd use).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotations runc-based tooling reads to tell containers from sandboxes.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

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
    if let Some(map) = &inputs.pod_security.user_namespace {
        let (uids, gids) = crate::sandbox::spec::id_mappings(map)?;
        linux.set_uid_mappings(Some(uids));
        linux.set_gid_mappings(Some(gids));
    }
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

fn annotations(config: &ContainerConfig) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    // Ours last: a pod cannot pass itself off as something else.
    out.insert(ANNOTATION_CONTAINER_TYPE.into(), "container".into());
    out.insert(ANNOTATION_CONTAINER_NAME.into(), config.name.clone());
    out.insert(ANNOTATION_IMAGE_NAME.into(), config.image.clone());
    out
}
