//! The container's processes: the init run, started, signalled, deleted;
//! exec'd processes started and deleted; their exits recorded (the init's
//! on disk first) and told to waiters and berthd.

use super::*;

impl Shared {
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
    pub(super) fn init_exited(
        self: &Arc<Self>,
        pid: u32,
        exit: Exit,
        drained: Option<Arc<Drained>>,
    ) {
        let record = ExitRecord {
            status: exit.status,
            exited_at_unix_nanos: berth_protocol::timefmt::unix_nanos(exit.at),
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
    pub(super) fn process_exited(&self, exec_id: &str, pid: u32, exit: Exit) {
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

    /// Runs the init defined by `create`: `runc run --detach`, with its
    /// stdio, terminal and log copier set up as `create` asked.
    pub(super) fn run_init(self: &Arc<Self>, req: &CreateTaskRequest) -> TResult<u32> {
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
        // A checkpoint is restored (CRIU through the runtime) instead of
        // the program being run afresh.
        let verb: &[&OsStr] = if req.checkpoint.is_empty() {
            &["run".as_ref()]
        } else {
            &[
                "restore".as_ref(),
                "--image-path".as_ref(),
                req.checkpoint.as_ref(),
            ]
        };
        let mut args: Vec<&OsStr> = verb.to_vec();
        args.extend::<[&OsStr; 5]>([
            "--detach".as_ref(),
            "--bundle".as_ref(),
            s.bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
        ]);
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
        let drained = if stdio.streams.is_empty() {
            None
        } else {
            Some(
                io::spawn_copier(stdio.streams, s.taps.clone()).map_err(|e| {
                    status(Code::INTERNAL, format!("cannot start the log copier: {e}"))
                })?,
            )
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

    pub(super) fn start_init(self: &Arc<Self>) -> TResult<u32> {
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

    pub(super) fn start_exec(self: &Arc<Self>, exec_id: &str) -> TResult<u32> {
        let _op = self.ops();
        let (spec, stdout, stderr, stdin_path, terminal) = {
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
            (
                exec.spec.clone(),
                exec.stdout.clone(),
                exec.stderr.clone(),
                exec.stdin_path.clone(),
                exec.terminal,
            )
        };
        let stdin = if stdin_path.is_empty() {
            None
        } else {
            Some(fifo::open(&stdin_path, false).map_err(|e| self.exec_failed(exec_id, e))?)
        };
        // A terminal's output goes to the stdout FIFO, opened before the
        // process exists so that a caller gone leaves nothing running.
        let tty_out = if terminal && !stdout.is_empty() {
            Some(fifo::open(&stdout, true).map_err(|e| self.exec_failed(exec_id, e))?)
        } else {
            None
        };
        let io = ExecIo {
            stdin,
            stdout,
            stderr,
            terminal,
            tty_out,
        };
        let since = self.reaper.mark();
        let (pid, console) = match self.native_plan(exec_id, &spec) {
            Some(process) => self.exec_natively(exec_id, &process, io)?,
            None => self.exec_by_runtime(exec_id, &spec, io)?,
        };
        {
            let mut tasks = self.tasks();
            if let Some(exec) = tasks.execs.get_mut(exec_id) {
                exec.pid = pid;
                exec.phase = Phase::Running;
                exec.spec = Vec::new();
                exec.console = console;
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

    /// Copies between an exec's terminal and its FIFOs.
    fn copy_exec_terminal(&self, exec_id: &str, master: &OwnedFd, io: ExecIo) -> TResult<()> {
        fifo::copy_terminal(&format!("exec-{exec_id}"), master, io.stdin, io.tty_out)
            .map_err(|e| self.exec_failed(exec_id, e))
    }

    fn exec_failed(&self, exec_id: &str, e: crate::error::ShimError) -> ttrpc::Error {
        status(
            Code::FAILED_PRECONDITION,
            format!("{}: {e}", self.name(exec_id)),
        )
    }

    /// The exec's process, when the shim starts it itself; None: the
    /// runtime does.
    fn native_plan(&self, exec_id: &str, spec: &[u8]) -> Option<crate::native::Process> {
        if self.runtime_exec {
            return None;
        }
        let plan = self.native.plan(&self.bundle, spec);
        // The first exec says which way it went, once per container: a
        // probe every few seconds must not fill the log.
        let first = self.native.first_exec();
        match plan {
            Ok(p) => {
                if first {
                    log::info!("container {}: execs start in the shim", self.id);
                }
                Some(p)
            }
            Err(why) => {
                if first {
                    log::info!("{}: through the runtime, as {why}", self.name(exec_id));
                }
                None
            }
        }
    }

    /// Starts the exec in the container without the runtime: see
    /// [`crate::native`].
    fn exec_natively(
        &self,
        exec_id: &str,
        process: &crate::native::Process,
        io: ExecIo,
    ) -> TResult<(u32, Option<OwnedFd>)> {
        let (init_pid, pidfd) = {
            let tasks = self.tasks();
            let init = tasks.init.as_ref().ok_or_else(|| self.not_found(""))?;
            (init.pid, init.pidfd.as_ref().map(|f| f.try_clone()))
        };
        let pidfd = match pidfd {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => {
                return Err(status(
                    Code::INTERNAL,
                    format!("cannot duplicate a fd: {e}"),
                ))
            }
            None => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", self.id),
                ))
            }
        };
        let init = crate::native::Init {
            pid: init_pid,
            pidfd: &pidfd,
        };
        let failed = |e| status(Code::INTERNAL, format!("{}: {e}", self.name(exec_id)));
        if io.terminal {
            let stdio = crate::native::Stdio {
                terminal: true,
                ..Default::default()
            };
            let started = self.native.start(process, init, stdio).map_err(failed)?;
            if let Some(m) = &started.master {
                self.copy_exec_terminal(exec_id, m, io)?;
            }
            return Ok((started.pid, started.master));
        }
        let (out, err) = self.exec_files(exec_id, &io.stdout, &io.stderr)?;
        let stdio = crate::native::Stdio {
            terminal: false,
            stdin: io.stdin.map(OwnedFd::from),
            stdout: out.map(OwnedFd::from),
            stderr: err.map(OwnedFd::from),
        };
        let started = self.native.start(process, init, stdio).map_err(failed)?;
        Ok((started.pid, None))
    }

    /// `runc exec --detach`, with a console socket for a terminal.
    fn exec_by_runtime(
        &self,
        exec_id: &str,
        spec: &[u8],
        io: ExecIo,
    ) -> TResult<(u32, Option<OwnedFd>)> {
        let spec_file = self.bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        // Relative (the bundle is the shim's directory): a socket address
        // holds 108 bytes.
        let console_socket = PathBuf::from(format!("console-{exec_id}.sock"));
        let cleanup = || {
            let _ = std::fs::remove_file(&spec_file);
            let _ = std::fs::remove_file(&pid_file);
            let _ = std::fs::remove_file(&console_socket);
        };
        cleanup();
        write_private(&spec_file, spec).map_err(|e| {
            status(
                Code::INTERNAL,
                format!("{}: cannot write its process spec: {e}", self.name(exec_id)),
            )
        })?;
        let mut args: Vec<&OsStr> = vec![
            "exec".as_ref(),
            "--process".as_ref(),
            spec_file.as_os_str(),
            "--detach".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
        ];
        let (ran, console) = if io.terminal {
            let listener = UnixListener::bind(&console_socket).map_err(|e| {
                status(
                    Code::INTERNAL,
                    format!(
                        "{}: cannot bind the console socket: {e}",
                        self.name(exec_id)
                    ),
                )
            })?;
            args.extend(["--console-socket".as_ref(), console_socket.as_os_str()]);
            args.push(self.id.as_ref());
            let pass = Io::Pass {
                stdin: Stdio::null(),
                stdout: Stdio::null(),
                stderr: Stdio::null(),
            };
            let ran = self.runc.run(&args, pass);
            let master = match &ran {
                Ok(_) => Some(receive_console(&listener).map_err(|e| {
                    status(
                        Code::INTERNAL,
                        format!("{}: the terminal: {e}", self.name(exec_id)),
                    )
                })?),
                Err(_) => None,
            };
            if let Some(m) = &master {
                self.copy_exec_terminal(exec_id, m, io)?;
            }
            (ran, master)
        } else {
            let (out, err) = self.exec_files(exec_id, &io.stdout, &io.stderr)?;
            let to_stdio = |f: Option<File>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
            args.push(self.id.as_ref());
            let pass = Io::Pass {
                stdin: to_stdio(io.stdin),
                stdout: to_stdio(out),
                stderr: to_stdio(err),
            };
            (self.runc.run(&args, pass), None)
        };
        let pid = ran
            .map_err(|e| status(Code::INTERNAL, format!("{}: {e}", self.name(exec_id))))
            .and_then(|_| read_pid(&pid_file));
        cleanup();
        Ok((pid?, console))
    }

    /// A signal for an init that never ran ends it there (as if it had
    /// been killed before its first instruction). None: it ran, or is
    /// being run; the signal goes to the process.
    pub(super) fn end_unstarted_init(&self, signal: u32) -> Option<TResult<Empty>> {
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
    pub(super) fn signal_init(&self, signal: i32) -> Option<std::io::Result<()>> {
        let tasks = self.tasks();
        let fd = tasks.init.as_ref()?.pidfd.as_ref()?;
        Some(crate::pidfd::signal(fd, signal))
    }

    pub(super) fn require_running(&self, tasks: &Tasks) -> TResult<()> {
        match tasks.init.as_ref().map(|p| p.phase) {
            Some(Phase::Running) => Ok(()),
            Some(_) => Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", self.id),
            )),
            None => Err(self.not_found("")),
        }
    }

    pub(super) fn delete_init(&self) -> TResult<DeleteResponse> {
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

    pub(super) fn delete_exec(&self, exec_id: &str) -> TResult<DeleteResponse> {
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

    pub(super) fn exit_after_reply(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(berth_protocol::shim::attach_socket(&self.socket));
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

/// Where an exec's stdio goes, as its request asked.
struct ExecIo {
    stdin: Option<File>,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// With a terminal: the stdout FIFO, opened.
    tty_out: Option<File>,
}

pub(super) fn delete_response(p: &Proc) -> DeleteResponse {
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

pub(super) fn read_pid(path: &Path) -> TResult<u32> {
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
