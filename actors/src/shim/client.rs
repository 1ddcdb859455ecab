//! The daemon's side of a berth-shim: `containerd.task.v3.Task` over ttrpc
//! on the shim's unix socket, with berth's types in and out and every
//! failure turned into a [`crate::Error`] that names the container.
//!
//! Errors: NotFound for an unknown container or exec (or a process that
//! already finished, for `kill`), Unavailable when the shim cannot be
//! reached or the connection drops, DeadlineExceeded when a call takes
//! longer than the client's timeout, the shim's own InvalidArgument,
//! AlreadyExists and FailedPrecondition as they are, Internal otherwise.
//!
//! The client is cheap to clone (one connection underneath) and needs a
//! tokio runtime.

use crate::{Error, Result};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Client;
use containerd_shim_protos::ttrpc::{self, Code};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a call may take unless the client is given another limit.
/// runc verbs usually take tens of milliseconds; a loaded node can be slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The type URL of the OCI `LinuxResources` JSON in `update`.
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// The type URL of the OCI `Process` JSON in `exec`.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A process's status as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

/// How a process ended: its exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub exited_at: SystemTime,
}

/// What `state` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// 0 for an exec that was not started.
    pub pid: u32,
    pub status: TaskStatus,
    /// Set once the process has stopped.
    pub exit: Option<ExitInfo>,
}

/// What `delete` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub pid: u32,
    pub exit: ExitInfo,
}

/// What `connect_info` (the Connect call) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimInfo {
    pub shim_pid: u32,
    pub task_pid: u32,
    pub version: String,
}

/// The container to create in the shim's bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOpts {
    /// The bundle the shim was started with (checked by the shim).
    pub bundle: PathBuf,
    /// The CRI log file for stdout (absolute); `None` discards the output.
    pub stdout: Option<PathBuf>,
    /// The CRI log file for stderr; `None` means the stdout file.
    pub stderr: Option<PathBuf>,
    /// Whether the container's stdin is a pipe the shim holds open (else
    /// /dev/null; a terminal container's stdin is its terminal).
    pub stdin: bool,
    /// CRIU images to restore the container from at start.
    pub checkpoint: Option<PathBuf>,
    /// A FIFO the container reads its stdin from (v2 shims; berth-shim
    /// holds a pipe of its own, see `stdin`).
    pub stdin_fifo: Option<PathBuf>,
    /// The container gets a terminal (v2 shims make it from this).
    pub terminal: bool,
    /// The shim's options: their type URL and encoding.
    pub options: Option<(String, Vec<u8>)>,
}

/// The `stdin` of a CreateTaskRequest asking the shim for a stdin pipe it
/// holds open.
pub const STDIN_PIPE: &str = "pipe";

/// A process to run in the container (`runc exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOpts {
    pub exec_id: String,
    /// The OCI runtime-spec `Process`, as JSON.
    pub process_json: Vec<u8>,
    /// Files (absolute) that get the process's raw stdout and stderr; they
    /// may be the same file. `None` discards.
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// A FIFO the process reads its stdin from.
    pub stdin: Option<PathBuf>,
    /// The process gets a terminal; its output goes to `stdout`.
    pub terminal: bool,
}

/// Which task service a shim serves: berth-shim's `containerd.task.v3`,
/// or `containerd.task.v2` of containerd's runtime v2 shims (the same
/// messages under another name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskApi {
    #[default]
    V3,
    V2,
}

impl TaskApi {
    fn service(self) -> &'static str {
        match self {
            TaskApi::V3 => "containerd.task.v3.Task",
            TaskApi::V2 => "containerd.task.v2.Task",
        }
    }
}

