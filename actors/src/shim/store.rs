//! The ShimSupervisor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A shim: which container it serves and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub container_id: String,
    pub pid: u32,
    /// The shim's ttrpc socket.
    pub address: String,
}

impl Record for ShimRecord {
    const KIND: Kind = Kind::Shim;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.container_id.clone()
    }
}
