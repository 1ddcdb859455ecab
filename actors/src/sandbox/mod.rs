//! The SandboxActor: pods (sandboxes), their pause containers, namespaces and cgroups.

mod actor;
pub mod store;

pub use actor::{SandboxActor, Sandboxes};
