//! The ImageActor: every image on the node. It pulls from registries into
//! the content store (blobs by digest) and unpacks layers into overlay
//! snapshots (by chain ID), keeps image records and their names in the
//! journal, answers status and lists, removes images and collects what no
//! image refers to.

mod actor;
pub mod backend;
pub mod content;
mod flight;
mod fsinfo;
mod import;
pub mod manifest;
pub mod messages;
mod pull;
pub mod recover;
pub mod reference;
pub mod registry;
mod remove;
pub mod rootfs;
pub mod sandbox_image;
pub mod snapshots;
mod status;
pub mod store;
pub mod unpack;

pub use actor::{ImageActor, Images};
pub use backend::{ImageBackend, ImageConfig};
