//! Recovery at start-up: what berthd assumes and does, in order, between
//! building the actors' state from the journal and opening the CRI socket.
//! Until it is done no CRI call is served (a client gets UNAVAILABLE from
//! the closed socket and retries), so no call sees a half-recovered node.
//!
//! What it assumes:
//! - the journal is the truth about what berth made; the machine is the
//!   truth about what still exists. Every intent record without an outcome
//!   is work that was cut short by the crash.
//! - shims outlive berthd. A shim whose process is there serves its
//!   container, which keeps its PID; a shim that is gone (killed, or a
//!   reboot emptied the state directory) leaves a container that must be
//!   reported exited.
//! - every step is idempotent: a crash during recovery is recovered from
//!   by the next start.
//!
//! What it does:
//! 1. Shims: live ones are reconnected; dead ones have their containers
//!    ended by the runtime and an exit recorded (theirs, or 255 with a
//!    note); shims whose start never finished, and bundles or shim
//!    processes no record knows, are ended and removed.
//! 2. Containers: one cut short in CreateContainer is undone (task, shim,
//!    rootfs, record); one whose exit is on record is EXITED with its code
//!    and time. The rest run on.
//! 3. Pods: one cut short in RunPodSandbox is undone (pause task, CNI DEL,
//!    netns, pod files, record); a ready pod whose pause container is gone
//!    is NOTREADY.
//! 4. Network: an allocation whose pod is gone gets its CNI DEL (so the IP
//!    is released) and loses its namespace; namespace pins no allocation
//!    knows are removed.
//! 5. Root filesystems: one whose container is gone is unmounted and its
//!    writable layer removed; so is any mount or layer directory no record
//!    knows. (Half-pulled images were already dropped when the image actor
//!    built its state.)
//! 6. Shims again: one whose container and pod are both gone is deleted.

use anyhow::{anyhow, Result};
use berth_actors::container::messages::ListContainers;
use berth_actors::container::recover::RecoverContainers;
use berth_actors::image::recover::RecoverRootfs;
use berth_actors::kernel::{short, Recovered};
use berth_actors::network::recover::RecoverNetwork;
use berth_actors::node::Node;
use berth_actors::sandbox::messages::ListPodSandbox;
use berth_actors::sandbox::recover::RecoverSandboxes;
use berth_actors::shim::health::ListShims;
use berth_actors::shim::messages::DeleteTask;
use berth_actors::shim::recover::RecoverShims;
use std::collections::BTreeSet;
use std::time::Instant;

/// What recovery found and did, for the log and the admin API.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub live_shims: usize,
    /// One line per repair.
    pub fixed: Vec<String>,
    pub took_ms: u64,
}

fn absorb(report: &mut Report, step: &str, r: Recovered) {
    tracing::debug!(
        step,
        kept = r.kept,
        fixed = r.fixed.len(),
        "recovery step done"
    );
    report.fixed.extend(r.fixed);
}

