//! UpdatePodSandboxResources: a pod's new pod-level resources, written to
//! the pod's own cgroup (the cgroup parent kubelet gave it; kubelet may
//! have written the same values already, which is harmless) and
//! journalled with the pod's config. A pod placed under berth's shared
//! cgroup parent has no cgroup of its own: its resources are only
//! recorded.

use super::actor::Sandboxes;
use super::messages::UpdatePodResources;
use crate::container::messages::Resources;
use crate::host::{cgroup_unified, CGROUP_ROOT};
use crate::kernel::Reply;
use crate::{Error, Result};
use std::path::Path;

/// One cgroup file to write: its v1 controller (ignored on v2), its name
/// and its value.
type Write = (&'static str, String, String);

/// cgroup v2's cpu.weight for v1 cpu.shares (2..=262144 onto 1..=10000),
/// as runc converts it.
fn weight(shares: i64) -> i64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142
}

/// The files `r` sets, in the order they must be written.
fn writes(v2: bool, r: &Resources) -> Vec<Write> {
    let mut w: Vec<Write> = Vec::new();
    let mut put = |controller: &'static str, file: &str, value: String| {
        w.push((controller, file.to_string(), value));
    };
    if v2 {
        if r.cpu_quota != 0 || r.cpu_period > 0 {
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".to_string()
            };
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            put("cpu", "cpu.max", format!("{quota} {period}"));
        }
        if r.cpu_shares > 0 {
            put("cpu", "cpu.weight", weight(r.cpu_shares).to_string());
        }
        if r.memory_limit_in_bytes > 0 {
            put("memory", "memory.max", r.memory_limit_in_bytes.to_string());
        }
    } else {
        if r.cpu_period > 0 {
            put("cpu", "cpu.cfs_period_us", r.cpu_period.to_string());
        }
        if r.cpu_quota != 0 {
            put("cpu", "cpu.cfs_quota_us", r.cpu_quota.to_string());
        }
        if r.cpu_shares > 0 {
            put("cpu", "cpu.shares", r.cpu_shares.to_string());
        }
        if r.memory_limit_in_bytes > 0 {
            put(
                "memory",
                "memory.limit_in_bytes",
                r.memory_limit_in_bytes.to_string(),
            );
        }
    }
    if !r.cpuset_cpus.is_empty() {
        put("cpuset", "cpuset.cpus", r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        put("cpuset", "cpuset.mems", r.cpuset_mems.clone());
    }
    if v2 {
        for (k, v) in &r.unified {
            put("", k, v.clone());
        }
    }
    w
}

/// What the pod's cgroup is held to: its resources with its overhead
/// added, as kubelet sizes a pod's cgroup.
pub fn with_overhead(r: &Resources, o: Option<&Resources>) -> Resources {
    let Some(o) = o else {
        return r.clone();
    };
    let add = |a: i64, b: i64| if a > 0 { a + b.max(0) } else { a };
    Resources {
        cpu_quota: add(r.cpu_quota, o.cpu_quota),
        cpu_shares: add(r.cpu_shares, o.cpu_shares),
        memory_limit_in_bytes: add(r.memory_limit_in_bytes, o.memory_limit_in_bytes),
        ..r.clone()
    }
}

/// Writes `r` to the cgroup at `cgroups_path` under `root`.
pub(super) fn apply_at(root: &Path, v2: bool, cgroups_path: &str, r: &Resources) -> Result<()> {
    let rel = crate::container::stats::relative(cgroups_path)?;
    for (controller, file, value) in writes(v2, r) {
        let path = if v2 {
            root.join(&rel).join(&file)
        } else {
            root.join(controller).join(&rel).join(&file)
        };
        std::fs::write(&path, &value).map_err(|e| {
            Error::FailedPrecondition(format!(
                "pod cgroup: writing {value:?} to {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

impl Sandboxes {
    pub(super) fn update_resources(&mut self, msg: UpdatePodResources) -> Reply<Self, ()> {
        let Some(mut r) = self.records.get(&msg.id).cloned() else {
            return Reply::Now(Err(Error::NotFound(format!(
                "pod sandbox {} not found",
                msg.id
            ))));
        };
        let own = !r.config.cgroup_parent.is_empty();
        if own {
            let root = Path::new(CGROUP_ROOT);
            if let Err(e) = apply_at(
                root,
                cgroup_unified(),
                &r.config.cgroup_parent,
                &msg.resources,
            ) {
                return Reply::Now(Err(e));
            }
        }
        tracing::info!(sandbox = %r.id, applied = own, "pod-level resources updated");
        r.config.resources = Some(msg.resources);
        Reply::Now(self.records.put(r).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> Resources {
        Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn v1_and_v2_files_are_written_under_the_pod_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in ["cpu", "memory", "cpuset"] {
            std::fs::create_dir_all(dir.path().join(c).join("kubepods/podx")).expect("mkdir");
        }
        apply_at(dir.path(), false, "/kubepods/podx", &resources()).expect("v1");
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).expect(p);
        assert_eq!(read("cpu/kubepods/podx/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/kubepods/podx/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/kubepods/podx/cpu.shares"), "512");
        assert_eq!(
            read("memory/kubepods/podx/memory.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(read("cpuset/kubepods/podx/cpuset.cpus"), "0");

        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(v2.path().join("kubepods/podx")).expect("mkdir");
        apply_at(v2.path(), true, "kubepods/podx", &resources()).expect("v2");
        let read =
            |p: &str| std::fs::read_to_string(v2.path().join("kubepods/podx").join(p)).expect(p);
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), weight(512).to_string());
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(weight(2), 1);
        assert_eq!(weight(262_144), 10_000);
        assert_eq!(weight(1024), 39);
    }

    #[test]
    fn the_overhead_is_added_where_the_pod_has_a_limit() {
        let o = Resources {
            cpu_quota: 10_000,
            cpu_shares: 20,
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let got = with_overhead(&resources(), Some(&o));
        assert_eq!(
            (
                got.cpu_quota,
                got.cpu_shares,
                got.memory_limit_in_bytes,
                got.cpu_period
            ),
            (60_000, 532, (256 << 20) + (1 << 20), 100_000)
        );
        let unlimited = Resources::default();
        assert_eq!(with_overhead(&unlimited, Some(&o)), unlimited);
        assert_eq!(with_overhead(&resources(), None), resources());
    }

    #[test]
    fn a_cgroup_that_is_not_there_is_a_clear_error_and_dots_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = apply_at(dir.path(), true, "/nowhere", &resources()).expect_err("missing");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("nowhere")),
            "{err}"
        );
        let err = apply_at(dir.path(), true, "/a/../b", &resources()).expect_err("dots");
        assert!(matches!(err, Error::InvalidArgument(_)));
    }
}
