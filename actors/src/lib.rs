//! berth's runtime logic, with no servers in it.
//!
//! - [`kernel`] runs any set of actors under supervision, each on its own
//!   arbiter, and keeps the registry the admin API reads.
//! - [`node`] starts berth's five actors on the kernel, in order, and holds
//!   the verbs that take more than one of them.
//! - [`journal`] is the durable record of everything berth owns (sled).
//! - One module per subsystem actor: [`image`], [`sandbox`], [`container`],
//!   [`network`], [`shim`]. Each has `actor.rs` (the thin actix shell),
//!   `messages.rs` (what it answers) and `store.rs` (its journal records).

pub mod checked;
pub mod container;
pub mod error;
pub mod events;
pub mod host;
pub mod ids;
pub mod image;
pub mod journal;
pub mod kernel;
pub mod metrics;
pub mod mounts;
pub mod network;
pub mod node;
pub mod sandbox;
pub mod shim;
pub mod userns;

pub use error::{Error, Result};
