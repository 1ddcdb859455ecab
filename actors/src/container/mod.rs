//! The ContainerActor: containers in pods, their OCI specs, lifecycle and stats.

mod actor;
mod create;
mod lifecycle;
pub mod messages;
pub mod spec;
pub mod stats;
mod status;
pub mod store;

pub use actor::{ContainerActor, ContainerDeps, Containers};
