//! The ImageActor's journal records.

use super::reference::Digest;
use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// An image: its ID is the digest of its config; its names are as kubelet
/// sees them (`repo:tag` and `repo@digest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Manifest, config and compressed layers, in bytes.
    #[serde(default)]
    pub size: u64,
    /// Every content blob the image holds on to (kept from GC).
    #[serde(default)]
    pub blobs: Vec<Digest>,
    /// Its layer snapshots, bottom first.
    #[serde(default)]
    pub chain_ids: Vec<Digest>,
    /// The config's USER.
    #[serde(default)]
    pub user: String,
    /// Kept from kubelet's image GC (the sandbox image).
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub created_unix_nanos: i64,
}

impl Record for ImageRecord {
    const KIND: Kind = Kind::Image;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}

impl ImageRecord {
    /// Whether `name` (a `repo:tag` or `repo@digest`) names this image.
    pub fn named(&self, name: &str) -> bool {
        self.repo_tags.iter().any(|t| t == name) || self.repo_digests.iter().any(|d| d == name)
    }

    /// The config digest, which is the image ID.
    pub fn config_digest(&self) -> Option<Digest> {
        Digest::parse(&self.id).ok()
    }
}

/// The CRI's reading of an image's USER: a numeric user is a `uid`, a name
/// is a `username`; a group after `:` is not part of either.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::user_of;

    #[test]
    fn user_reads_as_the_cri_defines_it() {
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".to_string()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".to_string()));
        assert_eq!(user_of(""), (None, String::new()));
    }
}

/// A container's root filesystem: the overlay of its image's snapshots and
/// a writable upper layer. Journalled before it is mounted, so recovery can
/// unmount and remove one nobody finished with; its snapshots are kept
/// from GC while it exists, even if its image is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsRecord {
    pub container_id: String,
    pub image_id: String,
    /// The image's snapshots, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Where the root filesystem is mounted.
    pub target: String,
    /// The writable layer and overlayfs's work directory (none when
    /// read-only).
    pub upper: String,
    pub work: String,
    pub read_only: bool,
    /// The container an image volume belongs to; empty for a container's
    /// own root filesystem (whose owner is `container_id`).
    #[serde(default)]
    pub owner: String,
    /// The pinned user namespace the layers are idmapped through, and its
    /// mapping (a pod with its own user namespace); empty: none.
    #[serde(default)]
    pub userns: String,
    #[serde(default)]
    pub id_map: Option<crate::userns::IdMap>,
}

impl RootfsRecord {
    /// The container this root filesystem or image volume belongs to.
    pub fn owner(&self) -> &str {
        if self.owner.is_empty() {
            &self.container_id
        } else {
            &self.owner
        }
    }

    /// Whether this is an image volume (an image mounted into a container
    /// beside its root filesystem).
    pub fn is_volume(&self) -> bool {
        !self.owner.is_empty()
    }
}

impl Record for RootfsRecord {
    const KIND: Kind = Kind::Rootfs;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.container_id.clone()
    }
}
