//! ImageFsInfo: what images use of the filesystem, counted as du does
//! (allocated blocks, each inode once).

use super::messages::FsUsage;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Walks `dirs` without following symlinks. Blocking.
pub fn usage(mountpoint: &Path, dirs: &[&Path]) -> FsUsage {
    let mut seen = HashSet::new();
    let mut used_bytes = 0u64;
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            used_bytes += meta.blocks() * 512;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    FsUsage {
        mountpoint: mountpoint.display().to_string(),
        used_bytes,
        inodes_used: seen.len() as u64,
        timestamp_unix_nanos: crate::journal::unix_nanos(),
    }
}
