//! The `containerd.task.v3.Task` service: each ttrpc call checked and
//! handed to [`Shared`].

use super::*;

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
        if !req.checkpoint.is_empty() && !Path::new(&req.checkpoint).is_dir() {
            return refuse(&format!(
                "the checkpoint {:?} to restore is not a directory",
                req.checkpoint
            ));
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
            stdin_path: String::new(),
            terminal: false,
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

    /// Dumps the running container's processes with the runtime's
    /// `checkpoint` (CRIU) into `path`, leaving them running.
    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TResult<Empty> {
        let s = &self.0;
        s.check_id(&req.id)?;
        if !Path::new(&req.path).is_absolute() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("checkpoint path {:?} is not absolute", req.path),
            ));
        }
        let _op = s.ops();
        s.require_running(&s.tasks())?;
        s.runc
            .run(
                &[
                    "checkpoint",
                    "--leave-running",
                    "--image-path",
                    &req.path,
                    &s.id,
                ],
                Io::Capture { stdin: None },
            )
            .map_err(|e| s.runc_failed(e))?;
        log::info!("container {} checkpointed to {}", s.id, req.path);
        Ok(Empty::new())
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
        for path in [&req.stdin, &req.stdout, &req.stderr] {
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
                stdin_path: req.stdin.clone(),
                terminal: req.terminal,
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
