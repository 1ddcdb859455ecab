//! The NetworkActor shell: routes messages to the verbs.

use super::messages::{NetworkReadiness, NetworkStatus};
use super::store::NetworkAllocation;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Reply, Shell, Subsystem};
use crate::Result;
use std::path::PathBuf;
use std::sync::Arc;

pub type NetworkActor = Shell<Network>;

/// Where the NetworkActor looks for CNI configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub cni_conf_dir: PathBuf,
}

pub struct Network {
    pub(super) allocations: Table<NetworkAllocation>,
    pub(super) config: NetworkConfig,
}

impl Subsystem for Network {
    const NAME: &'static str = "network";
    type Deps = NetworkConfig;

    fn rebuild(deps: &NetworkConfig, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Network {
            allocations: Table::open(journal, Self::NAME)?,
            config: deps.clone(),
        })
    }

    fn records(&self) -> usize {
        self.allocations.len()
    }
}

impl Handles<NetworkStatus> for Network {
    type Output = NetworkReadiness;

    fn handle(&mut self, _msg: NetworkStatus, _cx: Cx<'_, Self>) -> Reply<Self, NetworkReadiness> {
        Reply::Now(Ok(self.readiness()))
    }
}
