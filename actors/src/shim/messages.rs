//! Messages the ShimSupervisor answers: tasks (a container's process under
//! its own berth-shim) by container ID.

use crate::Result;
use actix::Message;
use std::path::PathBuf;
use std::time::Duration;

/// Writes the bundle (`config.json` from `spec`), starts the container's
/// shim and creates the task (not started). Answers the task's PID. On
/// failure nothing is left: no shim, no bundle, no runtime state.
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub id: String,
    /// The pod's sandbox ID (the sandbox's own for its pause): a shim
    /// that serves whole pods (containerd's runc-v2) groups by it.
    pub pod: String,
    pub spec: oci_spec::runtime::Spec,
    /// The CRI log file the shim writes; None discards the output.
    pub log_path: Option<PathBuf>,
    /// The runtime handler ("" and "runc" are runc).
    pub runtime_handler: String,
    /// Whether the container gets a stdin held open by its shim.
    pub stdin: bool,
    /// A checkpoint's CRIU images: the task is restored from them at
    /// start instead of run afresh. They are moved into the bundle.
    pub checkpoint: Option<PathBuf>,
}

impl Message for CreateTask {
    type Result = Result<u32>;
}

/// Dumps a running task's processes (CRIU, through the runtime) into
/// `images`, leaving them running.
#[derive(Debug, Clone)]
pub struct CheckpointTask {
    pub id: String,
    pub images: PathBuf,
}

impl Message for CheckpointTask {
    type Result = Result<()>;
}

/// Starts a created task. Answers its PID.
#[derive(Debug, Clone)]
pub struct StartTask {
    pub id: String,
}

impl Message for StartTask {
    type Result = Result<u32>;
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub exited_unix_nanos: i64,
}

/// Sends `signal`, and SIGKILL if the task has not exited after `timeout`.
/// Answers how it ended. A task that already exited (or an unknown one)
/// answers what is known.
#[derive(Debug, Clone)]
pub struct StopTask {
    pub id: String,
    pub signal: i32,
    pub timeout: Duration,
}

impl Message for StopTask {
    type Result = Result<Option<Exit>>;
}

/// Deletes the runtime's container of a task that has exited, keeping its
/// shim, bundle and exit record, as containerd deletes a task at its
/// exit: the removal later has less to do. A task that runs, is being
/// deleted or is gone is left alone; failures are only logged.
#[derive(Debug, Clone)]
pub struct ReapTask {
    pub id: String,
}

impl Message for ReapTask {
    type Result = Result<()>;
}

/// Deletes the task (it must have exited; a running one is killed first),
/// ends its shim and removes the bundle. Idempotent.
#[derive(Debug, Clone)]
pub struct DeleteTask {
    pub id: String,
}

impl Message for DeleteTask {
    type Result = Result<()>;
}

/// A task's process ended: what its shim recorded (status, time, and the
/// note berthd added for a shim that died). Published by the
/// ShimSupervisor to the actors that own tasks; each ignores the others'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExited {
    pub id: String,
    /// The exit code, or 128 + the signal that ended it.
    pub status: u32,
    /// When it ended (0: not known, as for an event with no record).
    pub exited_at_unix_nanos: i64,
    pub note: Option<String>,
}

impl Message for TaskExited {
    type Result = Result<()>;
}

/// The OCI runtime spec a task was created with (its bundle's
/// `config.json`, as JSON), for verbose statuses; None when the task or
/// its bundle is gone.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub id: String,
}

impl Message for TaskSpec {
    type Result = Result<Option<serde_json::Value>>;
}

/// What the shim says of a task now.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub id: String,
}

impl Message for TaskState {
    type Result = Result<TaskInfo>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub pid: u32,
    pub running: bool,
    pub exit: Option<Exit>,
}

/// Runs a command in a running task and waits for it (the work of CRI
/// ExecSync). The output goes to files, not pipes, so a process that
/// leaves children holding its output cannot make the call hang.
#[derive(Debug, Clone)]
pub struct ExecInTask {
    pub id: String,
    pub args: Vec<String>,
    /// Zero: no limit.
    pub timeout: Duration,
}

impl Message for ExecInTask {
    type Result = Result<ExecOutput>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Runs a command in a running task with the client's live stdio (the
/// work of CRI Exec's URL); answers its exit status.
pub struct ExecStream {
    pub id: String,
    pub args: Vec<String>,
    pub io: berth_stream::ProcessIo,
}

impl Message for ExecStream {
    type Result = Result<u32>;
}

/// Joins the client's streams to a running task's own stdio (the work of
/// CRI Attach's URL); answers when the task's output ends or the client
/// goes.
pub struct AttachStream {
    pub id: String,
    pub io: berth_stream::ProcessIo,
    /// The end of the client's stdin closes the task's (`stdin_once`).
    pub close_stdin: bool,
}

impl Message for AttachStream {
    type Result = Result<()>;
}

/// Applies new resources (the OCI LinuxResources JSON) to a running task.
#[derive(Debug, Clone)]
pub struct UpdateTask {
    pub id: String,
    pub resources_json: Vec<u8>,
}

impl Message for UpdateTask {
    type Result = Result<()>;
}

/// Makes the task's shim reopen its log file (log rotation): SIGUSR1.
#[derive(Debug, Clone)]
pub struct ReopenLog {
    pub id: String,
}

impl Message for ReopenLog {
    type Result = Result<()>;
}
