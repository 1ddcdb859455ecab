//! Exec without the runtime: the shim starts an exec'd process in the
//! container itself, doing what `runc exec` does, in a fraction of its
//! time (one fork instead of a runtime binary that re-executes itself).
//!
//! The parent opens what the process joins, through the init: its
//! namespaces (`/proc/<init>/ns/*`, those that differ from the shim's),
//! its cgroups in every mounted hierarchy (`/proc/<init>/cgroup`), and its
//! root file system (for the program's lookup in `PATH`, `HOME` from
//! `/etc/passwd`, and a terminal from the container's own `devpts`). It
//! then checks through the init's pidfd that the init is still the same
//! process, so nothing opened belongs to a process that reused its pid.
//! A thread joins the pid namespace (which only applies to the children
//! it forks) and forks; the child does the rest: see [`child`].
//!
//! Containers and processes that ask for what this does not do go to the
//! runtime instead: seccomp, AppArmor, SELinux, user and time namespaces,
//! personalities, Intel RDT, and any process field not read here.

mod caps;
mod cgroups;
pub(crate) mod child;
mod root;
mod spec;

use crate::error::{Doing, Result, ShimError};
use child::{CapSets, Child, Stage};
use root::{c_path, Root};
pub use spec::Process;
use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

/// The namespaces a process joins in the child, the mount namespace last
/// (it changes the root the later steps see). The pid namespace is joined
/// by the forking thread; user and time namespaces go to the runtime.
const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// Per container: what is read once.
#[derive(Default)]
pub struct Native {
    refusal: OnceLock<Option<String>>,
    mounts: OnceLock<Vec<cgroups::Mount>>,
    last_cap: OnceLock<u32>,
    planned: std::sync::atomic::AtomicBool,
}

/// The process's stdio: a terminal of its own, or these (None:
/// `/dev/null`).
#[derive(Default)]
pub struct Stdio {
    pub terminal: bool,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub struct Started {
    pub pid: u32,
    /// The terminal's master, for a process with a terminal.
    pub master: Option<OwnedFd>,
}

/// The container's init, as the process finds its way in.
pub struct Init<'a> {
    pub pid: u32,
    pub pidfd: &'a OwnedFd,
}

impl Native {
    /// The exec's process when the shim can start it itself; Err says why
    /// the runtime must.
    pub fn plan(&self, bundle: &Path, process_json: &[u8]) -> Result<Process, String> {
        let refusal = self.refusal.get_or_init(|| spec::container_refusal(bundle));
        if let Some(why) = refusal {
            return Err(why.clone());
        }
        Process::parse(process_json)
    }

    /// True the first time it is asked.
    pub fn first_exec(&self) -> bool {
        !self
            .planned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts `p` in the container of `init`.
    pub fn start(&self, p: &Process, init: Init<'_>, io: Stdio) -> Result<Started> {
        let root = Root::of(init.pid).doing(|| "the container's root".into())?;
        let (pid_ns, namespaces) = namespaces(init.pid)?;
        let cgroups = self.cgroups(init.pid)?;
        // Everything above was opened from the init's /proc entry: the
        // init still being alive proves it was the init's.
        crate::pidfd::signal(init.pidfd, 0).doing(|| "the container's init".into())?;

        let user = p.user.as_ref();
        let (uid, gid) = user.map_or((0, 0), |u| (u.uid, u.gid));
        let mut env = p.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", root.home_of(uid)));
        }
        let path_env = env.iter().rev().find_map(|e| e.strip_prefix("PATH="));
        let cwd = p.cwd.as_deref().filter(|c| !c.is_empty()).unwrap_or("/");
        let args = p.args.as_deref().unwrap_or_default();
        let name = args.first().map(String::as_str).unwrap_or_default();
        let program = root.find_program(name, path_env, cwd).ok_or_else(|| {
            ShimError::Exec(format!(
                "exec: {name:?}: executable file not found in $PATH"
            ))
        })?;

        let terminal = io.terminal;
        let (stdio, master) = if terminal {
            let size = p.console_size.as_ref().map(|s| (s.height, s.width));
            let (master, slave) = root
                .terminal(size)
                .doing(|| "a terminal in the container".into())?;
            let fds = [slave.try_clone(), slave.try_clone()];
            let [a, b] = fds.map(|f| f.doing(|| "dup the terminal".into()));
            ([slave, a?, b?], Some(master))
        } else {
            let null = || -> Result<OwnedFd> {
                Ok(File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .doing(|| "/dev/null".into())?
                    .into())
            };
            let pick = |fd: Option<OwnedFd>| fd.map_or_else(null, Ok);
            ([pick(io.stdin)?, pick(io.stdout)?, pick(io.stderr)?], None)
        };

        let last = *self.last_cap.get_or_init(caps::last_cap);
        let (drop_bounding, cap_sets) = match &p.capabilities {
            None => (Vec::new(), None),
            Some(c) => {
                let set =
                    |l: &Option<Vec<String>>| caps::mask(l.as_deref().unwrap_or_default(), last);
                let bounding = set(&c.bounding);
                (
                    caps::numbers(!bounding, last),
                    Some(CapSets {
                        effective: set(&c.effective),
                        permitted: set(&c.permitted),
                        inheritable: set(&c.inheritable),
                        ambient: caps::numbers(set(&c.ambient), last),
                    }),
                )
            }
        };
        let mut rlimits = Vec::new();
        for r in p.rlimits.as_deref().unwrap_or_default() {
            let resource = rlimit_resource(&r.kind)
                .ok_or_else(|| ShimError::Exec(format!("unknown rlimit {:?}", r.kind)))?;
            let limit = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            rlimits.push((resource, limit));
        }
        let strings = |list: &[String], what: &str| -> Result<Vec<CString>> {
            list.iter()
                .map(|s| {
                    CString::new(s.as_bytes())
                        .map_err(|_| ShimError::Exec(format!("{what} {s:?} holds a NUL byte")))
                })
                .collect()
        };
        let argv = strings(args, "argument")?;
        let envp = strings(&env, "environment variable")?;
        let bad_path = |e| ShimError::Io {
            what: "a path".into(),
            source: e,
        };
        let (report_read, report_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).doing(|| "a pipe".into())?;
        let child = Child {
            stdio: stdio.each_ref().map(|f| f.as_raw_fd()),
            cgroups: cgroups.iter().map(|f| f.as_raw_fd()).collect(),
            oom_score_adj: p.oom_score_adj.map(|v| v.to_string().into_bytes()),
            namespaces: namespaces
                .iter()
                .map(|(f, k)| (f.as_raw_fd(), *k))
                .collect(),
            cwd: c_path(cwd).map_err(bad_path)?,
            drop_bounding,
            rlimits,
            uid,
            gid,
            groups: user
                .and_then(|u| u.additional_gids.clone())
                .unwrap_or_default(),
            caps: cap_sets,
            umask: user.and_then(|u| u.umask),
            no_new_privileges: p.no_new_privileges.unwrap_or(false),
            terminal,
            program: c_path(&program).map_err(bad_path)?,
            report: report_write.as_raw_fd(),
        };
        let pid = fork_in(pid_ns.as_ref(), &child, &argv, &envp)?;
        drop(child);
        drop(report_write);
        drop(stdio);
        let mut word = Vec::new();
        let _ = File::from(report_read).take(8).read_to_end(&mut word);
        if let Some((stage, errno)) = decode(&word) {
            let source = std::io::Error::from_raw_os_error(errno);
            let what = if stage == Stage::Exec as u32 {
                format!("exec: {name:?}")
            } else if stage == Stage::Cwd as u32 {
                format!("chdir to cwd ({cwd:?}) set in config.json failed")
            } else {
                child::doing(stage).to_string()
            };
            return Err(ShimError::Io { what, source });
        }
        Ok(Started { pid, master })
    }

