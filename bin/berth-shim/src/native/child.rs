//! The forked child: everything between `fork` and `execve`, in runc's
//! order. It runs in a copy of a multithreaded process, so it only makes
//! system calls on what the parent prepared: no allocation, no locks, no
//! panics. A step that fails writes its stage and errno to the report
//! pipe and exits 127; a successful `execve` closes the pipe.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::RawFd;

/// Which step failed: its number is what the child reports, an index
/// into [`DOING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Stdio,
    Cgroup,
    Namespace,
    Cwd,
    Bounding,
    Rlimit,
    Groups,
    Gid,
    Uid,
    Capabilities,
    Ambient,
    NoNewPrivileges,
    Session,
    Terminal,
    Exec,
}

/// What each stage was doing, as errors name it.
const DOING: [&str; 15] = [
    "setting up its stdio",
    "joining the container's cgroups",
    "joining the container's namespaces",
    "changing to its working directory",
    "dropping capabilities from its bounding set",
    "setting its rlimits",
    "setting its supplementary groups",
    "setting its gid",
    "setting its uid",
    "setting its capabilities",
    "raising its ambient capabilities",
    "setting no_new_privs",
    "starting its session",
    "taking its terminal",
    "executing it",
];

/// What the stage numbered `n` was doing.
pub fn doing(n: u32) -> &'static str {
    DOING.get(n as usize).copied().unwrap_or("starting it")
}

pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: Vec<c_int>,
}

/// Everything the child does, prepared by the parent.
pub struct Child {
    /// Becomes fds 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// `cgroup.procs` files, open for writing.
    pub cgroups: Vec<RawFd>,
    /// The value to write to `/proc/self/oom_score_adj`, best effort.
    pub oom_score_adj: Option<Vec<u8>>,
    /// Namespace fds and their types, the mount namespace last.
    pub namespaces: Vec<(RawFd, c_int)>,
    pub cwd: CString,
    pub drop_bounding: Vec<c_int>,
    pub rlimits: Vec<(c_int, libc::rlimit)>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub caps: Option<CapSets>,
    pub umask: Option<libc::mode_t>,
    pub no_new_privileges: bool,
    pub terminal: bool,
    pub program: CString,
    /// The write end of the report pipe (close-on-exec).
    pub report: RawFd,
}

impl Child {
    /// Runs in the child after `fork`; never returns. `argv` and `envp`
    /// are NULL-terminated arrays the parent made before forking.
    pub fn run(&self, argv: &[*const c_char], envp: &[*const c_char]) -> ! {
        let failed = match self.steps(argv, envp) {
            Ok(()) => (Stage::Exec, libc::ENOEXEC),
            Err(f) => f,
        };
        let mut word = [0u8; 8];
        let (stage, errno) = ((failed.0 as u32).to_ne_bytes(), failed.1.to_ne_bytes());
        word[..4].copy_from_slice(&stage);
        word[4..].copy_from_slice(&errno);
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(self.report, word.as_ptr().cast(), word.len());
            libc::_exit(127)
        }
    }

    fn steps(&self, argv: &[*const c_char], envp: &[*const c_char]) -> Result<(), (Stage, c_int)> {
        // SAFETY: each call below is a plain system call on values the
        // parent prepared; none allocates or takes a lock.
        unsafe {
            reset_signals();
            for (target, &fd) in self.stdio.iter().enumerate() {
                let target = target as c_int;
                if fd == target {
                    check(Stage::Stdio, libc::fcntl(fd, libc::F_SETFD, 0))?;
                } else {
                    check(Stage::Stdio, libc::dup2(fd, target))?;
                }
            }
            for &fd in &self.cgroups {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err((Stage::Cgroup, errno()));
                }
            }
            if let Some(value) = &self.oom_score_adj {
                let path = c"/proc/self/oom_score_adj";
                // As the shim may not lower it (no CAP_SYS_RESOURCE), a
                // refusal leaves the shim's value, as the runtime would.
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, value.as_ptr().cast(), value.len());
                    libc::close(fd);
                }
            }
            for &(fd, kind) in &self.namespaces {
                check(Stage::Namespace, libc::setns(fd, kind))?;
            }
            check(Stage::Cwd, libc::chdir(self.cwd.as_ptr()))?;
            for &cap in &self.drop_bounding {
                check(
                    Stage::Bounding,
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0),
                )?;
            }
            for (resource, limit) in &self.rlimits {
                check(
                    Stage::Rlimit,
                    libc::setrlimit(*resource as libc::__rlimit_resource_t, limit),
                )?;
            }
            let keep = self.caps.is_some();
            if keep {
                check(
                    Stage::Capabilities,
                    libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
                )?;
            }
            check(
                Stage::Groups,
                libc::setgroups(self.groups.len(), self.groups.as_ptr()),
            )?;
            check(Stage::Gid, libc::setresgid(self.gid, self.gid, self.gid))?;
            check(Stage::Uid, libc::setresuid(self.uid, self.uid, self.uid))?;
            if let Some(caps) = &self.caps {
                check(
                    Stage::Capabilities,
                    libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
                )?;
                check(
                    Stage::Capabilities,
                    super::caps::set(caps.effective, caps.permitted, caps.inheritable),
                )?;
                let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL;
                check(
                    Stage::Ambient,
                    libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0),
                )?;
                for &cap in &caps.ambient {
                    let raise = libc::PR_CAP_AMBIENT_RAISE;
                    check(
                        Stage::Ambient,
                        libc::prctl(libc::PR_CAP_AMBIENT, raise, cap, 0, 0),
                    )?;
                }
            }
            if let Some(mask) = self.umask {
                libc::umask(mask);
            }
            if self.no_new_privileges {
                check(
                    Stage::NoNewPrivileges,
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                )?;
            }
            check(Stage::Session, libc::setsid())?;
            if self.terminal {
                check(Stage::Terminal, libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            // Nothing the shim holds reaches the process: every fd past
            // the three is closed by the exec (kernels before 5.11 lack
            // close_range; the shim's own fds are close-on-exec anyway).
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            Err((Stage::Exec, errno()))
        }
    }
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno, always valid to read.
    unsafe { *libc::__errno_location() }
}

fn check<T: Into<i64>>(stage: Stage, ret: T) -> Result<(), (Stage, c_int)> {
    if ret.into() < 0 {
        Err((stage, errno()))
    } else {
        Ok(())
    }
}

/// Signals as a new process expects them: none blocked, every one at its
/// default (the shim ignores some, and an ignored signal stays ignored
/// across `execve`).
pub(crate) unsafe fn reset_signals() {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}
