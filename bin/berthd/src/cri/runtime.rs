//! RuntimeService: the runtime's identity, status and configuration, and
//! (as their issues land) pods and containers.

use super::Cri;
use crate::config::CgroupDriver;
use crate::convert;
use crate::door::{feed, serve, Feed};
use berth_actors::container::messages as ctr;
use berth_actors::kernel::ActorSnapshot;
use berth_actors::network::messages::{NetworkReadiness, NetworkStatus};
use berth_actors::sandbox::messages as pod;
use berth_actors::Error;
use berth_protocol::cri::runtime_service_server::RuntimeService;
use berth_protocol::cri::*;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

/// The CRI API version kubelet checks in `version` (the same value other
/// CRI runtimes answer).
const KUBE_API_VERSION: &str = "0.1.0";

fn version() -> VersionResponse {
    VersionResponse {
        version: KUBE_API_VERSION.into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }
}

fn condition(kind: &str, ready: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.into(),
        status: ready,
        reason: reason.into(),
        message: message.into(),
    }
}

fn actors_json(actors: &[ActorSnapshot]) -> String {
    let list: Vec<_> = actors
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name,
                "status": format!("{:?}", a.status).to_lowercase(),
                "handled": a.handled,
                "failed": a.failed,
                "mailbox": a.mailbox,
                "restarts": a.restarts,
                "lastError": a.last_error,
                "uptimeMs": a.uptime.as_millis() as u64,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

impl Cri {
    async fn status(&self, verbose: bool) -> Result<StatusResponse, Error> {
        let registry = self.node.registry();
        let down = registry.not_running();
        let looping = registry.crash_looping();
        let runtime = if let Some(why) = self.host.unusable("") {
            condition(
                "RuntimeReady",
                false,
                "RuntimeUnavailable",
                &format!("the default runtime handler cannot run pods: {why}"),
            )
        } else if !looping.is_empty() {
            condition(
                "RuntimeReady",
                false,
                "ActorCrashLoop",
                &format!(
                    "actors failing repeatedly, restarts held back: {}",
                    looping.join(", ")
                ),
            )
        } else if down.is_empty() {
            condition("RuntimeReady", true, "", "")
        } else {
            condition(
                "RuntimeReady",
                false,
                "ActorsRestarting",
                &format!("actors not running: {}", down.join(", ")),
            )
        };
        // Status must answer even while the network actor restarts.
        let network = self
            .node
            .network
            .call(NetworkStatus)
            .await
            .unwrap_or_else(|e| NetworkReadiness {
                ready: false,
                reason: "NetworkActorUnavailable".into(),
                message: e.to_string(),
            });
        let mut info = HashMap::new();
        if verbose {
            let config = serde_json::to_string(&*self.config)
                .map_err(|e| Error::Internal(format!("config to json: {e}")))?;
            info.insert("config".to_string(), config);
            info.insert("actors".to_string(), actors_json(&registry.snapshot()));
        }
        Ok(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: [
                    runtime,
                    condition(
                        "NetworkReady",
                        network.ready,
                        &network.reason,
                        &network.message,
                    ),
                ]
                .into_iter()
                .chain(self.unusable_handlers())
                .collect(),
            }),
            info,
            runtime_handlers: self.runtime_handlers(),
            features: Some(RuntimeFeatures {
                // Merge and Strict are both honoured, and ContainerStatus
                // reports the user the process runs as.
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        })
    }

    /// A condition for each configured handler that cannot run pods
    /// here, saying why (kubelet reads only its two; people read these).
    fn unusable_handlers(&self) -> impl Iterator<Item = RuntimeCondition> + '_ {
        self.host
            .unusable
            .get()
            .into_iter()
            .flatten()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, why)| {
                condition(
                    &format!("RuntimeHandlerReady/{name}"),
                    false,
                    "RuntimeUnavailable",
                    why,
                )
            })
    }

    /// Every handler kubelet may name ("" is the default) that can run
    /// pods here, with what it can do on this node.
    fn runtime_handlers(&self) -> Vec<RuntimeHandler> {
        std::iter::once("")
            .chain(self.config.runtimes.keys().map(String::as_str))
            .filter(|name| self.host.unusable(name).is_none())
            .map(|name| RuntimeHandler {
                name: name.to_string(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: self.host.recursive_read_only.contains(name),
                    // berth mounts the idmapped layers itself: every
                    // handler's runtime only joins the pod's namespaces.
                    user_namespaces: matches!(self.host.user_namespaces.get(), Some(Ok(()))),
                }),
            })
            .collect()
    }

    fn runtime_config(&self) -> RuntimeConfigResponse {
        let driver = match self.config.cgroup.driver {
            CgroupDriver::Cgroupfs => berth_protocol::cri::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => berth_protocol::cri::CgroupDriver::Systemd,
        };
        RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        serve("Version", async { Ok(version()) }).await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.get_ref().verbose;
        serve("Status", self.status(verbose)).await
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        serve("RuntimeConfig", async { Ok(self.runtime_config()) }).await
    }

    type StreamPodSandboxesStream = Feed<StreamPodSandboxesResponse>;

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "RunPodSandbox request");
        serve("RunPodSandbox", async {
            let config = convert::pod_config(req.config)?;
            tracing::info!(pod = %config.metadata.reserved_name(), "running pod sandbox");
            let id = self
                .node
                .sandbox
                .call(pod::RunPodSandbox {
                    config,
                    runtime_handler: req.runtime_handler,
                })
                .await?;
            Ok(RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        serve("StopPodSandbox", async {
            self.node.stop_pod(id).await?;
            Ok(StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        serve("RemovePodSandbox", async {
            self.node.remove_pod(id).await?;
            Ok(RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        serve("PodSandboxStatus", async {
            let r = self
                .node
                .sandbox
                .call(pod::PodSandboxStatus {
                    id: req.pod_sandbox_id,
                })
                .await?;
            Ok(PodSandboxStatusResponse {
                status: Some(convert::sandbox_status(&r)),
                info: if req.verbose {
                    convert::sandbox_info(&r)
                } else {
                    Default::default()
                },
                containers_statuses: Vec::new(),
                timestamp: berth_actors::journal::unix_nanos(),
            })
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        serve("ListPodSandbox", async {
            let filter = convert::sandbox_filter(filter)?;
            let pods = self.node.sandbox.call(filter).await?;
            Ok(ListPodSandboxResponse {
                items: pods.iter().map(convert::sandbox).collect(),
            })
        })
        .await
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        serve("StreamPodSandboxes", async {
            let filter = convert::sandbox_filter(filter)?;
            let pods = self.node.sandbox.call(filter).await?;
            Ok(feed(&pods, |c| StreamPodSandboxesResponse {
                pod_sandboxes: c.iter().map(convert::sandbox).collect(),
            }))
        })
        .await
    }
    type StreamContainersStream = Feed<StreamContainersResponse>;

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?convert::without_env_values(&req), "CreateContainer request");
        serve("CreateContainer", async {
            let config = convert::container_config(req.config)?;
            let id = self
                .node
                .container
                .call(ctr::CreateContainer {
                    pod_sandbox_id: req.pod_sandbox_id,
                    config,
                })
                .await?;
            Ok(CreateContainerResponse { container_id: id })
        })
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "UpdateContainerResources request");
        serve("UpdateContainerResources", async {
            let resources = req.linux.ok_or_else(|| {
                berth_actors::Error::InvalidArgument("no linux resources to update".into())
            })?;
            self.node
                .container
                .call(ctr::UpdateContainerResources {
                    id: req.container_id,
                    resources: convert::resources(resources),
                })
                .await?;
            Ok(UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        serve("ReopenContainerLog", async {
            self.node
                .container
                .call(ctr::ReopenContainerLog { id })
                .await?;
            Ok(ReopenContainerLogResponse {})
        })
        .await
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        serve("ContainerStats", async {
            let msg = ctr::ContainerStats {
                id: Some(id),
                ..Default::default()
            };
            let usage = self.node.container.call(msg).await?;
            Ok(ContainerStatsResponse {
                stats: usage
                    .first()
                    .map(|u| convert::container_stats(u, &self.rates)),
            })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let msg = convert::container_stats_filter(request.into_inner().filter);
        serve("ListContainerStats", async {
            let usage = self.node.container.call(msg).await?;
            Ok(ListContainerStatsResponse {
                stats: usage
                    .iter()
                    .map(|u| convert::container_stats(u, &self.rates))
                    .collect(),
            })
        })
        .await
    }

    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let msg = convert::container_stats_filter(request.into_inner().filter);
        serve("StreamContainerStats", async {
            let usage = self.node.container.call(msg).await?;
            Ok(feed(&usage, |c| StreamContainerStatsResponse {
                container_stats: c
                    .iter()
                    .map(|u| convert::container_stats(u, &self.rates))
                    .collect(),
            }))
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        serve("PodSandboxStats", async {
            let msg = ctr::PodStats {
                id: Some(id),
                ..Default::default()
            };
            let usage = self.node.container.call(msg).await?;
            Ok(PodSandboxStatsResponse {
                stats: usage.first().map(|p| convert::pod_stats(p, &self.rates)),
            })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let msg = convert::pod_stats_filter(request.into_inner().filter);
        serve("ListPodSandboxStats", async {
            let usage = self.node.container.call(msg).await?;
            Ok(ListPodSandboxStatsResponse {
                stats: usage
                    .iter()
                    .map(|p| convert::pod_stats(p, &self.rates))
                    .collect(),
            })
        })
        .await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let msg = convert::pod_stats_filter(request.into_inner().filter);
        serve("StreamPodSandboxStats", async {
            let usage = self.node.container.call(msg).await?;
            Ok(feed(&usage, |c| StreamPodSandboxStatsResponse {
                pod_sandbox_stats: c
                    .iter()
                    .map(|p| convert::pod_stats(p, &self.rates))
                    .collect(),
            }))
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = request.into_inner();
        serve("ExecSync", async {
            if req.timeout < 0 {
                return Err(Error::InvalidArgument(format!(
                    "exec: timeout {} is negative",
                    req.timeout
                )));
            }
            let out = self
                .node
                .container
                .call(ctr::ExecSync {
                    id: req.container_id,
                    cmd: req.cmd,
                    timeout: std::time::Duration::from_secs(req.timeout.max(0) as u64),
                })
                .await?;
            Ok(ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        })
        .await
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let req = request.into_inner();
        serve("Exec", self.exec_url(req)).await
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let req = request.into_inner();
        serve("Attach", self.attach_url(req)).await
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let req = request.into_inner();
        serve("PortForward", self.port_forward_url(req)).await
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        serve("StartContainer", async {
            self.node.container.call(ctr::StartContainer { id }).await?;
            Ok(StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = request.into_inner();
        serve("StopContainer", async {
            let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
            self.node
                .container
                .call(ctr::StopContainer {
                    id: req.container_id,
                    timeout,
                })
                .await?;
            Ok(StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        serve("RemoveContainer", async {
            self.node
                .container
                .call(ctr::RemoveContainer { id })
                .await?;
            Ok(RemoveContainerResponse {})
        })
        .await
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        serve("ContainerStatus", async {
            let r = self
                .node
                .container
                .call(ctr::ContainerStatus {
                    id: req.container_id,
                })
                .await?;
            let info = if req.verbose {
                let spec = self
                    .node
                    .shim
                    .call(berth_actors::shim::messages::TaskSpec { id: r.id.clone() })
                    .await?;
                convert::container_info(&r, spec)
            } else {
                Default::default()
            };
            Ok(ContainerStatusResponse {
                status: Some(convert::container_status(&r)),
                info,
            })
        })
        .await
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        serve("ListContainers", async {
            let list = match convert::container_filter(filter)? {
                Some(filter) => self.node.container.call(filter).await?,
                None => Vec::new(),
            };
            Ok(ListContainersResponse {
                containers: list.iter().map(convert::container).collect(),
            })
        })
        .await
    }

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        serve("StreamContainers", async {
            let list = match convert::container_filter(filter)? {
                Some(filter) => self.node.container.call(filter).await?,
                None => Vec::new(),
            };
            Ok(feed(&list, |c| StreamContainersResponse {
                containers: c.iter().map(convert::container).collect(),
            }))
        })
        .await
    }
    type StreamContainerStatsStream = Feed<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Feed<StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Feed<ContainerEventResponse>;

    async fn list_metric_descriptors(
        &self,
        _request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        self.metric_descriptors().await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        self.list_pod_metrics().await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        self.stream_pod_metrics().await
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "UpdatePodSandboxResources request");
        serve("UpdatePodSandboxResources", async {
            let resources = convert::pod_resources("", req.resources, req.overhead)?;
            self.node
                .sandbox
                .call(pod::UpdatePodResources {
                    id: req.pod_sandbox_id,
                    resources,
                })
                .await?;
            Ok(UpdatePodSandboxResourcesResponse {})
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "UpdateRuntimeConfig request");
        serve("UpdateRuntimeConfig", async {
            let cidrs = convert::pod_cidrs(req.runtime_config)?;
            self.node
                .network
                .call(berth_actors::network::messages::SetPodCidrs { cidrs })
                .await?;
            Ok(UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        self.container_events().await
    }
    type StreamPodSandboxMetricsStream = Feed<StreamPodSandboxMetricsResponse>;

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let req = request.into_inner();
        tracing::debug!(request = ?req, "CheckpointContainer request");
        serve("CheckpointContainer", async {
            self.node
                .container
                .call(ctr::CheckpointContainer {
                    id: req.container_id,
                    location: req.location,
                    timeout: req.timeout,
                })
                .await?;
            Ok(CheckpointContainerResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_berth_and_api_v1() {
        let v = version();
        assert_eq!(v.runtime_name, "berth");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }
}
