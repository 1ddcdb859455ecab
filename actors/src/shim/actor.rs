//! The ShimSupervisor shell: routes messages to the verbs (task.rs). Shims
//! are started and spoken to off the actor; the actor journals which shims
//! exist and keeps a connection to each.

use super::client::ShimClient;
use super::health::{ListShims, ShimHealth};
use super::messages::*;
use super::recover::{RecoverShims, ShimReport};
use super::store::ShimRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Reply, Shell, Subsystem};
use crate::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

pub type ShimSupervisor = Shell<Shims>;

/// An OCI runtime a handler names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The binary (a name looked up in PATH, or a path).
    pub binary: PathBuf,
    /// Its `--root` (state of its containers).
    pub root: PathBuf,
    /// Whether the shim may start exec'd processes itself.
    pub native_exec: bool,
    /// How long one runtime command may run.
    pub timeout: std::time::Duration,
    /// A containerd runtime v2 shim that runs the handler's containers
    /// (driving `binary` at `root`) instead of berth-shim.
    pub v2_shim: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfig {
    /// Bundles go under `<state>/shims/<id>`, sockets under `<state>/s/`.
    pub state: PathBuf,
    /// The berth-shim binary.
    pub shim_binary: PathBuf,
    /// Runtime handlers: "" is "runc".
    pub runtimes: BTreeMap<String, Runtime>,
    /// berthd's events endpoint, where shims publish exits.
    pub events_socket: Option<PathBuf>,
    /// ExecSync calls running at once on the node; more wait their turn.
    pub max_exec_sync: usize,
}

/// Where a task's bundle (and its shim's exit record) lives.
pub fn bundle_dir(state: &std::path::Path, id: &str) -> PathBuf {
    state.join("shims").join(id)
}

impl ShimConfig {
    pub(super) fn bundle(&self, id: &str) -> PathBuf {
        bundle_dir(&self.state, id)
    }

    /// Sockets must fit sun_path (108 bytes): a short name per container.
    pub(super) fn socket(&self, id: &str) -> PathBuf {
        let short = &id[..id.len().min(32)];
        self.state.join("s").join(format!("{short}.sock"))
    }
}

/// What the ShimSupervisor starts with.
#[derive(Clone)]
pub struct ShimDeps {
    pub config: Arc<ShimConfig>,
    /// Where task exits are published (see exits.rs).
    pub sinks: super::exits::ExitSinks,
    /// Turns of ExecSync (`max_exec_sync`), kept across restarts.
    pub exec_turns: Arc<tokio::sync::Semaphore>,
    /// The stdio berthd holds for tasks under v2 shims, kept across
    /// restarts of the actor (output flows on meanwhile).
    pub v2_io: super::v2::IoTable,
}

pub struct Shims {
    pub(super) records: Table<ShimRecord>,
    pub(super) config: Arc<ShimConfig>,
    pub(super) sinks: super::exits::ExitSinks,
    /// Tasks whose exit this incarnation has published.
    pub(super) published: BTreeSet<String>,
    /// Connections, made when first needed (also after a restart).
    pub(super) clients: HashMap<String, ShimClient>,
    /// Tasks whose dead shim was already cleaned up after.
    pub(super) buried: BTreeSet<String>,
    /// Tasks being deleted: their shims' end is expected.
    pub(super) deleting: BTreeSet<String>,
    pub(super) exec_turns: Arc<tokio::sync::Semaphore>,
    /// Pidfds of the shims the watcher found alive, by task, with the
    /// pid each was opened for: one poll a second then tells which died.
    pub(super) pidfds: HashMap<String, (u32, std::os::fd::OwnedFd)>,
    pub(super) v2_io: super::v2::IoTable,
}

impl Subsystem for Shims {
    const NAME: &'static str = "shim";
    type Deps = ShimDeps;

