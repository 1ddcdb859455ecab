//! The ImageActor: every image on the node, its names, content and snapshots.

mod actor;
pub mod content;
pub mod reference;
pub mod snapshots;
pub mod store;
pub mod unpack;

pub use actor::{ImageActor, Images};
