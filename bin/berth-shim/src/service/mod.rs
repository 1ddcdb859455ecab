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

mod attach;
mod fifo;
mod process;
mod stdio;
mod task;

use stdio::*;
pub use task::Service;

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

pub(super) type TResult<T> = ttrpc::Result<T>;

/// How long an exit waits for the container's output to drain before it is
/// reported anyway (a process outside the container's pid namespace may
/// hold the pipes open).
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long `delete` of a created (never started) container waits for the
/// killed process to be reaped.
pub(super) const DELETE_REAP_LIMIT: Duration = Duration::from_secs(2);

/// How often a blocked `wait` checks that its caller is still connected.
pub(super) const WAIT_POLL: Duration = Duration::from_secs(1);

pub const VERSION: &str = concat!("berth-shim ", env!("CARGO_PKG_VERSION"));

pub(super) fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Created,
    Running,
    Stopped(Exit),
}

pub(super) struct Proc {
    /// 0 until the process exists (an exec before `start`).
    pub(super) pid: u32,
    pub(super) phase: Phase,
    pub(super) stdout: String,
    pub(super) stderr: String,
    /// An exec's stdin (a FIFO the caller writes), if it has one.
    pub(super) stdin_path: String,
    /// An exec that runs on a terminal of its own.
    pub(super) terminal: bool,
    /// An exec's process spec (JSON), until it is started.
    pub(super) spec: Vec<u8>,
    /// The init's log files, reopened on SIGUSR1.
    pub(super) logs: Vec<SharedLog>,
    /// The write end of the init's stdin pipe, held open until `close_io`
    /// or `delete`, so that the container reads no end-of-file.
    pub(super) stdin: Option<OwnedFd>,
    /// The master of the init's terminal, kept open while it lives.
    pub(super) console: Option<OwnedFd>,
    /// The init's pidfd: signals reach it without a runtime call, and
    /// never another process that got its pid.
    pub(super) pidfd: Option<OwnedFd>,
    /// The init's create request, kept until `start` runs it (`runc run
    /// --detach`: one runtime call instead of create and start).
    pub(super) pending: Option<CreateTaskRequest>,
}

impl Proc {
    /// Whether the runtime holds the init (it has a pid once run): only
    /// then do kill, delete, pids and update ask the runtime.
    fn ran(&self) -> bool {
        self.pid != 0
    }
}

#[derive(Default)]
pub(super) struct Tasks {
    pub(super) init: Option<Proc>,
    pub(super) execs: HashMap<String, Proc>,
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
    pub(super) id: String,
    pub(super) bundle: PathBuf,
    pub(super) socket: PathBuf,
    pub(super) runc: Runc,
    pub(super) reaper: Arc<Reaper>,
    pub(super) events: Option<Publisher>,
    pub(super) tasks: Mutex<Tasks>,
    pub(super) changed: Condvar,
    pub(super) ops: Mutex<()>,
    /// Attaches to the container's output.
    pub(super) taps: crate::io::SharedTaps,
    /// Exec'd processes started by the shim itself.
    pub(super) native: crate::native::Native,
    /// Every exec goes through the runtime (`--runtime-exec`).
    pub(super) runtime_exec: bool,
}

impl Shared {
    pub fn new(config: ShimArgs, reaper: Arc<Reaper>) -> Arc<Shared> {
        let runc = Runc::new(
            config.runtime,
            config.runtime_root,
            config.bundle.join(RUNTIME_LOG_FILE),
            reaper.clone(),
            config.runtime_timeout.unwrap_or(crate::runc::RUN_TIMEOUT),
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
            taps: Default::default(),
            native: Default::default(),
            runtime_exec: config.runtime_exec,
        })
    }

    pub(super) fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn ops(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How errors name the process: the container, or one exec in it.
    pub(super) fn name(&self, exec_id: &str) -> String {
        if exec_id.is_empty() {
            format!("container {}", self.id)
        } else {
            format!("exec {exec_id} in container {}", self.id)
        }
    }

    pub(super) fn check_id(&self, id: &str) -> TResult<()> {
        if id == self.id {
            Ok(())
        } else {
            Err(status(
                Code::NOT_FOUND,
                format!("container {id} not found: this shim serves {}", self.id),
            ))
        }
    }

    pub(super) fn not_found(&self, exec_id: &str) -> ttrpc::Error {
        status(Code::NOT_FOUND, format!("{} not found", self.name(exec_id)))
    }

    pub(super) fn runc_failed(&self, e: runc::RuncError) -> ttrpc::Error {
        status(Code::INTERNAL, format!("container {}: {e}", self.id))
    }
}
