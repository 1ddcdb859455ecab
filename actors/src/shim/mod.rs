//! The ShimSupervisor: one berth-shim process per container, started, watched, reconnected after a restart of berthd.

mod actor;
pub mod store;

pub use actor::{ShimSupervisor, Shims};
