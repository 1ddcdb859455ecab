//! The ImageActor: every image on the node, its names, content and snapshots.

mod actor;
pub mod store;

pub use actor::{ImageActor, Images};
