//! The SandboxActor: pods (sandboxes), their pause containers, namespaces and cgroups.

mod actor;
pub mod files;
pub mod messages;
pub mod recover;
mod remove;
pub mod resize;
mod run;
pub mod spec;
mod status;
mod stop;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

pub use actor::{SandboxActor, SandboxConfig, SandboxDeps, Sandboxes};

/// Checks a cgroup parent as RunPodSandbox does (for the daemon's config).
pub fn validate_cgroup_parent(parent: &str) -> crate::Result<()> {
    validate::cgroup_parent(parent)
}
