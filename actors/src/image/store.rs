//! The ImageActor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// An image: ID is the digest of its config; its names as kubelet sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    #[serde(default)]
    pub size: u64,
}

impl Record for ImageRecord {
    const KIND: Kind = Kind::Image;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}
