//! The `containerd.task.v3.Task` service for one container.
//!
//! State lives in [`Shared`]: the container's init process and its exec'd
//! processes, each created, running or stopped. Verbs that run runc hold
//! the `ops` lock, so two of them never race on the container, while
//! `state`, `wait` and `kill` stay answerable during a slow runc call. The
//! reaper's callbacks move processes to stopped; `wait` sleeps on a condvar
//! until they do.
//!
//! Lock order: `ops`, then `tasks`, then a log file; the reaper's lock is
//! never taken with `tasks` held, because a reaper callback takes `tasks`.

use crate::events::{timestamp, Publisher};
use crate::io::{self, Drained, LogFile, SharedLog, Stream};
use crate::reaper::{Exit, Reaper};
use crate::runc::{self, Io, Runc};
use berth_protocol::shim::{
    check_id, ExitRecord, ShimArgs, EXIT_FILE, RUNTIME_LOG_FILE, SPEC_FILE,
};
use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim_protos::Task;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

type TResult<T> = ttrpc::Result<T>;

/// How long an exit waits for the container's output to drain before it is
/// reported anyway (a process outside the container's pid namespace may
/// hold the pipes open).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long `delete` of a created (never started) container waits for the
/// killed process to be reaped.
const DELETE_REAP_LIMIT: Duration = Duration::from_secs(2);

/// How often a blocked `wait` checks that its caller is still connected.
const WAIT_POLL: Duration = Duration::from_secs(1);

pub const VERSION: &str = concat!("berth-shim ", env!("CARGO_PKG_VERSION"));

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped(Exit),
}

struct Proc {
    /// 0 until the process exists (an exec before `start`).
    pid: u32,
    phase: Phase,
    stdout: String,
    stderr: String,
    /// An exec's process spec (JSON), until it is started.
    spec: Vec<u8>,
    /// The init's log files, reopened on SIGUSR1.
    logs: Vec<SharedLog>,
    /// The write end of the init's stdin pipe, held open until `close_io`
    /// or `delete`, so that the container reads no end-of-file.
    stdin: Option<OwnedFd>,
    /// The master of the init's terminal, kept open while it lives.
    console: Option<OwnedFd>,
    /// The init's pidfd: signals reach it without a runtime call, and
    /// never another process that got its pid.
    pidfd: Option<OwnedFd>,
    /// The init's create request, kept until `start` runs it (`runc run
    /// --detach`: one runtime call instead of create and start).
    pending: Option<CreateTaskRequest>,
}

impl Proc {
    /// Whether the runtime holds the init (it has a pid once run): only
    /// then do kill, delete, pids and update ask the runtime.
    fn ran(&self) -> bool {
        self.pid != 0
    }
}

#[derive(Default)]
struct Tasks {
    init: Option<Proc>,
    execs: HashMap<String, Proc>,
}

impl Tasks {
    fn get(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            self.init.as_ref()
        } else {
            self.execs.get(exec_id)
        }
    }

    fn get_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            self.init.as_mut()
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

/// Everything the service and the reaper's callbacks share.
pub struct Shared {
    id: String,
    bundle: PathBuf,
    socket: PathBuf,
    runc: Runc,
    reaper: Arc<Reaper>,
    events: Option<Publisher>,
    tasks: Mutex<Tasks>,
    changed: Condvar,
    ops: Mutex<()>,
}

