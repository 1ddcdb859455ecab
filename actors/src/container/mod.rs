//! The ContainerActor: containers in pods, their OCI specs, lifecycle and stats.

mod actor;
pub mod checkpoint;
mod create;
mod exec;
mod exec_sync;
mod exit;
pub mod messages;
pub mod recover;
mod remove;
mod reopen_log;
pub mod spec;
mod start;
pub mod stats;
mod status;
mod stop;
pub mod store;
mod update;
mod usage;
pub mod validate;

#[cfg(test)]
mod tests;

pub use actor::{ContainerActor, ContainerDeps, Containers};
