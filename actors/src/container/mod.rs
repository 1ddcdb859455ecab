//! The ContainerActor: containers in pods, their OCI specs, lifecycle and stats.

mod actor;
pub mod store;

pub use actor::{ContainerActor, Containers};