impl Shared {
    pub fn new(config: ShimArgs, reaper: Arc<Reaper>) -> Arc<Shared> {
        let runc = Runc::new(
            config.runtime,
            config.runtime_root,
            config.bundle.join(RUNTIME_LOG_FILE),
            reaper.clone(),
        );
        Arc::new(Shared {
            id: config.id,
            bundle: config.bundle,
            socket: config.socket,
            runc,
            reaper,
            events: config.events.map(Publisher::new),
            tasks: Mutex::default(),
            changed: Condvar::new(),
            ops: Mutex::default(),
        })
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ops(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How errors name the process: the container, or one exec in it.
    fn name(&self, exec_id: &str) -> String {
        if exec_id.is_empty() {
            format!("container {}", self.id)
        } else {
            format!("exec {exec_id} in container {}", self.id)
        }
    }

    fn check_id(&self, id: &str) -> TResult<()> {
        if id == self.id {
            Ok(())
        } else {
            Err(status(
                Code::NOT_FOUND,
                format!("container {id} not found: this shim serves {}", self.id),
            ))
        }
    }

    fn not_found(&self, exec_id: &str) -> ttrpc::Error {
        status(Code::NOT_FOUND, format!("{} not found", self.name(exec_id)))
    }

    fn runc_failed(&self, e: runc::RuncError) -> ttrpc::Error {
        status(Code::INTERNAL, format!("container {}: {e}", self.id))
    }

    /// Reopens the container's log files at their paths (SIGUSR1, after a
    /// rotation renamed them).
    pub fn reopen_logs(&self) {
        let tasks = self.tasks();
        let Some(init) = &tasks.init else { return };
        for log in &init.logs {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            match log.reopen() {
                Ok(()) => log::info!("reopened the log {}", log.path().display()),
                Err(e) => log::warn!(
                    "cannot reopen the log {}: {e}; still writing to the old file",
                    log.path().display()
                ),
            }
        }
    }

    /// The init exited: on disk first, then (once its output is drained)
    /// to waiters and berthd.
    fn init_exited(self: &Arc<Self>, pid: u32, exit: Exit, drained: Option<Arc<Drained>>) {
        let record = ExitRecord {
            status: exit.status,
            exited_at_unix_nanos: crate::timefmt::unix_nanos(exit.at),
            note: None,
        };
        if let Err(e) = record.write_to(&self.bundle) {
            log::error!(
                "cannot record the exit of container {} in {}: {e}",
                self.id,
                self.bundle.join(EXIT_FILE).display()
            );
        }
        log::info!(
            "container {} (pid {pid}) exited with status {}",
            self.id,
            exit.status
        );
        let Some(drained) = drained else {
            self.process_exited("", pid, exit);
            return;
        };
        let me = self.clone();
        // Waiting for the drain must not hold up the reaper, so it happens
        // on a thread of its own.
        let spawned = std::thread::Builder::new()
            .name("exit".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                if !drained.wait(DRAIN_LIMIT) {
                    log::warn!(
                        "container {}: output still open {}s after its exit; reporting the exit",
                        me.id,
                        DRAIN_LIMIT.as_secs()
                    );
                }
                me.process_exited("", pid, exit);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to drain the output: {e}");
            self.process_exited("", pid, exit);
        }
    }

    /// Marks the process stopped, wakes its waiters and tells berthd.
    fn process_exited(&self, exec_id: &str, pid: u32, exit: Exit) {
        {
            let mut tasks = self.tasks();
            if let Some(p) = tasks.get_mut(exec_id) {
                if p.pid == pid {
                    p.phase = Phase::Stopped(exit);
                }
            }
        }
        self.changed.notify_all();
        if let Some(events) = &self.events {
            let id = if exec_id.is_empty() {
                &self.id
            } else {
                exec_id
            };
            events.task_exit(&self.id, id, pid, &exit);
        }
    }

    /// Opens the container's log files and the pipes its stdout and stderr
    /// write to. An empty stderr path means the stdout path; an empty path
    /// for both means the output is discarded.
    fn container_stdio(&self, stdout: &str, stderr: &str) -> TResult<ContainerStdio> {
        let stderr = if stderr.is_empty() { stdout } else { stderr };
        let mut got = ContainerStdio {
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            streams: Vec::new(),
            logs: Vec::new(),
        };
        let mut paths: Vec<&str> = Vec::new();
        for (path, tag) in [(stdout, "stdout"), (stderr, "stderr")] {
            if path.is_empty() {
                continue;
            }
            if !Path::new(path).is_absolute() {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "container {}: the log path {path:?} must be absolute",
                        self.id
                    ),
                ));
            }
            let log = match paths.iter().position(|p| *p == path) {
                Some(i) => got.logs[i].clone(),
                None => {
                    let log = LogFile::open(Path::new(path)).map_err(|e| {
                        status(
                            Code::FAILED_PRECONDITION,
                            format!("container {}: cannot open the log {path}: {e}", self.id),
                        )
                    })?;
                    paths.push(path);
                    got.logs.push(log.clone());
                    log
                }
            };
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| status(Code::INTERNAL, format!("cannot make a pipe: {e}")))?;
            got.streams.push(Stream {
                pipe: read,
                log,
                tag,
            });
            if tag == "stdout" {
                got.stdout = Stdio::from(write);
            } else {
                got.stderr = Stdio::from(write);
            }
        }
        Ok(got)
    }

    /// Opens the files an exec's output goes to, raw.
    fn exec_stdio(&self, exec_id: &str, stdout: &str, stderr: &str) -> TResult<(Stdio, Stdio)> {
        let open = |path: &str| -> TResult<Option<File>> {
            if path.is_empty() {
                return Ok(None);
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map(Some)
                .map_err(|e| {
                    status(
                        Code::FAILED_PRECONDITION,
                        format!("{}: cannot open {path}: {e}", self.name(exec_id)),
                    )
                })
        };
        let out = open(stdout)?;
        let err = if stderr == stdout {
            match &out {
                Some(f) => Some(f.try_clone().map_err(|e| {
                    status(Code::INTERNAL, format!("cannot duplicate a file: {e}"))
                })?),
                None => None,
            }
        } else {
            open(stderr)?
        };
        let to_stdio = |f: Option<File>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
        Ok((to_stdio(out), to_stdio(err)))
    }

    /// Runs the init defined by `create`: `runc run --detach`, with its
    /// stdio, terminal and log copier set up as `create` asked.
    fn run_init(self: &Arc<Self>, req: &CreateTaskRequest) -> TResult<u32> {
        let s = self;
        let terminal = req.terminal || s.spec_wants_terminal();
        let mut stdin_keep = None;
        // A terminal's output goes to the stdout log (absolute: `create`
        // checked), opened before runc runs so that a bad path leaves no
        // container behind.
        let tty_log = if terminal {
            let log_path = if req.stdout.is_empty() {
                "/dev/null"
            } else {
                req.stdout.as_str()
            };
            Some(LogFile::open(Path::new(log_path)).map_err(|e| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("container {}: cannot open the log {log_path}: {e}", s.id),
                )
            })?)
        } else {
            None
        };
        let (stdin, mut stdio) = if terminal {
            // Everything goes through the terminal; runc's own output is
            // in its log.
            let stdio = ContainerStdio {
                stdout: Stdio::null(),
                stderr: Stdio::null(),
                streams: Vec::new(),
                logs: Vec::new(),
            };
            (Stdio::null(), stdio)
        } else {
            let stdin = if req.stdin.is_empty() {
                Stdio::null()
            } else {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| status(Code::INTERNAL, format!("cannot make a pipe: {e}")))?;
                stdin_keep = Some(write);
                Stdio::from(read)
            };
            (stdin, s.container_stdio(&req.stdout, &req.stderr)?)
        };
        let console_socket = terminal.then(|| PathBuf::from(CONSOLE_SOCKET));
        let listener = match &console_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                Some(UnixListener::bind(path).map_err(|e| {
                    status(
                        Code::INTERNAL,
                        format!("container {}: cannot bind the console socket: {e}", s.id),
                    )
                })?)
            }
            None => None,
        };
        let pid_file = s.bundle.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        // runc writes the pid file through this one; a runc killed
        // half-way leaves it, and the next run would refuse to start.
        let _ = std::fs::remove_file(s.bundle.join(".init.pid"));
        let since = s.reaper.mark();
        let mut args: Vec<&OsStr> = vec![
            "run".as_ref(),
            "--detach".as_ref(),
            "--bundle".as_ref(),
            s.bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
        ];
        if let Some(path) = &console_socket {
            args.extend(["--console-socket".as_ref(), path.as_os_str()]);
        }
        args.push(s.id.as_ref());
        let ran = s.runc.run(
            &args,
            Io::Pass {
                stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
            },
        );
        let console = match listener {
            Some(listener) => {
                let got = ran.map_err(|e| s.runc_failed(e)).and_then(|_| {
                    receive_console(&listener).map_err(|e| {
                        status(
                            Code::INTERNAL,
                            format!("container {}: the terminal: {e}", s.id),
                        )
                    })
                });
                drop(listener);
                if let Some(path) = &console_socket {
                    let _ = std::fs::remove_file(path);
                }
                let master = got?;
                let copy = master
                    .try_clone()
                    .map_err(|e| status(Code::INTERNAL, format!("cannot duplicate a fd: {e}")))?;
                let Some(log) = tty_log else {
                    return Err(status(Code::INTERNAL, "no log for the terminal"));
                };
                if !req.stdout.is_empty() {
                    stdio.logs.push(log.clone());
                }
                stdio.streams.push(Stream {
                    pipe: copy,
                    log,
                    tag: "stdout",
                });
                Some(master)
            }
            None => {
                ran.map_err(|e| s.runc_failed(e))?;
                None
            }
        };
        let drained =
            if stdio.streams.is_empty() {
                None
            } else {
                Some(io::spawn_copier(stdio.streams).map_err(|e| {
                    status(Code::INTERNAL, format!("cannot start the log copier: {e}"))
                })?)
            };
        let pid = read_pid(&pid_file)?;
        // It may have exited already: then there is no pidfd, and signals
        // go through the runtime.
        let pidfd = crate::pidfd::open(pid)
            .map_err(|e| log::warn!("container {}: no pidfd for pid {pid}: {e}", s.id))
            .ok();
        if let Some(init) = s.tasks().init.as_mut() {
            init.pid = pid;
            init.phase = Phase::Running;
            init.logs = stdio.logs;
            init.stdin = stdin_keep;
            init.console = console;
            init.pidfd = pidfd;
        }
        // Watched once it is Running: an exit delivered at once ends it.
        let me = s.clone();
        s.reaper.watch(
            pid as i32,
            since,
            Box::new(move |exit| me.init_exited(pid, exit, drained)),
        );
        log::info!("container {} started (pid {pid})", s.id);
        Ok(pid)
    }

    fn start_init(self: &Arc<Self>) -> TResult<u32> {
        let _op = self.ops();
        let pending = {
            let mut tasks = self.tasks();
            let init = tasks.init.as_mut().ok_or_else(|| self.not_found(""))?;
            match init.phase {
                Phase::Created => init.pending.take(),
                Phase::Running => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} is already running", self.id),
                    ))
                }
                Phase::Stopped(_) => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} has exited", self.id),
                    ))
                }
            }
        };
        // Starts are one at a time (the operations lock), and a failed run
        // puts the request back: a created init always has it.
        let req = pending.ok_or_else(|| {
            status(
                Code::INTERNAL,
                format!("container {} has no create request to run", self.id),
            )
        })?;
        let run = self.run_init(&req);
        if run.is_err() {
            // What a failed run left (a runtime killed half-way leaves its
            // state and a waiting init) goes; the start may be tried again.
            let _ = self.runc.run(
                &["delete", "--force", &self.id],
                Io::Capture { stdin: None },
            );
            // A runtime killed before it wrote its state leaves a
            // directory its delete does not know.
            let _ = std::fs::remove_dir_all(self.runc.root.join(&self.id));
            if let Some(init) = self.tasks().init.as_mut() {
                init.pending = Some(req);
            }
        }
        run
    }

    fn start_exec(self: &Arc<Self>, exec_id: &str) -> TResult<u32> {
        let _op = self.ops();
        let (spec, stdout, stderr) = {
            let tasks = self.tasks();
            self.require_running(&tasks)?;
            let exec = tasks
                .execs
                .get(exec_id)
                .ok_or_else(|| self.not_found(exec_id))?;
            if exec.phase != Phase::Created || exec.pid != 0 {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{} was already started", self.name(exec_id)),
                ));
            }
            (exec.spec.clone(), exec.stdout.clone(), exec.stderr.clone())
        };
        let spec_file = self.bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        let cleanup = || {
            let _ = std::fs::remove_file(&spec_file);
            let _ = std::fs::remove_file(&pid_file);
        };
        cleanup();
        write_private(&spec_file, &spec).map_err(|e| {
            status(
                Code::INTERNAL,
                format!("{}: cannot write its process spec: {e}", self.name(exec_id)),
            )
        })?;
        let (out, err) = self.exec_stdio(exec_id, &stdout, &stderr)?;
        let since = self.reaper.mark();
        let args: [&OsStr; 7] = [
            "exec".as_ref(),
            "--process".as_ref(),
            spec_file.as_os_str(),
            "--detach".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            self.id.as_ref(),
        ];
        let ran = self.runc.run(
            &args,
            Io::Pass {
                stdin: Stdio::null(),
                stdout: out,
                stderr: err,
            },
        );
        let pid = ran
            .map_err(|e| status(Code::INTERNAL, format!("{}: {e}", self.name(exec_id))))
            .and_then(|_| read_pid(&pid_file));
        cleanup();
        let pid = pid?;
        {
            let mut tasks = self.tasks();
            if let Some(exec) = tasks.execs.get_mut(exec_id) {
                exec.pid = pid;
                exec.phase = Phase::Running;
                exec.spec = Vec::new();
            }
        }
        let me = self.clone();
        let id = exec_id.to_string();
        self.reaper.watch(
            pid as i32,
            since,
            Box::new(move |exit| me.process_exited(&id, pid, exit)),
        );
        Ok(pid)
    }

    /// A signal for an init that never ran ends it there (as if it had
    /// been killed before its first instruction). None: it ran, or is
    /// being run; the signal goes to the process.
    fn end_unstarted_init(&self, signal: u32) -> Option<TResult<Empty>> {
        let starting = {
            let tasks = self.tasks();
            let init = tasks.init.as_ref()?;
            !init.ran() && init.pending.is_none()
        };
        if starting {
            // A start holds the operations lock until its run is done: the
            // signal then goes to what it made, or ends what it left.
            drop(self.ops());
        }
        let mut tasks = self.tasks();
        let init = tasks.init.as_mut()?;
        if init.ran() {
            return None;
        }
        if init.pending.take().is_none() {
            return Some(Err(status(
                Code::UNAVAILABLE,
                format!("container {} is being started; retry", self.id),
            )));
        }
        init.phase = Phase::Stopped(Exit {
            status: 128 + signal,
            at: SystemTime::now(),
        });
        drop(tasks);
        self.changed.notify_all();
        log::info!("container {} ended before it started", self.id);
        Some(Ok(Empty::new()))
    }

    /// Signals the init through its pidfd, the way `runc kill` without
    /// `--all` does, without running the runtime. None: no pidfd, the
    /// runtime must do it. ESRCH: it has been reaped.
    fn signal_init(&self, signal: i32) -> Option<std::io::Result<()>> {
        let tasks = self.tasks();
        let fd = tasks.init.as_ref()?.pidfd.as_ref()?;
        Some(crate::pidfd::signal(fd, signal))
    }

    fn require_running(&self, tasks: &Tasks) -> TResult<()> {
        match tasks.init.as_ref().map(|p| p.phase) {
            Some(Phase::Running) => Ok(()),
            Some(_) => Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", self.id),
            )),
            None => Err(self.not_found("")),
        }
    }

    fn delete_init(&self) -> TResult<DeleteResponse> {
        let _op = self.ops();
        let (phase, ran) = {
            let tasks = self.tasks();
            let init = tasks.init.as_ref().ok_or_else(|| self.not_found(""))?;
            (init.phase, init.ran())
        };
        if phase == Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is running; kill it first", self.id),
            ));
        }
        if !ran {
            // Never run: the runtime holds nothing of it.
            let init = self.tasks().init.take().ok_or_else(|| self.not_found(""))?;
            self.changed.notify_all();
            log::info!("container {} deleted (never started)", self.id);
            return Ok(delete_response(&init));
        }
        self.runc
            .run(
                &["delete", "--force", &self.id],
                Io::Capture { stdin: None },
            )
            .map_err(|e| self.runc_failed(e))?;
        let mut tasks = self.tasks();
        if phase == Phase::Created {
            // runc killed the waiting process; its exit is on the way.
            let (t, _) = self
                .changed
                .wait_timeout_while(tasks, DELETE_REAP_LIMIT, |t| {
                    matches!(t.init.as_ref().map(|p| p.phase), Some(Phase::Created))
                })
                .unwrap_or_else(|p| p.into_inner());
            tasks = t;
        }
        let init = tasks.init.take().ok_or_else(|| self.not_found(""))?;
        tasks.execs.clear();
        drop(tasks);
        self.changed.notify_all();
        let _ = std::fs::remove_file(self.bundle.join("init.pid"));
        log::info!("container {} deleted", self.id);
        Ok(delete_response(&init))
    }

    fn delete_exec(&self, exec_id: &str) -> TResult<DeleteResponse> {
        let mut tasks = self.tasks();
        let exec = tasks
            .execs
            .get(exec_id)
            .ok_or_else(|| self.not_found(exec_id))?;
        if exec.phase == Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} is running; kill it first", self.name(exec_id)),
            ));
        }
        let exec = tasks
            .execs
            .remove(exec_id)
            .ok_or_else(|| self.not_found(exec_id))?;
        drop(tasks);
        self.changed.notify_all();
        Ok(delete_response(&exec))
    }

    fn exit_after_reply(&self) {
        let _ = std::fs::remove_file(&self.socket);
        log::info!("shutting down");
        // The reply is written by ttrpc's own thread after this returns; a
        // moment lets it reach the caller (a caller that misses it sees the
        // connection close, which means the same).
        let spawned = std::thread::Builder::new()
            .name("shutdown".into())
            .stack_size(32 * 1024)
            .spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                std::process::exit(0);
            });
        if spawned.is_err() {
            std::process::exit(0);
        }
    }
}

