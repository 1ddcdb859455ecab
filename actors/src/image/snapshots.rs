//! Snapshots: each layer unpacked once, into `<root>/snapshots/<chain id>/`,
//! and shared by every image whose layer stack has that chain. A snapshot
//! is unpacked into a staging directory and renamed into place only once
//! its content is verified, so a half-written snapshot is never visible.

use super::content::unique;
use super::reference::Digest;
use crate::{Error, Result};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

pub struct Snapshots {
    dir: PathBuf,
}

/// The chain IDs of a layer stack, bottom first: a layer's chain ID names
/// it together with everything below it.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                Digest::from_sha256(&sha2::Sha256::digest(format!("{parent} {d}").as_bytes()))
            }
        };
        out.push(next);
    }
    out
}

const STAGING: &str = ".staging-";

impl Snapshots {
    pub fn open(root: &Path) -> Result<Snapshots> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
        Ok(Snapshots { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    pub fn has(&self, chain: &Digest) -> bool {
        self.path(chain).is_dir()
    }

    /// A new, empty staging directory.
    pub fn staging(&self) -> Result<Staging> {
        let path = self.dir.join(unique(STAGING));
        std::fs::create_dir(&path)
            .map_err(|e| Error::Internal(format!("create {}: {e}", path.display())))?;
        Ok(Staging { path: Some(path) })
    }

    /// Puts a verified staging directory in place as `chain`. If another
    /// pull got there first, the copy is dropped.
    pub fn commit(&self, mut staging: Staging, chain: &Digest) -> Result<()> {
        let from = staging.path.take().unwrap_or_default();
        let to = self.path(chain);
        if to.is_dir() {
            remove_tree(&from);
            return Ok(());
        }
        std::fs::rename(&from, &to).map_err(|e| {
            remove_tree(&from);
            Error::Internal(format!("commit snapshot {}: {e}", to.display()))
        })
    }

    /// Every committed snapshot.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Internal(format!("list {}: {e}", self.dir.display())))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect())
    }

    pub fn remove(&self, chain: &Digest) {
        remove_tree(&self.path(chain));
    }

    /// Removes staging directories that interrupted pulls left.
    pub fn clean_staging(&self) -> usize {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(STAGING) {
                    remove_tree(&e.path());
                    n += 1;
                }
            }
        }
        n
    }
}

/// A staging directory, removed on drop unless committed.
pub struct Staging {
    path: Option<PathBuf>,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            remove_tree(&p);
        }
    }
}

/// Removes a directory tree, including immutable-looking leftovers (mode
/// 000 directories are no obstacle to root).
pub fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
