//! The checkpoint archive, laid out as CRI-O and containerd lay it out (an
//! uncompressed tar):
//!
//! - `config.dump`: the container (ID, name, image name and ID, runtime,
//!   when it was made and checkpointed);
//! - `spec.dump`: its OCI spec;
//! - `rootfs-diff.tar`: what it wrote in its root filesystem (its writable
//!   layer; an opaque directory carries the OCI opaque marker);
//! - `deleted.files`: what it deleted there, as a JSON list of paths;
//! - `checkpoint/`: CRIU's images of its processes.

use crate::image::rootfs::{inside, RootfsDiff};
use crate::image::unpack;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// `config.dump`, with the field names the archive format uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDump {
    pub id: String,
    pub name: String,
    /// The image as the container named it.
    #[serde(rename = "rootfsImage", default)]
    pub rootfs_image: String,
    /// The image's ID.
    #[serde(rename = "rootfsImageRef", default)]
    pub rootfs_image_ref: String,
    #[serde(rename = "rootfsImageName", default)]
    pub rootfs_image_name: String,
    #[serde(rename = "runtime", default)]
    pub runtime: String,
    #[serde(rename = "createdTime", default)]
    pub created_time: String,
    #[serde(rename = "checkpointedTime", default)]
    pub checkpointed_time: String,
}

impl ConfigDump {
    /// The image to restore on: by ID, else by name.
    pub fn image(&self) -> &str {
        [
            &self.rootfs_image_ref,
            &self.rootfs_image_name,
            &self.rootfs_image,
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .map(String::as_str)
        .unwrap_or_default()
    }
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Whether `meta` is an overlay whiteout (a 0/0 character device).
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Writes the parts beside the CRIU images already in `dir/checkpoint`:
/// the config and spec dumps, and the root filesystem's changes from the
/// writable layer `upper` (which may be missing: nothing changed).
pub fn write_parts(dir: &Path, config: &ConfigDump, spec: &[u8], upper: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| Error::Internal(format!("config.dump: {e}")))?;
    std::fs::write(dir.join(CONFIG_DUMP), json).map_err(|e| io("write", dir, e))?;
    std::fs::write(dir.join(SPEC_DUMP), spec).map_err(|e| io("write", dir, e))?;
    let diff = dir.join(ROOTFS_DIFF);
    let file = std::fs::File::create(&diff).map_err(|e| io("create", &diff, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let mut deleted = Vec::new();
    if upper.is_dir() {
        add_changes(&mut tar, upper, Path::new(""), &mut deleted)?;
    }
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| io("write", &diff, e))?;
    let list = serde_json::to_vec(&deleted).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(dir.join(DELETED_FILES), list).map_err(|e| io("write", dir, e))
}

/// Adds what is under `upper/rel` to `tar`, in name order; whiteouts go
/// to `deleted` instead.
fn add_changes<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    upper: &Path,
    rel: &Path,
    deleted: &mut Vec<String>,
) -> Result<()> {
    let dir = upper.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| io("read", &dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let inner = rel.join(&name);
        let path = upper.join(&inner);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io("stat", &path, e))?;
        if is_whiteout(&meta) {
            deleted.push(format!("/{}", inner.display()));
            continue;
        }
        tar.append_path_with_name(&path, &inner)
            .map_err(|e| io("archive", &path, e))?;
        if meta.is_dir() {
            if xattr::get(&path, unpack::OPAQUE_XATTR)
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y")
            {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, inner.join(unpack::OPAQUE_MARKER), std::io::empty())
                    .map_err(|e| io("archive", &path, e))?;
            }
            add_changes(tar, upper, &inner, deleted)?;
        }
    }
    Ok(())
}

/// Tars `dir` into `location`, whole or not at all (a partial file is
/// renamed into place once complete).
pub fn pack(dir: &Path, location: &Path) -> Result<()> {
    let partial = location.with_extension("partial");
    let written = (|| -> std::io::Result<()> {
        if let Some(parent) = location.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::File::create(&partial)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        tar.follow_symlinks(false);
        tar.append_dir_all(".", dir)?;
        let mut w = tar.into_inner()?;
        std::io::Write::flush(&mut w)?;
        w.get_ref().sync_all()?;
        std::fs::rename(&partial, location)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io("write the checkpoint archive", location, e)
    })
}

/// A checkpoint archive, unpacked for restore.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub config: ConfigDump,
    /// CRIU's images.
    pub images: PathBuf,
    pub diff: RootfsDiff,
}

/// Whether `path` looks like a checkpoint archive (a tar file holding
/// `config.dump`); cheap: only the entries' headers are read.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries.take(64).flatten().any(|e| {
        e.path().ok().is_some_and(|p| {
            p.components()
                .filter(|c| *c != Component::CurDir)
                .eq(Path::new(CONFIG_DUMP).components())
        })
    })
}

/// Unpacks the archive at `archive` into `dir` (empty) and reads it: an
/// archive that is not a checkpoint's is INVALID_ARGUMENT naming `field`.
pub fn unpack(archive: &Path, dir: &Path, field: &str) -> Result<Unpacked> {
    let bad = |why: String| {
        Error::InvalidArgument(format!(
            "{field}: {} is not a checkpoint archive: {why}",
            archive.display()
        ))
    };
    let file = std::fs::File::open(archive).map_err(|e| bad(e.to_string()))?;
    // The tar reader keeps every entry inside `dir` (no absolute paths, no
    // `..`, no writing through links).
    tar::Archive::new(std::io::BufReader::new(file))
        .unpack(dir)
        .map_err(|e| bad(e.to_string()))?;
    let text =
        std::fs::read(dir.join(CONFIG_DUMP)).map_err(|e| bad(format!("{CONFIG_DUMP}: {e}")))?;
    let config: ConfigDump =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{CONFIG_DUMP}: {e}")))?;
    if config.image().is_empty() {
        return Err(bad(format!("{CONFIG_DUMP} names no image")));
    }
    let images = dir.join(CHECKPOINT_DIR);
    if !images.is_dir() {
        return Err(bad(format!("it holds no {CHECKPOINT_DIR}/ of CRIU images")));
    }
    let tar = dir.join(ROOTFS_DIFF);
    let deleted = match std::fs::read(dir.join(DELETED_FILES)) {
        Ok(t) => serde_json::from_slice::<Vec<String>>(&t)
            .map_err(|e| bad(format!("{DELETED_FILES}: {e}")))?,
        Err(_) => Vec::new(),
    };
    for d in &deleted {
        if inside(d).is_none() {
            return Err(bad(format!(
                "{DELETED_FILES} names {d:?}, not a path inside the container"
            )));
        }
    }
    Ok(Unpacked {
        config,
        images,
        diff: RootfsDiff {
            tar: tar.is_file().then_some(tar),
            deleted,
        },
    })
}
