//! The ContainerActor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A container as berth last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The reserved name: `<name>_<sandbox name>_<attempt>`.
    pub name: String,
    pub created_unix_nanos: i64,
}

impl Record for ContainerRecord {
    const KIND: Kind = Kind::Container;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}
