//! The ContainerActor shell: routes messages to the verbs (create.rs,
//! lifecycle.rs, status.rs). The work runs off the actor, through the
//! image, sandbox and shim actors; the actor journals each state change
//! before it answers.

use super::messages::*;
use super::store::ContainerRecord;
use crate::image::Images;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handle, Handles, Reply, Shell, Subsystem};
use crate::sandbox::messages::TaskExited;
use crate::sandbox::Sandboxes;
use crate::shim::Shims;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

pub type ContainerActor = Shell<Containers>;

/// How often exits that came with no event are looked for.
const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub struct ContainerDeps {
    pub sandbox: Handle<Sandboxes>,
    pub image: Handle<Images>,
    pub shim: Handle<Shims>,
    /// berth's state directory (bundles, to read exit records).
    pub state: PathBuf,
    /// Where logs go for pods that name no log directory.
    pub default_log_dir: PathBuf,
    /// Where containers' writable layers are (`<dir>/<id>/upper`).
    pub rootfs_dir: PathBuf,
    /// What this node offers containers (capabilities, hugetlb, rro).
    pub host: Arc<crate::host::HostFacts>,
}

pub struct Containers {
    pub(super) records: Table<ContainerRecord>,
    pub(super) deps: ContainerDeps,
    /// Names reserved by containers being created, and their IDs.
    pub(super) reserved: BTreeMap<String, String>,
    /// Containers with a start, stop or remove under way.
    pub(super) busy: BTreeSet<String>,
}

impl Subsystem for Containers {
    const NAME: &'static str = "container";
    type Deps = ContainerDeps;

    fn rebuild(deps: &ContainerDeps, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Containers {
            records: Table::open(journal, Self::NAME)?,
            deps: deps.clone(),
            reserved: BTreeMap::new(),
            busy: BTreeSet::new(),
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }

    fn started(&mut self, ctx: &mut actix::Context<ContainerActor>) {
        use actix::AsyncContext;
        ctx.run_interval(SETTLE_EVERY, |act, _| {
            if let Some(me) = act.state_mut() {
                me.settle_running();
            }
        });
    }

    fn restarted(&mut self, ctx: &mut actix::Context<ContainerActor>) {
        self.recover().detach(ctx, "container recovery");
    }
}

impl Handles<super::recover::RecoverContainers> for Containers {
    type Output = crate::kernel::Recovered;

    fn handle(
        &mut self,
        _msg: super::recover::RecoverContainers,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::kernel::Recovered> {
        self.recover()
    }
}

impl Handles<CreateContainer> for Containers {
    type Output = String;

    fn handle(&mut self, msg: CreateContainer, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        self.create(msg)
    }
}

impl Handles<StartContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: StartContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.start(msg.id)
    }
}

impl Handles<StopContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: StopContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.stop(msg.id, msg.timeout, false)
    }
}

impl Handles<RemoveContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: RemoveContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.stop(msg.id, std::time::Duration::ZERO, true)
    }
}

impl Handles<ContainerStatus> for Containers {
    type Output = ContainerRecord;

    fn handle(&mut self, msg: ContainerStatus, _cx: Cx<'_, Self>) -> Reply<Self, ContainerRecord> {
        Reply::Now(self.status(&msg.id))
    }
}

impl Handles<ListContainers> for Containers {
    type Output = Vec<ContainerRecord>;

    fn handle(
        &mut self,
        msg: ListContainers,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<ContainerRecord>> {
        Reply::Now(Ok(self.list(&msg)))
    }
}

impl Handles<PodContainers> for Containers {
    type Output = ();

    fn handle(&mut self, msg: PodContainers, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.pod_containers(msg)
    }
}

impl Handles<TaskExited> for Containers {
    type Output = ();

    fn handle(&mut self, msg: TaskExited, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        Reply::Now(self.exited(&msg.id, Some(msg.status)))
    }
}

impl Handles<crate::shim::messages::ExecSync> for Containers {
    type Output = crate::shim::messages::ExecOutput;

