//! berth's admin.v1 service on the admin socket: the actor registry, chaos
//! controls, the journal's statistics, shims, the consistency check, what
//! recovery did, and image import and listing (through the ImageActor).

use crate::chaos::{Chaos, ChaosState, Schedule};
use crate::config::Config;
use crate::door::serve;
use berth_actors::image::messages as msg;
use berth_actors::kernel::{unknown_actor, ActorSnapshot, ActorStatus, By, ControlOp};
use berth_actors::node::Node;
use berth_actors::{Error, Result};
use berth_protocol::admin::admin_server::Admin;
use berth_protocol::admin::*;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    node: Arc<Node>,
    config: Arc<Config>,
    chaos: Arc<Chaos>,
    recovery: crate::recover::Report,
}

impl AdminService {
    pub fn new(
        node: Arc<Node>,
        config: Arc<Config>,
        chaos: Arc<Chaos>,
        recovery: crate::recover::Report,
    ) -> Self {
        AdminService {
            node,
            config,
            chaos,
            recovery,
        }
    }

    fn journal_stats(&self) -> Result<JournalStatsResponse> {
        let stats = self.node.journal_stats()?;
        let boots = self.node.boots()?;
        Ok(JournalStatsResponse {
            path: stats.path,
            kinds: stats
                .counts
                .iter()
                .map(|(kind, count)| KindCount {
                    kind: kind.name().into(),
                    count: *count,
                })
                .collect(),
            size_bytes: stats.size_bytes,
            last_flush_unix_nanos: stats.last_flush_unix_nanos,
            writes: stats.writes,
            boots: boots
                .into_iter()
                .map(|b| BootRecord {
                    seq: b.seq,
                    pid: b.pid,
                    started_unix_nanos: b.started_unix_nanos,
                    clean_shutdown: b.clean_shutdown,
                })
                .collect(),
        })
    }

    fn actor(&self, name: &str) -> Result<ActorInfo> {
        self.node
            .registry()
            .get(name)
            .map(info)
            .ok_or_else(|| unknown_actor(name, &self.node.actor_names()))
    }
}

/// berthd reads the file itself, from its own working directory: only an
/// absolute path means the same file to the caller and to berthd.
fn import_path(path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::InvalidArgument("import: no path given".into()));
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "import: {path:?} is a relative path; give berthd an absolute one"
        )));
    }
    Ok(p)
}

fn kill_op(mode: i32, by: By) -> Result<ControlOp> {
    match KillMode::try_from(mode) {
        Ok(KillMode::Stop) => Ok(ControlOp::Kill(by)),
        Ok(KillMode::Panic) => Ok(ControlOp::Panic(by)),
        Err(_) => Err(Error::InvalidArgument(format!("unknown kill mode {mode}"))),
    }
}

fn chaos_status(s: ChaosState) -> ChaosStatus {
    let (running, interval_ms, actors, mode) = match s.schedule {
        Some(sc) => (
            true,
            sc.interval.as_millis() as u64,
            sc.actors,
            if matches!(sc.op, ControlOp::Panic(_)) {
                KillMode::Panic
            } else {
                KillMode::Stop
            },
        ),
        None => (false, 0, Vec::new(), KillMode::Stop),
    };
    ChaosStatus {
        running,
        interval_ms,
        actors,
        mode: mode as i32,
        kills: s.kills,
        last_victim: s.last_victim,
    }
}