/// Runs the checklist above.
pub async fn run(node: &Node) -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::default();
    let fail = |step: &str, e: berth_actors::Error| anyhow!("recovery, {step}: {e}");

    // 1. Shims.
    let shims = node
        .shim
        .call(RecoverShims)
        .await
        .map_err(|e| fail("shims", e))?;
    report.live_shims = shims.live.len();
    for id in &shims.dead {
        report
            .fixed
            .push(format!("shim of {}: gone, exit recorded", short(id)));
    }
    for id in &shims.undone {
        report
            .fixed
            .push(format!("shim of {}: start cut short, removed", short(id)));
    }
    for id in &shims.orphans {
        report
            .fixed
            .push(format!("shim of {}: no record, removed", short(id)));
    }

    // 2. Containers, then 3. pods (a pod's undo needs its containers' done).
    let containers = node
        .container
        .call(RecoverContainers)
        .await
        .map_err(|e| fail("containers", e))?;
    absorb(&mut report, "containers", containers);
    let pods = node
        .sandbox
        .call(RecoverSandboxes)
        .await
        .map_err(|e| fail("pods", e))?;
    absorb(&mut report, "pods", pods);

    // What exists now, for the steps that release what has no owner.
    let pod_ids: BTreeSet<String> = node
        .sandbox
        .call(ListPodSandbox::default())
        .await
        .map_err(|e| fail("pods", e))?
        .into_iter()
        .map(|p| p.id)
        .collect();
    let container_ids: BTreeSet<String> = node
        .container
        .call(ListContainers::default())
        .await
        .map_err(|e| fail("containers", e))?
        .into_iter()
        .map(|c| c.id)
        .collect();

    // 4. Network.
    let network = node
        .network
        .call(RecoverNetwork {
            pods: pod_ids.clone(),
        })
        .await
        .map_err(|e| fail("network", e))?;
    absorb(&mut report, "network", network);

    // 5. Root filesystems.
    let rootfs = node
        .image
        .call(RecoverRootfs {
            containers: container_ids.clone(),
        })
        .await
        .map_err(|e| fail("rootfs", e))?;
    absorb(&mut report, "rootfs", rootfs);

    // 6. Shims without an owner.
    let owned = |id: &str| pod_ids.contains(id) || container_ids.contains(id);
    let shims = node
        .shim
        .call(ListShims)
        .await
        .map_err(|e| fail("shims", e))?;
    for shim in shims.into_iter().filter(|s| !owned(&s.container_id)) {
        let id = shim.container_id;
        match node.shim.call(DeleteTask { id: id.clone() }).await {
            Ok(()) => report.fixed.push(format!(
                "shim of {}: no container or pod, deleted",
                short(&id)
            )),
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "recovery: cannot delete an unowned task")
            }
        }
    }

    report.took_ms = started.elapsed().as_millis() as u64;
    for line in &report.fixed {
        tracing::info!(%line, "recovered");
    }
    tracing::info!(
        live_shims = report.live_shims,
        repairs = report.fixed.len(),
        took_ms = report.took_ms,
        "recovery done"
    );
    Ok(report)
}

/// How often berthd looks for shims whose container and pod are gone while
/// it runs (what a restart of an actor in the middle of a removal leaves).
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// One round of the sweep: shims owned by no container and no pod are
/// deleted once two rounds in a row saw them so (`suspects` carries the
/// last round's). Shims are listed before their owners: an owner record
/// is written before its shim is made and removed after it is deleted,
/// so a shim seen without an owner listed later has none.
pub async fn sweep_unowned_shims(node: &Node, suspects: &mut BTreeSet<String>) {
    let Ok(shims) = node.shim.call(ListShims).await else {
        return;
    };
    let (Ok(pods), Ok(containers)) = (
        node.sandbox
            .call(ListPodSandbox {
                with_creating: true,
                ..Default::default()
            })
            .await,
        node.container
            .call(ListContainers {
                with_creating: true,
                ..Default::default()
            })
            .await,
    ) else {
        return;
    };
    let owners: BTreeSet<String> = pods
        .into_iter()
        .map(|p| p.id)
        .chain(containers.into_iter().map(|c| c.id))
        .collect();
    let unowned: BTreeSet<String> = shims
        .into_iter()
        .map(|s| s.container_id)
        .filter(|id| !owners.contains(id))
        .collect();
    for id in due(&unowned, suspects) {
        match node.shim.call(DeleteTask { id: id.clone() }).await {
            Ok(()) => tracing::warn!(
                task = %short(&id),
                "deleted a shim whose container and pod are gone"
            ),
            Err(e) => {
                tracing::warn!(task = %short(&id), error = %e, "cannot delete an unowned shim")
            }
        }
    }
    *suspects = unowned;
}

/// The shims to delete this round: unowned now and in the last round.
fn due(unowned: &BTreeSet<String>, suspects: &BTreeSet<String>) -> Vec<String> {
    unowned.intersection(suspects).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_is_swept_only_when_two_rounds_in_a_row_found_it_unowned() {
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        // First seen: only a suspect.
        assert!(due(&set(&["a"]), &set(&[])).is_empty());
        // Seen again: deleted; one owned again meanwhile is not.
        assert_eq!(
            due(&set(&["a", "c"]), &set(&["a", "b"])),
            vec!["a".to_string()]
        );
    }
}
