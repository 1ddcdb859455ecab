//! The SandboxActor: pods (sandboxes), their pause containers, namespaces and cgroups.

mod actor;
pub mod files;
pub mod messages;
pub mod spec;
pub mod store;
// Called by RunPodSandbox, which is being built.
#[allow(dead_code)]
mod validate;

pub use actor::{SandboxActor, Sandboxes};
