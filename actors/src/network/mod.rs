//! The NetworkActor: pod network namespaces and CNI. It owns the network
//! allocation records and knows whether a CNI configuration is present (the
//! `NetworkReady` condition of CRI `Status`).

mod actor;
mod attach;
pub mod cni;
mod detach;
pub mod masquerade;
pub mod messages;
pub mod netns;
pub mod recover;
mod status;
pub mod store;

pub use actor::{Network, NetworkActor, NetworkConfig};
