//! The SandboxActor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A pod sandbox as berth last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The reserved name: `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub created_unix_nanos: i64,
}

impl Record for SandboxRecord {
    const KIND: Kind = Kind::Sandbox;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}
