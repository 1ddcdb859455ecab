//! The ContainerActor: containers in pods, their OCI specs, lifecycle and stats.

mod actor;
mod create;
mod lifecycle;
pub mod messages;
pub mod recover;
pub mod spec;
pub mod stats;
mod status;
pub mod store;

pub use actor::{ContainerActor, ContainerDeps, Containers};

/// A container's usage now: its cgroup (zero when it has none any more) and
/// its writable layer. Blocking.
fn usage(rootfs_dir: &std::path::Path, record: store::ContainerRecord) -> messages::ContainerUsage {
    let cgroup = if record.cgroups_path.is_empty() {
        stats::CgroupStats::default()
    } else {
        stats::read(&record.cgroups_path).unwrap_or_default()
    };
    let upper = rootfs_dir.join(&record.id).join("upper");
    let (bytes, inodes) = stats::dir_usage(&upper);
    messages::ContainerUsage {
        record,
        cgroup,
        writable_bytes: bytes,
        writable_inodes: inodes,
        writable_path: upper.display().to_string(),
    }
}