/// The console socket runc sends the terminal's master to, in the bundle
/// (the shim's working directory): relative, so a long bundle path cannot
/// exceed a socket address.
const CONSOLE_SOCKET: &str = "console.sock";

/// How long runc's connection to the console socket is waited for after
/// `runc run --detach` returned.
const CONSOLE_LIMIT: Duration = Duration::from_secs(5);

impl Shared {
    /// Whether the bundle's config.json asks for a terminal
    /// (`process.terminal`), read without a JSON parser: the key only
    /// appears as `"terminal":true` outside of strings.
    fn spec_wants_terminal(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.bundle.join(SPEC_FILE)) else {
            return false;
        };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains("\"terminal\":true")
    }
}

/// Takes the terminal master runc sent over the console socket, and gives
/// it a window size.
fn receive_console(listener: &UnixListener) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let limit = std::time::Instant::now() + CONSOLE_LIMIT;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= limit {
                    return Err("runc sent no terminal".to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("console socket: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(CONSOLE_LIMIT)))
        .map_err(|e| format!("console socket: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the terminal: {e}"))?;
    let mut fds = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| format!("receiving the terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(got) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process; nothing else owns them.
            fds.extend(
                got.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let master = fds
        .into_iter()
        .next()
        .ok_or_else(|| "runc sent no terminal descriptor".to_string())?;
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        log::warn!(
            "cannot set the terminal's window size: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(master)
}

struct ContainerStdio {
    stdout: Stdio,
    stderr: Stdio,
    streams: Vec<Stream>,
    logs: Vec<SharedLog>,
}

fn delete_response(p: &Proc) -> DeleteResponse {
    let mut resp = DeleteResponse::new();
    resp.pid = p.pid;
    let exit = match p.phase {
        Phase::Stopped(exit) => exit,
        // Never ran, or was not reaped in time: no status of its own.
        _ => Exit {
            status: 255,
            at: SystemTime::now(),
        },
    };
    resp.exit_status = exit.status;
    resp.exited_at = MessageField::some(timestamp(exit.at));
    resp
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

fn read_pid(path: &Path) -> TResult<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        status(
            Code::INTERNAL,
            format!("runc left no pid file {}: {e}", path.display()),
        )
    })?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            status(
                Code::INTERNAL,
                format!("pid file {} holds {text:?}", path.display()),
            )
        })
}

/// The ttrpc face of [`Shared`].
pub struct Service(pub Arc<Shared>);

impl Task for Service {
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let tasks = s.tasks();
        let p = tasks
            .get(&req.exec_id)
            .ok_or_else(|| s.not_found(&req.exec_id))?;
        let mut resp = StateResponse::new();
        resp.id = s.id.clone();
        resp.bundle = s.bundle.to_string_lossy().into_owned();
        resp.pid = p.pid;
        resp.stdout = p.stdout.clone();
        resp.stderr = p.stderr.clone();
        resp.exec_id = req.exec_id.clone();
        resp.status = match p.phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped(exit) => {
                resp.exit_status = exit.status;
                resp.exited_at = MessageField::some(timestamp(exit.at));
                Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TResult<CreateTaskResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let refuse = |what: &str| {
            Err(status(
                Code::INVALID_ARGUMENT,
                format!("container {}: {what}", s.id),
            ))
        };
        if !req.rootfs.is_empty() {
            return refuse("rootfs mounts are not supported: the bundle's rootfs must be ready");
        }
        if !req.checkpoint.is_empty() {
            return refuse("restoring a checkpoint is not supported");
        }
        if !req.bundle.is_empty() && Path::new(&req.bundle) != s.bundle {
            return refuse(&format!(
                "the bundle is {}, not {}",
                s.bundle.display(),
                req.bundle
            ));
        }
        let _op = s.ops();
        if s.tasks().init.is_some() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", s.id),
            ));
        }
        for path in [&req.stdout, &req.stderr] {
            if !path.is_empty() && !Path::new(path).is_absolute() {
                return refuse(&format!("the log path {path:?} must be absolute"));
            }
        }
        // Defined now, run by `start`.
        s.tasks().init = Some(Proc {
            pid: 0,
            phase: Phase::Created,
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            spec: Vec::new(),
            logs: Vec::new(),
            stdin: None,
            console: None,
            pidfd: None,
            pending: Some(req),
        });
        log::info!("container {} created; it runs at start", s.id);
        Ok(CreateTaskResponse::new())
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            s.start_init()?
        } else {
            s.start_exec(&req.exec_id)?
        };
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        if req.exec_id.is_empty() {
            s.delete_init()
        } else {
            s.delete_exec(&req.exec_id)
        }
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let phase = s.tasks().init.as_ref().map(|p| (p.phase, p.ran()));
        let pids = match phase {
            None => return Err(s.not_found("")),
            Some((Phase::Stopped(_), _)) | Some((_, false)) => Vec::new(),
            Some(_) => {
                let out = s
                    .runc
                    .run(
                        &["ps", "--format", "json", &s.id],
                        Io::Capture { stdin: None },
                    )
                    .map_err(|e| s.runc_failed(e))?;
                runc::parse_pids(&out).map_err(|e| status(Code::INTERNAL, e))?
            }
        };
        let mut resp = PidsResponse::new();
        resp.processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo::new();
                info.pid = pid;
                info
            })
            .collect();
        Ok(resp)
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TResult<Empty> {
        Err(status(Code::UNIMPLEMENTED, "pause is not implemented"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TResult<Empty> {
        Err(status(Code::UNIMPLEMENTED, "resume is not implemented"))
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TResult<Empty> {
        Err(status(Code::UNIMPLEMENTED, "checkpoint is not implemented"))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        if req.signal == 0 || req.signal > 64 {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("{}: no signal {}", s.name(&req.exec_id), req.signal),
            ));
        }
        let finished = || {
            status(
                Code::NOT_FOUND,
                format!("{}: process already finished", s.name(&req.exec_id)),
            )
        };
        let (pid, phase) = {
            let tasks = s.tasks();
            let p = tasks
                .get(&req.exec_id)
                .ok_or_else(|| s.not_found(&req.exec_id))?;
            (p.pid, p.phase)
        };
        if let Phase::Stopped(_) = phase {
            return Err(finished());
        }
        if req.exec_id.is_empty() && phase == Phase::Created {
            if let Some(sent) = s.end_unstarted_init(req.signal) {
                return sent;
            }
        }
        if req.exec_id.is_empty() && !req.all {
            match s.signal_init(req.signal as i32) {
                Some(Ok(())) => return Ok(Empty::new()),
                Some(Err(e)) if e.raw_os_error() == Some(libc::ESRCH) => return Err(finished()),
                Some(Err(e)) => {
                    return Err(status(
                        Code::INTERNAL,
                        format!("container {}: kill: {e}", s.id),
                    ))
                }
                None => {}
            }
        }
        if req.exec_id.is_empty() {
            let signal = req.signal.to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([s.id.as_str(), signal.as_str()]);
            if let Err(e) = s.runc.run(&args, Io::Capture { stdin: None }) {
                // It may have exited while runc looked for it.
                let stopped = matches!(
                    s.tasks().init.as_ref().map(|p| p.phase),
                    Some(Phase::Stopped(_)) | None
                );
                return Err(if stopped {
                    finished()
                } else {
                    s.runc_failed(e)
                });
            }
            return Ok(Empty::new());
        }
        if phase == Phase::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} was not started", s.name(&req.exec_id)),
            ));
        }
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("signal {} cannot be sent to an exec", req.signal),
            )
        })?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
            Ok(()) => Ok(Empty::new()),
            Err(nix::errno::Errno::ESRCH) => Err(finished()),
            Err(e) => Err(status(
                Code::INTERNAL,
                format!("{}: kill: {e}", s.name(&req.exec_id)),
            )),
        }
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let refuse = |what: String| Err(status(Code::INVALID_ARGUMENT, what));
        if let Err(e) = check_id(&req.exec_id) {
            return refuse(format!("container {}: exec {e}", s.id));
        }
        let name = s.name(&req.exec_id);
        if req.terminal {
            return refuse(format!("{name}: tty not supported yet"));
        }
        if !req.stdin.is_empty() {
            return refuse(format!("{name}: stdin not supported yet"));
        }
        for path in [&req.stdout, &req.stderr] {
            if !path.is_empty() && !Path::new(path).is_absolute() {
                return refuse(format!("{name}: the output path {path:?} must be absolute"));
            }
        }
        let Some(spec) = req.spec.as_ref().filter(|a| !a.value.is_empty()) else {
            return refuse(format!("{name}: no process spec"));
        };
        let mut tasks = s.tasks();
        s.require_running(&tasks)?;
        if tasks.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{name} already exists"),
            ));
        }
        tasks.execs.insert(
            req.exec_id.clone(),
            Proc {
                pid: 0,
                phase: Phase::Created,
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                spec: spec.value.clone(),
                logs: Vec::new(),
                stdin: None,
                console: None,
                pidfd: None,
                pending: None,
            },
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        use std::os::fd::AsRawFd;
        let s = &self.0;
        s.check_id(&req.id)?;
        let tasks = s.tasks();
        let p = tasks
            .get(&req.exec_id)
            .ok_or_else(|| s.not_found(&req.exec_id))?;
        let Some(console) = &p.console else {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} has no terminal", s.name(&req.exec_id)),
            ));
        };
        let size = libc::winsize {
            ws_row: req.height.min(u16::MAX as u32) as u16,
            ws_col: req.width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
        if unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(status(
                Code::INTERNAL,
                format!(
                    "{}: cannot resize the terminal: {}",
                    s.name(&req.exec_id),
                    std::io::Error::last_os_error()
                ),
            ));
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        match s.tasks().get_mut(&req.exec_id) {
            Some(p) => {
                if req.stdin {
                    p.stdin = None;
                }
                Ok(Empty::new())
            }
            None => Err(s.not_found(&req.exec_id)),
        }
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let Some(resources) = req.resources.as_ref().filter(|a| !a.value.is_empty()) else {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("container {}: update without resources", s.id),
            ));
        };
        let _op = s.ops();
        {
            let tasks = s.tasks();
            match tasks.init.as_ref().map(|p| (p.phase, p.ran())) {
                None => return Err(s.not_found("")),
                Some((Phase::Stopped(_), _)) => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} has exited", s.id),
                    ))
                }
                Some((_, false)) => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} has not started", s.id),
                    ))
                }
                Some(_) => {}
            }
        }
        s.runc
            .run(
                &["update", "--resources", "-", &s.id],
                Io::Capture {
                    stdin: Some(resources.value.clone()),
                },
            )
            .map_err(|e| s.runc_failed(e))?;
        Ok(Empty::new())
    }

    fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let mut tasks = s.tasks();
        loop {
            let p = tasks
                .get(&req.exec_id)
                .ok_or_else(|| s.not_found(&req.exec_id))?;
            if let Phase::Stopped(exit) = p.phase {
                let mut resp = WaitResponse::new();
                resp.exit_status = exit.status;
                resp.exited_at = MessageField::some(timestamp(exit.at));
                return Ok(resp);
            }
            // A caller that went away frees this thread.
            if ctx.cancel_rx.try_recv().is_err_and(|e| e.is_disconnected()) {
                return Err(status(Code::CANCELLED, "the caller is gone"));
            }
            tasks = s
                .changed
                .wait_timeout(tasks, WAIT_POLL)
                .map(|(t, _)| t)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> TResult<StatsResponse> {
        Err(status(Code::UNIMPLEMENTED, "stats: not implemented"))
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = s.tasks().init.as_ref().map(|p| p.pid).unwrap_or(0);
        resp.version = VERSION.to_string();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        let live = matches!(
            s.tasks().init.as_ref().map(|p| p.phase),
            Some(Phase::Created | Phase::Running)
        );
        if live && !req.now {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "container {} is still there; kill and delete it before shutting its shim down",
                    s.id
                ),
            ));
        }
        s.exit_after_reply();
        Ok(Empty::new())
    }
}