/// A connection to the shim of one container.
#[derive(Clone)]
pub struct ShimClient {
    id: String,
    socket: PathBuf,
    client: Client,
    api: TaskApi,
    timeout: Duration,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient")
            .field("id", &self.id)
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn to_system_time(ts: &MessageField<Timestamp>) -> SystemTime {
    match ts.as_ref() {
        Some(t) if t.seconds >= 0 => {
            UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
        }
        _ => UNIX_EPOCH,
    }
}

fn path_string(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn exec_field(e: Option<&str>) -> String {
    e.unwrap_or_default().to_string()
}

/// Turns a ttrpc failure into berth's error, naming the container.
fn map_error(id: &str, what: &str, e: ttrpc::Error) -> Error {
    let msg = |detail: &str| format!("shim of container {id}: {what}: {detail}");
    match e {
        ttrpc::Error::RpcStatus(status) => {
            let detail = status.message();
            match status.code() {
                Code::NOT_FOUND => Error::NotFound(msg(detail)),
                Code::ALREADY_EXISTS => Error::AlreadyExists(msg(detail)),
                Code::INVALID_ARGUMENT => Error::InvalidArgument(msg(detail)),
                Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg(detail)),
                Code::DEADLINE_EXCEEDED => Error::DeadlineExceeded(msg(detail)),
                Code::UNAVAILABLE => Error::Unavailable(msg(detail)),
                _ => Error::Internal(msg(detail)),
            }
        }
        ttrpc::Error::Socket(_)
        | ttrpc::Error::LocalClosed
        | ttrpc::Error::RemoteClosed
        | ttrpc::Error::Eof
        | ttrpc::Error::Nix(_) => Error::Unavailable(msg(&format!("the shim is gone ({e})"))),
        ttrpc::Error::Others(ref m) if m.contains("deadline") => {
            Error::DeadlineExceeded(msg(&e.to_string()))
        }
        // The connection's writer ends when the socket does.
        ttrpc::Error::Others(ref m)
            if m.contains("Writer task failed") || m.contains("channel closed") =>
        {
            Error::Unavailable(msg(&format!("the shim is gone ({e})")))
        }
        other => Error::Internal(msg(&other.to_string())),
    }
}

impl ShimClient {
    /// Connects to the berth-shim of container `id` listening on `socket`.
    pub async fn connect(id: &str, socket: &Path) -> Result<ShimClient> {
        Self::connect_api(id, socket, TaskApi::V3).await
    }

