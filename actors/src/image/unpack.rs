//! Applying a layer (a tar stream) into an empty snapshot directory, in
//! overlayfs's format:
//!
//! - OCI whiteouts become overlay whiteouts: `dir/.wh.NAME` is a 0/0
//!   character device `dir/NAME`; `dir/.wh..wh..opq` marks `dir` opaque
//!   (xattr `trusted.overlay.opaque=y`).
//! - Files, directories, symlinks and hard links keep their modes (setuid
//!   included), owners, mtimes and xattrs; character and block devices and
//!   fifos are made with mknod.
//! - Nothing may land outside the snapshot: an entry whose path is absolute
//!   or holds `..`, or whose parent path passes through a symlink, fails
//!   the layer (and so the pull) before anything is written for it; a hard
//!   link must point inside the snapshot.

use crate::{Error, Result};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// The xattr overlayfs reads to know a directory hides everything below it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Wraps a layer blob's reader in the decompressor its first bytes call for
/// (gzip, zstd, or none).
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

fn unsafe_entry(path: &Path, why: &str) -> Error {
    Error::FailedPrecondition(format!(
        "unsafe layer: entry {:?} {why}",
        path.display().to_string()
    ))
}

fn io_fail(path: &Path, e: impl Into<io::Error>) -> Error {
    let e: io::Error = e.into();
    Error::storing(
        &e,
        format!(
            "layer entry {:?}: {}",
            path.display().to_string(),
            Error::chain(&e)
        ),
        Error::DataLoss,
    )
}

/// The entry's path relative to the snapshot root, refusing absolute paths
/// and `..`. `None` for the root itself (`./`).
fn relative(path: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => return Err(unsafe_entry(path, "climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(path, "is an absolute path"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes sure every directory above `rel` exists inside `root` as a real
/// directory (created if missing), never passing through a symlink.
pub(crate) fn safe_parent(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(rel, "passes through a symlink"))
                }
                Ok(_) => {
                    // A file in the way of a directory: the later entry wins.
                    std::fs::remove_file(&dir).map_err(|e| io_fail(rel, e))?;
                    std::fs::create_dir(&dir).map_err(|e| io_fail(rel, e))?;
                }
                Err(_) => std::fs::create_dir(&dir).map_err(|e| io_fail(rel, e))?,
            }
        }
    }
    Ok(dir)
}

/// Removes whatever is at `path` (an earlier entry of the same name).
fn clear(path: &Path, keep_dir: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn set_owner_mode_mtime(path: &Path, header: &tar::Header) -> io::Result<()> {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if let Ok(mode) = header.mode() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Ok(mtime) = header.mtime() {
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        nix::sys::stat::utimensat(
            None,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
    }
    Ok(())
}

/// What applying a layer found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub entries: u64,
    pub whiteouts: u64,
}

/// Applies the (uncompressed) tar stream `layer` into `root`, an empty
/// directory.
pub fn apply(layer: impl Read, root: &Path) -> Result<Applied> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut applied = Applied::default();
    // Directory mtimes change as entries land in them: set them last.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| Error::DataLoss(format!("layer is not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::DataLoss(format!("corrupt layer: {e}")))?;
        let raw = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path_bytes()));
        let Some(rel) = relative(&raw)? else {
            continue;
        };
        applied.entries += 1;
        let parent = safe_parent(root, &rel)?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = entry.header().entry_type();

        if name == OPAQUE_MARKER {
            xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(|e| io_fail(&rel, e))?;
            applied.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry(&rel, "is a whiteout of nothing"));
            }
            let target = parent.join(hidden);
            clear(&target, false).map_err(|e| io_fail(&rel, e))?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| io_fail(&rel, e))?;
            applied.whiteouts += 1;
            continue;
        }

        let dest = root.join(&rel);
        clear(&dest, kind == EntryType::Directory).map_err(|e| io_fail(&rel, e))?;
        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let flag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(
                    h.device_major().ok().flatten().unwrap_or(0) as u64,
                    h.device_minor().ok().flatten().unwrap_or(0) as u64,
                );
                mknod(&dest, flag, Mode::empty(), dev).map_err(|e| io_fail(&rel, e))?;
                set_owner_mode_mtime(&dest, h).map_err(|e| io_fail(&rel, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| io_fail(&rel, e))?
                    .map(|t| t.into_owned())
                    .ok_or_else(|| unsafe_entry(&rel, "is a hard link to nothing"))?;
                if relative(&target)?.is_none() {
                    return Err(unsafe_entry(&rel, "is a hard link to the root"));
                }
                entry
                    .unpack_in(root)
                    .map_err(|e| unsafe_entry(&rel, &e.to_string()))?;
            }
            _ => {
                if kind == EntryType::Directory {
                    if let Ok(t) = entry.header().mtime() {
                        dir_times.push((dest.clone(), t));
                    }
                }
                let unpacked = entry.unpack_in(root).map_err(|e| {
                    if e.to_string().contains("outside of destination") {
                        unsafe_entry(&rel, "would land outside the snapshot")
                    } else {
                        io_fail(&rel, e)
                    }
                })?;
                if !unpacked {
                    return Err(unsafe_entry(&rel, "was refused by the tar reader"));
                }
            }
        }
    }
    for (dir, t) in dir_times.iter().rev() {
        let ts = nix::sys::time::TimeSpec::new(*t as i64, 0);
        let _ = nix::sys::stat::utimensat(
            None,
            dir,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(applied)
}

/// The entry names of a tar stream, in its order (for tests).
#[cfg(test)]
pub(crate) fn tar_names(tar: impl Read) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .expect("a tar")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests;
