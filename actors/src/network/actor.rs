//! The NetworkActor shell: routes messages to the verbs (attach.rs,
//! detach.rs, status.rs). CNI plugins and namespace work run off the actor;
//! the actor journals their outcome.

use super::cni::Plugins;
use super::messages::*;
use super::store::{
    NetworkAllocation, NetworkSettings, ReleasedAllocation, RELEASED_KEPT, SETTINGS_KEY,
};
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Reply, Shell, Subsystem};
use crate::Result;
use actix::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub type NetworkActor = Shell<Network>;

/// Where the NetworkActor finds CNI and keeps namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where pod network namespaces are pinned.
    pub netns_dir: PathBuf,
    /// How long one CNI plugin may run.
    pub plugin_timeout: Duration,
    /// Pod subnets whose traffic leaving the node is masqueraded by one
    /// node-wide chain (see [`super::masquerade`]); empty: none.
    pub masquerade: Vec<String>,
    /// That chain's name.
    pub masquerade_chain: String,
}

impl NetworkConfig {
    /// A configuration with everything under `dir` (tests).
    pub fn under(dir: &std::path::Path) -> NetworkConfig {
        NetworkConfig {
            cni_conf_dir: dir.join("cni"),
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            netns_dir: dir.join("netns"),
            plugin_timeout: Duration::from_secs(60),
            masquerade: Vec::new(),
            masquerade_chain: super::masquerade::chain_name(dir),
        }
    }

    pub(super) fn plugins(&self) -> Plugins {
        Plugins {
            bin_dirs: self.cni_bin_dirs.clone(),
            timeout: self.plugin_timeout,
        }
    }
}

pub struct Network {
    pub(super) allocations: Table<NetworkAllocation>,
    /// Pods whose network was released, newest [`RELEASED_KEPT`].
    pub(super) released: Table<ReleasedAllocation>,
    /// What kubelet said of the node's network (UpdateRuntimeConfig).
    pub(super) settings: Table<NetworkSettings>,
    pub(super) config: NetworkConfig,
    /// Pods whose namespace or CNI ADD is under way: a DEL now would race
    /// the ADD, so it waits (Unavailable, retried by the caller).
    pub(super) busy: std::collections::BTreeSet<String>,
    /// Whether the masquerade rules are known to be in place.
    pub(super) masquerading: bool,
}

/// How often DELs that failed during a removal are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

impl Subsystem for Network {
    const NAME: &'static str = "network";
    type Deps = NetworkConfig;

    fn rebuild(deps: &NetworkConfig, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Network {
            allocations: Table::open(journal, Self::NAME)?,
            released: Table::open(journal, Self::NAME)?,
            settings: Table::open(journal, Self::NAME)?,
            config: deps.clone(),
            busy: Default::default(),
            masquerading: false,
        })
    }

    fn records(&self) -> usize {
        self.allocations.len()
    }

    fn started(&mut self, ctx: &mut Context<Shell<Self>>) {
        self.masquerade(ctx);
        ctx.run_interval(RETRY_EVERY, |act, ctx| {
            if let Some(me) = act.state_mut() {
                me.retry_removed(ctx);
                me.sweep_pins(ctx);
                if !me.masquerading {
                    me.masquerade(ctx);
                }
            }
        });
    }
}

impl Network {
    /// Puts the node's masquerade rules in place, off the actor; tried
    /// again on the retry timer until it works.
    fn masquerade(&mut self, ctx: &mut Context<Shell<Self>>) {
        let (chain, subnets) = (
            self.config.masquerade_chain.clone(),
            self.config.masquerade.clone(),
        );
        // Not tried again while this attempt runs.
        self.masquerading = true;
        let work = tokio::task::spawn_blocking(move || super::masquerade::apply(&chain, &subnets));
        ctx.spawn(
            actix::fut::wrap_future(work).map(|done, act: &mut NetworkActor, _| {
                let err = match done {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                tracing::error!(error = %err, "pod subnets not masqueraded; trying again");
                if let Some(me) = act.state_mut() {
                    me.masquerading = false;
                }
            }),
        );
    }
}

impl Network {
    /// The node's pod CIDRs, as kubelet last gave them.
    pub(super) fn pod_cidrs(&self) -> Vec<String> {
        self.settings
            .get(SETTINGS_KEY)
            .map(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
    }
}

impl Handles<SetPodCidrs> for Network {
    type Output = ();

    fn handle(&mut self, msg: SetPodCidrs, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        if self.pod_cidrs() == msg.cidrs {
            return Reply::Now(Ok(()));
        }
        tracing::info!(cidrs = ?msg.cidrs, "the node's pod CIDRs changed");
        let r = self.settings.put(NetworkSettings {
            pod_cidrs: msg.cidrs,
        });
        Reply::Now(r.map_err(Into::into))
    }
}

impl Handles<NetworkStatus> for Network {
    type Output = NetworkReadiness;

    fn handle(&mut self, _msg: NetworkStatus, _cx: Cx<'_, Self>) -> Reply<Self, NetworkReadiness> {
        Reply::Now(Ok(self.readiness()))
    }
}

impl Handles<CreateNetns> for Network {
    type Output = String;

    fn handle(&mut self, msg: CreateNetns, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        self.create_netns(msg.sandbox_id, msg.userns)
    }
}

impl Handles<AttachPod> for Network {
    type Output = Vec<String>;

    fn handle(&mut self, msg: AttachPod, _cx: Cx<'_, Self>) -> Reply<Self, Vec<String>> {
        self.attach(msg)
    }
}

impl Handles<DetachPod> for Network {
    type Output = ();

    fn handle(&mut self, msg: DetachPod, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.detach(msg.sandbox_id, false)
    }
}

impl Handles<RemovePodNetwork> for Network {
    type Output = ();

    fn handle(&mut self, msg: RemovePodNetwork, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.detach(msg.sandbox_id, true)
    }
}

impl Handles<super::recover::RecoverNetwork> for Network {
    type Output = crate::kernel::Recovered;

    fn handle(
        &mut self,
        msg: super::recover::RecoverNetwork,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::kernel::Recovered> {
        self.recover(msg.pods)
    }
}

impl Handles<super::recover::ListAllocations> for Network {
    type Output = Vec<NetworkAllocation>;

    fn handle(
        &mut self,
        _msg: super::recover::ListAllocations,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<NetworkAllocation>> {
        Reply::Now(Ok(self.allocations.iter().cloned().collect()))
    }
}

impl Handles<super::recover::ListReleased> for Network {
    type Output = Vec<ReleasedAllocation>;

    fn handle(
        &mut self,
        _msg: super::recover::ListReleased,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<ReleasedAllocation>> {
        Reply::Now(Ok(self.released.iter().cloned().collect()))
    }
}

impl Network {
    /// Drops the allocation of a pod whose DEL succeeded, remembering the
    /// pod as released (the oldest memory goes past [`RELEASED_KEPT`]).
    pub(super) fn release(&mut self, sandbox_id: &str) -> Result<()> {
        self.allocations.remove(sandbox_id)?;
        self.released.put(ReleasedAllocation {
            sandbox_id: sandbox_id.to_string(),
            released_unix_nanos: crate::journal::unix_nanos(),
        })?;
        if self.released.len() > RELEASED_KEPT {
            let oldest = self
                .released
                .iter()
                .min_by_key(|r| r.released_unix_nanos)
                .map(|r| r.sandbox_id.clone());
            if let Some(id) = oldest {
                self.released.remove(&id)?;
            }
        }
        Ok(())
    }
}