    /// Connects to the shim of container `id` that serves `api` on `socket`.
    pub async fn connect_api(id: &str, socket: &Path, api: TaskApi) -> Result<ShimClient> {
        let address = format!("unix://{}", socket.display());
        let connecting = Client::connect(&address);
        let client = match tokio::time::timeout(DEFAULT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "shim of container {id}: cannot connect to {}: {e}",
                    socket.display()
                )))
            }
            Err(_) => {
                return Err(Error::DeadlineExceeded(format!(
                    "shim of container {id}: connecting to {} took over {}s",
                    socket.display(),
                    DEFAULT_TIMEOUT.as_secs()
                )))
            }
        };
        Ok(ShimClient {
            id: id.to_string(),
            socket: socket.to_path_buf(),
            client,
            api,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same connection with another limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> ShimClient {
        self.timeout = timeout;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs one call under `limit` (none for `None`).
    async fn call<T, F>(&self, what: &str, limit: Option<Duration>, fut: F) -> Result<T>
    where
        F: Future<Output = ttrpc::Result<T>>,
    {
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "shim of container {}: {what}: no answer in {}s",
                        self.id,
                        limit.as_secs_f64()
                    )))
                }
            },
            None => fut.await,
        };
        result.map_err(|e| map_error(&self.id, what, e))
    }

    /// One unary call of the task service.
    async fn rpc<Q, A>(&self, method: &str, req: &Q) -> ttrpc::Result<A>
    where
        Q: Message,
        A: Message,
    {
        let payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encoding {method}: {e}")))?;
        let mut request = ttrpc::Request::new();
        request.service = self.api.service().to_string();
        request.method = method.to_string();
        request.payload = payload;
        let answer = self.client.request(request).await?;
        A::parse_from_bytes(&answer.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decoding {method}: {e}")))
    }

    /// Defines the container's task (the shim runs it at `start`);
    /// answers its init's pid, 0 until it runs.
    pub async fn create(&self, opts: &CreateOpts) -> Result<u32> {
        let mut req = api::CreateTaskRequest::new();
        req.id = self.id.clone();
        req.bundle = opts.bundle.to_string_lossy().into_owned();
        req.stdout = path_string(&opts.stdout);
        req.stderr = path_string(&opts.stderr);
        if let Some(fifo) = &opts.stdin_fifo {
            req.stdin = fifo.to_string_lossy().into_owned();
        } else if opts.stdin {
            req.stdin = STDIN_PIPE.to_string();
        }
        req.terminal = opts.terminal;
        if let Some((type_url, value)) = &opts.options {
            let mut any = Any::new();
            any.type_url = type_url.clone();
            any.value = value.clone();
            req.options = MessageField::some(any);
        }
        req.checkpoint = path_string(&opts.checkpoint);
        let resp = self
            .call(
                "create",
                Some(self.timeout),
                self.rpc::<_, api::CreateTaskResponse>("Create", &req),
            )
            .await?;
        Ok(resp.pid)
    }

    /// Starts the container (`exec_id` None) or a created exec; returns its pid.
    pub async fn start(&self, exec_id: Option<&str>) -> Result<u32> {
        let mut req = api::StartRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        let resp = self
            .call(
                "start",
                Some(self.timeout),
                self.rpc::<_, api::StartResponse>("Start", &req),
            )
            .await?;
        Ok(resp.pid)
    }

    pub async fn state(&self, exec_id: Option<&str>) -> Result<TaskState> {
        let mut req = api::StateRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        let resp = self
            .call(
                "state",
                Some(self.timeout),
                self.rpc::<_, api::StateResponse>("State", &req),
            )
            .await?;
        let status = match resp.status.enum_value() {
            Ok(api::Status::CREATED) => TaskStatus::Created,
            Ok(api::Status::RUNNING) => TaskStatus::Running,
            Ok(api::Status::STOPPED) => TaskStatus::Stopped,
            Ok(api::Status::PAUSED) => TaskStatus::Paused,
            Ok(api::Status::PAUSING) => TaskStatus::Pausing,
            Ok(api::Status::UNKNOWN) | Err(_) => TaskStatus::Unknown,
        };
        let exit = (status == TaskStatus::Stopped).then(|| ExitInfo {
            status: resp.exit_status,
            exited_at: to_system_time(&resp.exited_at),
        });
        Ok(TaskState {
            pid: resp.pid,
            status,
            exit,
        })
    }

    /// Dumps the container's processes into `images`; they run on. No
    /// time limit of berth's own: CRIU takes as long as memory needs.
    pub async fn checkpoint(&self, images: &Path) -> Result<()> {
        let mut req = api::CheckpointTaskRequest::new();
        req.id = self.id.clone();
        req.path = images.to_string_lossy().into_owned();
        self.call(
            "checkpoint",
            None,
            self.rpc::<_, api::Empty>("Checkpoint", &req),
        )
        .await?;
        Ok(())
    }

    /// Sends `signal`; `all` signals every process of the container.
    pub async fn kill(&self, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let mut req = api::KillRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        req.signal = signal;
        req.all = all;
        self.call(
            "kill",
            Some(self.timeout),
            self.rpc::<_, api::Empty>("Kill", &req),
        )
        .await?;
        Ok(())
    }

    /// Gives a process's terminal a new size.
    pub async fn resize_pty(&self, exec_id: Option<&str>, width: u32, height: u32) -> Result<()> {
        let mut req = api::ResizePtyRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        req.width = width;
        req.height = height;
        self.call(
            "resize_pty",
            Some(self.timeout),
            self.rpc::<_, api::Empty>("ResizePty", &req),
        )
        .await?;
        Ok(())
    }

    /// Waits until the process exits, for at most `limit` (`None`: as long
    /// as it takes).
    pub async fn wait(&self, exec_id: Option<&str>, limit: Option<Duration>) -> Result<ExitInfo> {
        let mut req = api::WaitRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        let resp = self
            .call(
                "wait",
                limit,
                self.rpc::<_, api::WaitResponse>("Wait", &req),
            )
            .await?;
        Ok(ExitInfo {
            status: resp.exit_status,
            exited_at: to_system_time(&resp.exited_at),
        })
    }

    /// Deletes a stopped (or never started) container, with its runtime
    /// state, or an exec.
    pub async fn delete(&self, exec_id: Option<&str>) -> Result<Deleted> {
        let mut req = api::DeleteRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        let resp = self
            .call(
                "delete",
                Some(self.timeout),
                self.rpc::<_, api::DeleteResponse>("Delete", &req),
            )
            .await?;
        Ok(Deleted {
            pid: resp.pid,
            exit: ExitInfo {
                status: resp.exit_status,
                exited_at: to_system_time(&resp.exited_at),
            },
        })
    }

    /// The pids of the container's processes.
    pub async fn pids(&self) -> Result<Vec<u32>> {
        let mut req = api::PidsRequest::new();
        req.id = self.id.clone();
        let resp = self
            .call(
                "pids",
                Some(self.timeout),
                self.rpc::<_, api::PidsResponse>("Pids", &req),
            )
            .await?;
        Ok(resp.processes.iter().map(|p| p.pid).collect())
    }

    /// Applies new resources: the OCI `LinuxResources` as JSON.
    pub async fn update(&self, resources_json: &[u8]) -> Result<()> {
        let mut any = Any::new();
        any.type_url = RESOURCES_TYPE_URL.to_string();
        any.value = resources_json.to_vec();
        let mut req = api::UpdateTaskRequest::new();
        req.id = self.id.clone();
        req.resources = MessageField::some(any);
        self.call(
            "update",
            Some(self.timeout),
            self.rpc::<_, api::Empty>("Update", &req),
        )
        .await?;
        Ok(())
    }

    /// Registers a process to run in the container; `start` runs it.
    pub async fn exec(&self, opts: &ExecOpts) -> Result<()> {
        let mut any = Any::new();
        any.type_url = PROCESS_TYPE_URL.to_string();
        any.value = opts.process_json.clone();
        let mut req = api::ExecProcessRequest::new();
        req.id = self.id.clone();
        req.exec_id = opts.exec_id.clone();
        req.stdout = path_string(&opts.stdout);
        req.stderr = path_string(&opts.stderr);
        req.stdin = path_string(&opts.stdin);
        req.terminal = opts.terminal;
        req.spec = MessageField::some(any);
        self.call(
            "exec",
            Some(self.timeout),
            self.rpc::<_, api::Empty>("Exec", &req),
        )
        .await?;
        Ok(())
    }

    pub async fn close_io(&self, exec_id: Option<&str>) -> Result<()> {
        let mut req = api::CloseIORequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_field(exec_id);
        req.stdin = true;
        self.call(
            "close_io",
            Some(self.timeout),
            self.rpc::<_, api::Empty>("CloseIO", &req),
        )
        .await?;
        Ok(())
    }

    /// The Connect call: the shim's and the container's pids.
    pub async fn connect_info(&self) -> Result<ShimInfo> {
        let mut req = api::ConnectRequest::new();
        req.id = self.id.clone();
        let resp = self
            .call(
                "connect",
                Some(self.timeout),
                self.rpc::<_, api::ConnectResponse>("Connect", &req),
            )
            .await?;
        Ok(ShimInfo {
            shim_pid: resp.shim_pid,
            task_pid: resp.task_pid,
            version: resp.version,
        })
    }

    /// Asks the shim to exit. It refuses (FailedPrecondition) while its
    /// container exists, unless `now`. A shim that is already gone, or that
    /// closes the connection before its reply arrives, has done what was
    /// asked.
    pub async fn shutdown(&self, now: bool) -> Result<()> {
        let mut req = api::ShutdownRequest::new();
        req.id = self.id.clone();
        req.now = now;
        match self
            .call(
                "shutdown",
                Some(self.timeout),
                self.rpc::<_, api::Empty>("Shutdown", &req),
            )
            .await
        {
            Ok(_) | Err(Error::Unavailable(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: Code) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, "detail"))
    }

    #[test]
    fn errors_keep_their_kind_and_name_the_container() {
        let e = map_error("c1", "kill", rpc(Code::NOT_FOUND));
        assert_eq!(
            e,
            Error::NotFound("shim of container c1: kill: detail".into())
        );
        assert!(matches!(
            map_error("c1", "exec", rpc(Code::ALREADY_EXISTS)),
            Error::AlreadyExists(_)
        ));
        assert!(matches!(
            map_error("c1", "start", rpc(Code::FAILED_PRECONDITION)),
            Error::FailedPrecondition(_)
        ));
        assert!(matches!(
            map_error("c1", "create", rpc(Code::INTERNAL)),
            Error::Internal(_)
        ));
        assert!(matches!(
            map_error("c1", "stats", rpc(Code::UNIMPLEMENTED)),
            Error::Internal(_)
        ));
        for gone in [
            ttrpc::Error::RemoteClosed,
            ttrpc::Error::LocalClosed,
            ttrpc::Error::Socket("reset".into()),
        ] {
            let e = map_error("c1", "state", gone);
            assert!(
                matches!(&e, Error::Unavailable(m) if m.contains("c1")),
                "{e:?}"
            );
        }
        assert!(matches!(
            map_error(
                "c1",
                "wait",
                ttrpc::Error::Others("Request deadline elapsed".into())
            ),
            Error::DeadlineExceeded(_)
        ));
    }

    #[test]
    fn timestamps_convert() {
        let mut ts = Timestamp::new();
        ts.seconds = 1_700_000_000;
        ts.nanos = 5;
        assert_eq!(
            to_system_time(&MessageField::some(ts)),
            UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        assert_eq!(to_system_time(&MessageField::none()), UNIX_EPOCH);
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = ShimClient::connect("c9", &dir.path().join("none.sock"))
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("c9")),
            "{e:?}"
        );
    }
}
