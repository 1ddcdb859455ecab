//! Messages the ImageActor answers.

use super::registry::Credentials;
use super::store::ImageRecord;
use crate::Result;
use actix::Message;
use std::path::PathBuf;

/// Pulls an image (CRI PullImage). Answers the image ID. Concurrent pulls
/// of the same reference share one download.
#[derive(Debug, Clone)]
pub struct PullImage {
    pub image: String,
    pub auth: Option<Credentials>,
}

impl Message for PullImage {
    type Result = Result<String>;
}

/// One image by ID, tag or digest (CRI ImageStatus). `None` for an image
/// that is not there: that is not an error.
#[derive(Debug, Clone)]
pub struct ImageStatus {
    pub image: String,
    /// Include the image config.
    pub verbose: bool,
}

impl Message for ImageStatus {
    type Result = Result<Option<ImageInfo>>;
}

/// Every image, or those a name matches (CRI ListImages).
#[derive(Debug, Clone, Default)]
pub struct ListImages {
    pub image: Option<String>,
}

impl Message for ListImages {
    type Result = Result<Vec<ImageInfo>>;
}

/// Removes an image with all its names (CRI RemoveImage); an unknown image
/// is success. Unreferenced content and snapshots are collected.
#[derive(Debug, Clone)]
pub struct RemoveImage {
    pub image: String,
}

impl Message for RemoveImage {
    type Result = Result<()>;
}

/// Bytes and inodes used by images (CRI ImageFsInfo).
#[derive(Debug, Clone, Default)]
pub struct ImageFsInfo;

impl Message for ImageFsInfo {
    type Result = Result<FsUsage>;
}

/// Imports the images of a tarball on berthd's host (admin ImportImage):
/// an OCI image layout or a `docker save` archive, plain or compressed as a
/// whole. Answers each image found with the tags the archive gave it. An
/// image named only by a bare tag (an OCI ref name such as `v1`) has no
/// repository, so it gets no tag: it is known by its ID. Importing the
/// same archive again changes nothing.
#[derive(Debug, Clone)]
pub struct ImportImage {
    /// Absolute.
    pub path: PathBuf,
}

impl Message for ImportImage {
    type Result = Result<Vec<ImportedImage>>;
}

/// An image an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The image ID (its config's digest).
    pub id: String,
    /// `repo:tag` names the archive gave it, normalised.
    pub repo_tags: Vec<String>,
}

/// An image as the CRI shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub record: ImageRecord,
    /// From USER, as the CRI defines them: one or the other.
    pub uid: Option<i64>,
    pub username: String,
    /// The image config (verbose only).
    pub config: Option<serde_json::Value>,
}

/// Usage of the image filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_unix_nanos: i64,
}

/// Prepares a container's root filesystem from an image (for the
/// ContainerActor): answers the mounted path. Idempotent for the same
/// container. With `volume_of`, it is an image volume of that container
/// instead: mounted read-only, removed with the container's own root
/// filesystem, and its image cannot be removed while it exists.
#[derive(Debug, Clone)]
pub struct PrepareRootfs {
    pub container_id: String,
    pub image: String,
    pub read_only: bool,
    pub volume_of: Option<String>,
    /// Changes to put into the new writable layer before it is mounted
    /// (a restored checkpoint's).
    pub diff: Option<super::rootfs::RootfsDiff>,
    /// The pod's own user namespace (its pin) and mapping: the layers are
    /// mounted idmapped through it and the writable layer is its root's.
    pub userns: Option<(std::path::PathBuf, crate::userns::IdMap)>,
}

impl Message for PrepareRootfs {
    type Result = Result<std::path::PathBuf>;
}

/// Unmounts and removes a container's root filesystem and its writable
/// layer, and the container's image volumes. Idempotent.
#[derive(Debug, Clone)]
pub struct RemoveRootfs {
    pub container_id: String,
}

impl Message for RemoveRootfs {
    type Result = Result<()>;
}

/// Makes sure berth's own sandbox image exists (built from the pause
/// program), recorded and pinned. Answers its ID and the read-only
/// directory that is its root filesystem.
///
/// berthd builds it once at start-up (`rebuild`: the pause program may
/// have changed since the last start); a pod's RunPodSandbox only asks
/// for it, and is answered from the record at once unless the image is
/// gone (then it is built again).
#[derive(Debug, Clone)]
pub struct EnsureSandboxImage {
    pub pause_binary: std::path::PathBuf,
    pub rebuild: bool,
}

impl Message for EnsureSandboxImage {
    type Result = Result<SandboxImage>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxImage {
    pub id: String,
    pub rootfs: std::path::PathBuf,
}