    fn handle(
        &mut self,
        mut msg: crate::shim::messages::ExecSync,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::shim::messages::ExecOutput> {
        let Some(full) = self.resolve(&msg.id) else {
            return Reply::Now(Err(crate::Error::NotFound(format!(
                "container {:?} not found",
                msg.id
            ))));
        };
        let running = self
            .records
            .get(&full)
            .is_some_and(|r| r.state == super::store::ContainerState::Running);
        if !running {
            return Reply::Now(Err(crate::Error::FailedPrecondition(format!(
                "container {full} is not running"
            ))));
        }
        msg.id = full;
        let shim = self.deps.shim.clone();
        Reply::Later(Box::pin(actix::fut::wrap_future(async move {
            shim.call(msg).await
        })))
    }
}

impl Containers {
    /// The full ID of a running container, or why there is none.
    fn running(&self, id: &str) -> crate::Result<String> {
        let full = self
            .resolve(id)
            .ok_or_else(|| crate::Error::NotFound(format!("container {id:?} not found")))?;
        let running = self
            .records
            .get(&full)
            .is_some_and(|r| r.state == super::store::ContainerState::Running);
        if !running {
            return Err(crate::Error::FailedPrecondition(format!(
                "container {full} is not running"
            )));
        }
        Ok(full)
    }
}

impl Handles<UpdateContainerResources> for Containers {
    type Output = ();

    fn handle(&mut self, msg: UpdateContainerResources, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let json = match super::spec::update_resources(&msg.resources, self.deps.host.hugetlb)
            .and_then(|r| serde_json::to_vec(&r).map_err(|e| crate::Error::Internal(e.to_string())))
        {
            Ok(j) => j,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        let task = full.clone();
        let work = async move {
            shim.call(crate::shim::messages::UpdateTask {
                id: task,
                resources_json: json,
            })
            .await
        };
        let resources = msg.resources;
        Reply::Later(Box::pin(actix::fut::ActorFutureExt::map(
            actix::fut::wrap_future(work),
            move |res: crate::Result<()>, act: &mut ContainerActor, _| {
                res?;
                if let Some(me) = act.state_mut() {
                    if let Some(mut r) = me.records.get(&full).cloned() {
                        r.config.resources = resources;
                        me.records.put(r)?;
                    }
                }
                Ok(())
            },
        )))
    }
}

impl Handles<ReopenContainerLog> for Containers {
    type Output = ();

    fn handle(&mut self, msg: ReopenContainerLog, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        Reply::Later(Box::pin(actix::fut::wrap_future(async move {
            shim.call(crate::shim::messages::ReopenLog { id: full })
                .await
        })))
    }
}

impl Handles<ContainerStats> for Containers {
    type Output = Vec<ContainerUsage>;

    fn handle(
        &mut self,
        msg: ContainerStats,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<ContainerUsage>> {
        let records = match &msg.id {
            Some(id) => match self.resolve(id).and_then(|f| self.records.get(&f).cloned()) {
                Some(r) => vec![r],
                None => {
                    return Reply::Now(Err(crate::Error::NotFound(format!(
                        "container {id:?} not found"
                    ))))
                }
            },
            None => {
                let mut f = msg.filter.clone();
                f.state = Some(super::store::ContainerState::Running);
                self.list(&f)
            }
        };
        let dir = self.deps.rootfs_dir.clone();
        Reply::Later(Box::pin(actix::fut::wrap_future(async move {
            tokio::task::spawn_blocking(move || {
                records.into_iter().map(|r| super::usage(&dir, r)).collect()
            })
            .await
            .map_err(|e| crate::Error::Internal(format!("stats task: {e}")))
        })))
    }
}

impl Handles<PodStats> for Containers {
    type Output = Vec<PodUsage>;

    fn handle(&mut self, msg: PodStats, _cx: Cx<'_, Self>) -> Reply<Self, Vec<PodUsage>> {
        let sandbox = self.deps.sandbox.clone();
        let containers: Vec<super::store::ContainerRecord> = self
            .records
            .iter()
            .filter(|r| r.state == super::store::ContainerState::Running)
            .cloned()
            .collect();
        let dir = self.deps.rootfs_dir.clone();
        Reply::Later(Box::pin(actix::fut::wrap_future(async move {
            let pods = match msg.id {
                Some(id) => vec![
                    sandbox
                        .call(crate::sandbox::messages::PodSandboxStatus { id })
                        .await?,
                ],
                None => {
                    let mut f = msg.filter;
                    f.ready = Some(true);
                    sandbox.call(f).await?
                }
            };
            tokio::task::spawn_blocking(move || {
                pods.into_iter()
                    .map(|pod| {
                        let mut total = super::stats::read(&pod.cgroups_path).unwrap_or_default();
                        let mine: Vec<ContainerUsage> = containers
                            .iter()
                            .filter(|c| c.sandbox_id == pod.id)
                            .map(|c| super::usage(&dir, c.clone()))
                            .collect();
                        for c in &mine {
                            super::stats::add(&mut total, &c.cgroup);
                        }
                        PodUsage {
                            sandbox: pod,
                            total,
                            containers: mine,
                        }
                    })
                    .collect()
            })
            .await
            .map_err(|e| crate::Error::Internal(format!("stats task: {e}")))
        })))
    }
}