    fn cgroups(&self, init: u32) -> Result<Vec<OwnedFd>> {
        let mounts = self.mounts.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            cgroups::mounts(&text)
        });
        let path = format!("/proc/{init}/cgroup");
        let text = std::fs::read_to_string(&path).doing(|| path.clone())?;
        cgroups::procs_files(&text, mounts)
            .into_iter()
            .map(|file| {
                let fd = File::options()
                    .write(true)
                    .open(&file)
                    .doing(|| format!("the container's cgroup {}", file.display()))?;
                Ok(fd.into())
            })
            .collect()
    }
}

/// The init's pid namespace and its other namespaces, where they differ
/// from the shim's.
#[allow(clippy::type_complexity)]
fn namespaces(init: u32) -> Result<(Option<OwnedFd>, Vec<(OwnedFd, libc::c_int)>)> {
    let differs = |kind: &str| -> Result<Option<OwnedFd>> {
        let theirs = format!("/proc/{init}/ns/{kind}");
        let file = match File::open(&theirs) {
            Ok(f) => f,
            // A kernel without this kind of namespace.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ShimError::Io {
                    what: theirs,
                    source: e,
                })
            }
        };
        let a = file.metadata().doing(|| theirs.clone())?;
        let mine = format!("/proc/self/ns/{kind}");
        let b = std::fs::metadata(&mine).doing(|| mine.clone())?;
        Ok((a.ino() != b.ino() || a.dev() != b.dev()).then(|| file.into()))
    };
    for kind in ["user", "time"] {
        if differs(kind)?.is_some() {
            return Err(ShimError::Exec(format!(
                "the container has a {kind} namespace of its own"
            )));
        }
    }
    let mut joined = Vec::new();
    for (kind, flag) in NAMESPACES {
        if let Some(fd) = differs(kind)? {
            joined.push((fd, flag));
        }
    }
    Ok((differs("pid")?, joined))
}

/// Forks `child` on a thread of its own, which first joins `pid_ns` (a
/// pid namespace applies to the children of the thread that joins it).
fn fork_in(
    pid_ns: Option<&OwnedFd>,
    child: &Child,
    argv: &[CString],
    envp: &[CString],
) -> Result<u32> {
    let nul_terminated = |list: &[CString]| -> Vec<*const c_char> {
        list.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    // The pointers are made on the forking thread: the child gets them as
    // they are, and raw pointers do not cross threads.
    let forked = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<u32> {
            let (argv_p, envp_p) = (nul_terminated(argv), nul_terminated(envp));
            if let Some(ns) = pid_ns {
                // SAFETY: a namespace fd and its type.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // SAFETY: the child runs only async-signal-safe code on what
            // was prepared before this point, and never returns.
            match unsafe { libc::fork() } {
                -1 => Err(std::io::Error::last_os_error()),
                0 => child.run(&argv_p, &envp_p),
                pid => Ok(pid as u32),
            }
        })
        .join()
    });
    match forked {
        Ok(r) => r.doing(|| "fork into the container".into()),
        Err(_) => Err(ShimError::Exec("the forking thread panicked".into())),
    }
}

/// The child's report: the stage that failed and its errno; None when
/// it wrote nothing (its exec succeeded).
fn decode(word: &[u8]) -> Option<(u32, i32)> {
    let stage = u32::from_ne_bytes(word.get(..4)?.try_into().ok()?);
    let errno = i32::from_ne_bytes(word.get(4..8)?.try_into().ok()?);
    Some((stage, errno))
}

fn rlimit_resource(name: &str) -> Option<libc::c_int> {
    let r = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    Some(r as libc::c_int)
}
