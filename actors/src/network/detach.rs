//! DetachPod and RemovePodNetwork: CNI DEL (with the result and inputs ADD
//! journalled), then the namespace. DEL runs even when the namespace is
//! already gone, as the CNI specification asks, so that IPAM releases the
//! address; it is retried a few times, and for a removed pod, in the
//! background until it succeeds.

use super::actor::{Network, NetworkActor};
use super::cni::NetworkList;
use super::netns;
use super::store::NetworkAllocation;
use crate::kernel::{Reply, Shell};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::prelude::*;
use std::time::Duration;

const ATTEMPTS: usize = 3;

/// DEL with retries; `Ok` when nothing was ever added.
pub(super) async fn del(plugins: super::cni::Plugins, record: NetworkAllocation) -> Result<()> {
    let Some(list) = NetworkList::from_json(&record.list) else {
        return Ok(());
    };
    let mut attachment = Network::attachment(&record);
    if !netns::is_pinned(&attachment.netns) {
        // The namespace is gone (a reboot, a removal half done): DEL
        // without one still releases the IP and the host's rules.
        attachment.netns = std::path::PathBuf::new();
    }
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        match plugins.del(&list, &attachment, &record.result).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    Err(last.unwrap_or_else(|| Error::Internal("CNI DEL failed".into())))
}

impl Network {
    /// DEL for the pod; with `remove`, also the namespace and the record.
    pub(super) fn detach(&mut self, sandbox_id: String, remove: bool) -> Reply<Self, ()> {
        let Some(record) = self.allocations.get(&sandbox_id).cloned() else {
            // Unknown or already removed: stop and remove are idempotent.
            return Reply::Now(Ok(()));
        };
        if self.busy.contains(&sandbox_id) {
            return Reply::Now(Err(Error::Unavailable(format!(
                "the network of pod {sandbox_id} is being set up; retry"
            ))));
        }
        let plugins = self.config.plugins();
        let needs_del = record.attached || !record.list.is_null();
        let pin = record.netns_path.clone();
        let work = async move {
            let deleted = if needs_del {
                del(plugins, record).await
            } else {
                Ok(())
            };
            if remove {
                tokio::task::spawn_blocking(move || netns::remove(std::path::Path::new(&pin)))
                    .await
                    .map_err(|e| Error::Internal(format!("netns task: {e}")))??;
            }
            Ok(deleted)
        };
        Reply::later(work, move |me: &mut Self, res: Result<Result<()>>| {
            let deleted = res?;
            let Some(mut record) = me.allocations.get(&sandbox_id).cloned() else {
                return Ok(());
            };
            match (deleted, remove) {
                (Ok(()), true) => me.release(&sandbox_id),
                (Ok(()), false) => {
                    record.attached = false;
                    record.result = serde_json::Value::Null;
                    record.list = serde_json::Value::Null;
                    record.ips.clear();
                    me.allocations.put(record)?;
                    Ok(())
                }
                (Err(e), true) => {
                    // The pod goes; its allocation stays until DEL
                    // succeeds in the background.
                    tracing::warn!(sandbox = %sandbox_id, error = %e, "CNI DEL failed; retrying in the background");
                    record.removed = true;
                    me.allocations.put(record)?;
                    Ok(())
                }
                (Err(e), false) => Err(e),
            }
        })
    }

    /// Tries DEL again for removed pods whose DEL failed.
    pub(super) fn retry_removed(&mut self, ctx: &mut Context<Shell<Self>>) {
        let pending: Vec<NetworkAllocation> = self
            .allocations
            .iter()
            .filter(|a| a.removed)
            .cloned()
            .collect();
        for record in pending {
            let id = record.sandbox_id.clone();
            let plugins = self.config.plugins();
            ctx.spawn(wrap_future(del(plugins, record)).map(
                move |res: Result<()>, act: &mut NetworkActor, _| {
                    if res.is_ok() {
                        if let Some(me) = act.state_mut() {
                            if let Err(e) = me.release(&id) {
                                tracing::warn!(sandbox = %id, error = %e, "cannot drop the allocation");
                            } else {
                                tracing::info!(sandbox = %id, "CNI DEL succeeded on retry");
                            }
                        }
                    }
                },
            ));
        }
    }
}