    fn rebuild(deps: &ShimDeps, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Shims {
            records: Table::open(journal, Self::NAME)?,
            config: deps.config.clone(),
            sinks: deps.sinks.clone(),
            published: BTreeSet::new(),
            clients: HashMap::new(),
            buried: BTreeSet::new(),
            deleting: BTreeSet::new(),
            exec_turns: deps.exec_turns.clone(),
            pidfds: HashMap::new(),
            v2_io: deps.v2_io.clone(),
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }

    fn started(&mut self, ctx: &mut actix::Context<ShimSupervisor>) {
        self.watch(ctx);
        self.look_for_exits(ctx);
    }

    fn restarted(&mut self, ctx: &mut actix::Context<ShimSupervisor>) {
        self.recover(false).detach(ctx, "shim recovery");
    }
}

impl Handles<super::exits::ExitReported> for Shims {
    type Output = ();

    fn handle(&mut self, msg: super::exits::ExitReported, cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.exit_reported(msg, cx.ctx)
    }
}

impl Handles<super::exits::ExitsOf> for Shims {
    type Output = BTreeMap<String, TaskExited>;

    fn handle(
        &mut self,
        msg: super::exits::ExitsOf,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, BTreeMap<String, TaskExited>> {
        self.exits_of(msg.ids)
    }
}

impl Handles<RecoverShims> for Shims {
    type Output = ShimReport;

    fn handle(&mut self, _msg: RecoverShims, _cx: Cx<'_, Self>) -> Reply<Self, ShimReport> {
        self.recover(true)
    }
}

impl Handles<ListShims> for Shims {
    type Output = Vec<ShimHealth>;

    fn handle(&mut self, _msg: ListShims, _cx: Cx<'_, Self>) -> Reply<Self, Vec<ShimHealth>> {
        Reply::Now(Ok(self.list_shims()))
    }
}

impl Handles<CreateTask> for Shims {
    type Output = u32;

    fn handle(&mut self, msg: CreateTask, _cx: Cx<'_, Self>) -> Reply<Self, u32> {
        self.create_task(msg)
    }
}

impl Handles<StartTask> for Shims {
    type Output = u32;

    fn handle(&mut self, msg: StartTask, _cx: Cx<'_, Self>) -> Reply<Self, u32> {
        self.start_task(msg.id)
    }
}

impl Handles<CheckpointTask> for Shims {
    type Output = ();

    fn handle(&mut self, msg: CheckpointTask, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.checkpoint_task(msg)
    }
}

impl Handles<StopTask> for Shims {
    type Output = Option<Exit>;

    fn handle(&mut self, msg: StopTask, _cx: Cx<'_, Self>) -> Reply<Self, Option<Exit>> {
        self.stop_task(msg)
    }
}

impl Handles<DeleteTask> for Shims {
    type Output = ();

    fn handle(&mut self, msg: DeleteTask, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.delete_task(msg.id)
    }
}

impl Handles<ReapTask> for Shims {
    type Output = ();

    fn handle(&mut self, msg: ReapTask, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.reap_task(msg.id)
    }
}

impl Handles<TaskState> for Shims {
    type Output = TaskInfo;

    fn handle(&mut self, msg: TaskState, _cx: Cx<'_, Self>) -> Reply<Self, TaskInfo> {
        self.task_state(msg.id)
    }
}

impl Handles<TaskSpec> for Shims {
    type Output = Option<serde_json::Value>;

    fn handle(
        &mut self,
        msg: TaskSpec,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Option<serde_json::Value>> {
        self.task_spec(msg.id)
    }
}

impl Handles<ExecInTask> for Shims {
    type Output = ExecOutput;

    fn handle(&mut self, msg: ExecInTask, _cx: Cx<'_, Self>) -> Reply<Self, ExecOutput> {
        self.exec_in_task(msg)
    }
}

impl Handles<ExecStream> for Shims {
    type Output = u32;

    fn handle(&mut self, msg: ExecStream, _cx: Cx<'_, Self>) -> Reply<Self, u32> {
        self.exec_stream(msg)
    }
}

impl Handles<AttachStream> for Shims {
    type Output = ();

    fn handle(&mut self, msg: AttachStream, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.attach_stream(msg)
    }
}

impl Handles<UpdateTask> for Shims {
    type Output = ();

    fn handle(&mut self, msg: UpdateTask, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.update_task(msg)
    }
}

impl Handles<ReopenLog> for Shims {
    type Output = ();

    fn handle(&mut self, msg: ReopenLog, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        Reply::Now(self.reopen_log(&msg.id))
    }
}
