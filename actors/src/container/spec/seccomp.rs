//! Seccomp: berth's default profile, unconfined, or a localhost profile file.

use super::*;

/// What berth's "runtime/default" seccomp profile refuses with EPERM:
/// loading kernel code, tracing and key-ring syscalls, swapping, rebooting,
/// setting the clock and raw port I/O. Everything else is allowed. The
/// 32-bit siblings (`umount`, `stime`, `clock_settime64`) are listed too,
/// since the x86 and arm ABIs are in the filter; runc skips names the
/// running kernel does not know.
pub(super) const DENIED_SYSCALLS: &[&str] = &[
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

pub(super) fn seccomp(sec: &ContainerSecurity) -> Result<Option<LinuxSeccomp>> {
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
pub(super) fn seccomp_architectures() -> Vec<Arch> {
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

/// The most a seccomp profile file may hold; the default profiles of
/// containerd and docker are under 30 KiB.
const PROFILE_MAX: u64 = 1024 * 1024;

/// Reads a profile file that a client named: a regular file (a FIFO, a
/// device or a directory is refused before any read could block or never
/// end), at most [`PROFILE_MAX`] bytes.
fn read_profile(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > PROFILE_MAX {
        return Err(std::io::Error::other(format!(
            "{} bytes; the most is {PROFILE_MAX}",
            meta.len()
        )));
    }
    let mut out = Vec::new();
    file.take(PROFILE_MAX + 1).read_to_end(&mut out)?;
    if out.len() as u64 > PROFILE_MAX {
        return Err(std::io::Error::other(format!(
            "more than {PROFILE_MAX} bytes"
        )));
    }
    Ok(out)
}

pub(super) fn load_seccomp(path: &str) -> Result<LinuxSeccomp> {
    if !Path::new(path).is_absolute() {
        return Err(invalid(format!(
            "seccomp: localhost profile {path:?} is not an absolute path"
        )));
    }
    let text = read_profile(Path::new(path))
        .map_err(|e| invalid(format!("seccomp: localhost profile {path}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| {
        invalid(format!(
            "seccomp: localhost profile {path} is not an OCI seccomp profile: {e}"
        ))
    })
}
