//! CreateNetns and AttachPod: a pod's namespace, then CNI ADD in it. The
//! namespace is made first and quickly, so that the pause container can
//! start in it while ADD runs.

use super::actor::{Network, NetworkActor};
use super::cni::{pod_ips, Attachment, NetworkList};
use super::messages::AttachPod;
use super::netns;
use super::store::NetworkAllocation;
use crate::kernel::Reply;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use serde_json::Value;

impl Network {
    pub(super) fn create_netns(
        &mut self,
        sandbox_id: String,
        userns: Option<crate::userns::IdMap>,
    ) -> Reply<Self, String> {
        if let Some(a) = self.allocations.get(&sandbox_id) {
            if netns::is_pinned(std::path::Path::new(&a.netns_path)) {
                return Reply::Now(Ok(a.netns_path.clone()));
            }
        }
        let pin = netns::pin_path(&self.config.netns_dir, &sandbox_id);
        let intent = NetworkAllocation {
            sandbox_id: sandbox_id.clone(),
            netns_path: pin.display().to_string(),
            ips: Vec::new(),
            result: Value::Null,
            list: Value::Null,
            args: Vec::new(),
            attached: false,
            removed: false,
            port_mappings: Vec::new(),
            ip_ranges: Vec::new(),
        };
        // Journalled before the namespace exists: recovery removes a
        // namespace nobody finished with.
        if let Err(e) = self.allocations.put(intent) {
            return Reply::Now(Err(e.into()));
        }
        self.busy.insert(sandbox_id.clone());
        let work = async move {
            let p = pin.clone();
            tokio::task::spawn_blocking(move || netns::create_for(&p, userns.as_ref()))
                .await
                .map_err(|e| Error::Internal(format!("netns task: {e}")))??;
            Ok(pin.display().to_string())
        };
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<String>, act: &mut NetworkActor, _| {
                if let Some(me) = act.state_mut() {
                    me.busy.remove(&sandbox_id);
                    if res.is_err() {
                        let _ = me.allocations.remove(&sandbox_id);
                    }
                }
                res
            },
        )))
    }

    pub(super) fn attach(&mut self, msg: AttachPod) -> Reply<Self, Vec<String>> {
        let id = msg.pod.sandbox_id.clone();
        let Some(mut record) = self.allocations.get(&id).cloned() else {
            return Reply::Now(Err(Error::FailedPrecondition(format!(
                "pod {id} has no network namespace"
            ))));
        };
        let list = match NetworkList::first_in(&self.config.cni_conf_dir) {
            Ok(l) => l,
            Err(why) => {
                return Reply::Now(Err(Error::FailedPrecondition(format!(
                    "no CNI network for pod {id}: {why}"
                ))))
            }
        };
        let args = vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), msg.pod.namespace.clone()),
            ("K8S_POD_NAME".to_string(), msg.pod.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_string(), id.clone()),
            ("K8S_POD_UID".to_string(), msg.pod.uid.clone()),
        ];
        // The list and args are journalled before ADD: whatever ADD leaves
        // behind, DEL can find it with the same inputs.
        record.list = list.to_json();
        record.args = args.clone();
        record.port_mappings = msg.port_mappings.clone();
        record.ip_ranges = self.pod_cidrs();
        if let Err(e) = self.allocations.put(record.clone()) {
            return Reply::Now(Err(e.into()));
        }
        self.busy.insert(id.clone());
        let attachment = Attachment {
            container_id: id.clone(),
            netns: record.netns_path.clone().into(),
            ifname: "eth0".into(),
            args,
            port_mappings: msg.port_mappings,
            bandwidth: msg.bandwidth,
            ip_ranges: record.ip_ranges.clone(),
        };
        let plugins = self.config.plugins();
        let work = async move {
            match plugins.add(&list, &attachment).await {
                // A pod network that gave the pod no address is broken: the
                // pod would be Ready and unreachable.
                Ok(result) if pod_ips(&result).is_empty() => {
                    let _ = plugins.del(&list, &attachment, &result).await;
                    let types: Vec<&str> = list
                        .plugins
                        .iter()
                        .filter_map(|p| p.get("type").and_then(|t| t.as_str()))
                        .collect();
                    Err(Error::FailedPrecondition(format!(
                        "CNI network {:?} (plugins {types:?}) gave pod {} no IP address",
                        list.name,
                        crate::kernel::short(&attachment.container_id)
                    )))
                }
                Ok(result) => Ok(result),
                Err(e) => {
                    // Release whatever part of ADD succeeded (an IP).
                    let _ = plugins.del(&list, &attachment, &Value::Null).await;
                    Err(e)
                }
            }
        };
        Reply::later(work, move |me: &mut Self, res: Result<Value>| {
            me.busy.remove(&id);
            let mut record = me.allocations.get(&id).cloned().ok_or_else(|| {
                Error::FailedPrecondition(format!("pod {id} was removed during CNI ADD"))
            })?;
            let result = res?;
            record.ips = pod_ips(&result);
            record.result = result;
            record.attached = true;
            let ips = record.ips.clone();
            me.allocations.put(record)?;
            Ok(ips)
        })
    }

    /// The pod's allocation, for status.
    pub fn allocation(&self, sandbox_id: &str) -> Option<&NetworkAllocation> {
        self.allocations.get(sandbox_id)
    }

    pub(super) fn attachment(record: &NetworkAllocation) -> Attachment {
        Attachment {
            container_id: record.sandbox_id.clone(),
            netns: record.netns_path.clone().into(),
            ifname: "eth0".into(),
            args: record.args.clone(),
            port_mappings: record.port_mappings.clone(),
            bandwidth: None,
            ip_ranges: record.ip_ranges.clone(),
        }
    }
}
