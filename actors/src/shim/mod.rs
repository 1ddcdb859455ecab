//! The ShimSupervisor: one berth-shim process per container, started, watched, reconnected after a restart of berthd.

mod actor;
mod attach;
pub mod client;
mod exec;
mod exec_stream;
pub mod exits;
pub mod health;
mod host;
pub mod launch;
pub mod messages;
mod plumbing;
pub mod recover;
pub mod store;
mod task;
pub mod v2;
mod watch;

pub use actor::{bundle_dir, Runtime, ShimConfig, ShimDeps, ShimSupervisor, Shims};
pub use exits::{ExitSink, ExitSinks};