fn info(s: ActorSnapshot) -> ActorInfo {
    let status = match s.status {
        ActorStatus::Running => berth_protocol::admin::ActorStatus::Running,
        ActorStatus::Restarting => berth_protocol::admin::ActorStatus::Restarting,
        ActorStatus::Stopped => berth_protocol::admin::ActorStatus::Stopped,
    };
    ActorInfo {
        name: s.name.into(),
        status: status as i32,
        handled: s.handled,
        failed: s.failed,
        mailbox: s.mailbox,
        restarts: s.restarts,
        last_error: s.last_error,
        uptime_ms: s.uptime.as_millis() as u64,
        crash_loop: s.crash_loop,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_actors(
        &self,
        _request: Request<ListActorsRequest>,
    ) -> Result<Response<ListActorsResponse>, Status> {
        serve("admin.ListActors", async {
            Ok(ListActorsResponse {
                actors: self
                    .node
                    .registry()
                    .snapshot()
                    .into_iter()
                    .map(info)
                    .collect(),
            })
        })
        .await
    }

    async fn get_actor(
        &self,
        request: Request<GetActorRequest>,
    ) -> Result<Response<ActorInfo>, Status> {
        serve("admin.GetActor", async {
            self.actor(&request.get_ref().name)
        })
        .await
    }

    async fn kill_actor(
        &self,
        request: Request<KillActorRequest>,
    ) -> Result<Response<KillActorResponse>, Status> {
        let req = request.into_inner();
        let op = kill_op(req.mode, By::Operator);
        serve("admin.KillActor", async {
            let reply = self.node.control(&req.name, op?).await?;
            Ok(KillActorResponse {
                restarts_before: reply.restarts_before,
            })
        })
        .await
    }

    async fn ping_actor(
        &self,
        request: Request<PingActorRequest>,
    ) -> Result<Response<PingActorResponse>, Status> {
        let name = request.into_inner().name;
        serve("admin.PingActor", async {
            let reply = self.node.control(&name, ControlOp::Ping).await?;
            Ok(PingActorResponse {
                name: name.clone(),
                records: reply.records,
                generation: reply.generation,
            })
        })
        .await
    }

    async fn journal_stats(
        &self,
        _request: Request<JournalStatsRequest>,
    ) -> Result<Response<JournalStatsResponse>, Status> {
        serve("admin.JournalStats", async { self.journal_stats() }).await
    }

    async fn import_image(
        &self,
        request: Request<ImportImageRequest>,
    ) -> Result<Response<ImportImageResponse>, Status> {
        let path = request.into_inner().path;
        serve("admin.ImportImage", async {
            let path = import_path(&path)?;
            let images = self.node.image.call(msg::ImportImage { path }).await?;
            Ok(ImportImageResponse {
                images: images
                    .into_iter()
                    .map(|i| ImportedImage {
                        id: i.id,
                        repo_tags: i.repo_tags,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn list_images(
        &self,
        _request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        serve("admin.ListImages", async {
            let infos = self
                .node
                .image
                .call(msg::ListImages { image: None })
                .await?;
            Ok(ListImagesResponse {
                images: infos
                    .into_iter()
                    .map(|i| ImageSummary {
                        id: i.record.id,
                        repo_tags: i.record.repo_tags,
                        repo_digests: i.record.repo_digests,
                        size: i.record.size,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn list_shims(
        &self,
        _request: Request<ListShimsRequest>,
    ) -> Result<Response<ListShimsResponse>, Status> {
        serve("admin.ListShims", async {
            let shims = self
                .node
                .shim
                .call(berth_actors::shim::health::ListShims)
                .await?;
            Ok(ListShimsResponse {
                shims: shims
                    .into_iter()
                    .map(|s| ShimInfo {
                        container_id: s.container_id,
                        pid: s.pid,
                        address: s.address,
                        alive: s.alive,
                        exited: s.exited,
                        runtime_handler: s.runtime_handler,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn fsck(&self, _request: Request<FsckRequest>) -> Result<Response<FsckResponse>, Status> {
        serve("admin.Fsck", async {
            let report = crate::fsck::run(&self.node, &self.config).await?;
            Ok(FsckResponse {
                checked: report.checked,
                findings: report
                    .findings
                    .into_iter()
                    .map(|f| Finding {
                        kind: f.kind.into(),
                        object: f.object,
                        problem: f.problem.into(),
                        detail: f.detail,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn start_chaos(
        &self,
        request: Request<StartChaosRequest>,
    ) -> Result<Response<ChaosStatus>, Status> {
        let req = request.into_inner();
        serve("admin.StartChaos", async {
            let schedule = Schedule {
                interval: std::time::Duration::from_millis(req.interval_ms),
                actors: req.actors,
                op: kill_op(req.mode, By::Chaos)?,
            };
            self.chaos.start(schedule).map(chaos_status)
        })
        .await
    }

    async fn stop_chaos(
        &self,
        _request: Request<StopChaosRequest>,
    ) -> Result<Response<ChaosStatus>, Status> {
        serve("admin.StopChaos", async {
            Ok(chaos_status(self.chaos.stop()))
        })
        .await
    }

    async fn get_chaos(
        &self,
        _request: Request<GetChaosRequest>,
    ) -> Result<Response<ChaosStatus>, Status> {
        serve("admin.GetChaos", async {
            Ok(chaos_status(self.chaos.state()))
        })
        .await
    }

    async fn get_recovery(
        &self,
        _request: Request<GetRecoveryRequest>,
    ) -> Result<Response<RecoveryReport>, Status> {
        serve("admin.GetRecovery", async {
            Ok(RecoveryReport {
                took_ms: self.recovery.took_ms,
                live_shims: self.recovery.live_shims as u64,
                fixed: self.recovery.fixed.clone(),
            })
        })
        .await
    }
}
