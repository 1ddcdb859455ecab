//! PrepareRootfs and RemoveRootfs: a container's root filesystem is an
//! overlay mount of its image's snapshots (lower, read-only, shared) and a
//! writable upper layer of its own, under `<root>/rootfs/<id>/`, mounted at
//! `<state>/rootfs/<id>`. A read-only root filesystem has no upper layer.

use super::actor::Images;
use super::snapshots::remove_tree;
use super::store::RootfsRecord;
use super::unpack;
use crate::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::path::{Component, Path, PathBuf};

fn fail(what: &str, p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", p.display()))
}

/// Mounts the record's overlay. Blocking.
pub fn mount_rootfs(r: &RootfsRecord, snapshots: &[PathBuf]) -> Result<()> {
    let target = Path::new(&r.target);
    std::fs::create_dir_all(target).map_err(|e| fail("create", target, e))?;
    if !r.userns.is_empty() {
        return mount_idmapped(r, snapshots);
    }
    // overlayfs stacks lowerdir left over right: the top layer first.
    let lowers: Vec<String> = snapshots
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if r.read_only && lowers.len() == 1 {
        // overlayfs wants two lower layers when there is no upper one: a
        // read-only bind mount does the same for one layer.
        mount(
            Some(lowers[0].as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind", target, e))?;
        return mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| fail("remount read-only", target, e));
    }
    mount_overlay(r, &lowers)
}

/// The overlay of `lowers` (top first), with the record's writable layer
/// unless it is read-only.
fn mount_overlay(r: &RootfsRecord, lowers: &[String]) -> Result<()> {
    let target = Path::new(&r.target);
    let mut opts = format!("lowerdir={}", lowers.join(":"));
    let mut flags = MsFlags::empty();
    if r.read_only {
        flags |= MsFlags::MS_RDONLY;
    } else {
        for d in [&r.upper, &r.work] {
            std::fs::create_dir_all(d).map_err(|e| fail("create", Path::new(d), e))?;
        }
        opts.push_str(&format!(",upperdir={},workdir={}", r.upper, r.work));
    }
    // The kernel takes at most a page of mount options.
    if opts.len() >= 4000 {
        return Err(Error::FailedPrecondition(format!(
            "image {} has too many layers ({}) for one overlay mount",
            r.image_id,
            lowers.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(|e| fail("mount overlay on", target, e))
}

/// The root filesystem of a container in its pod's own user namespace:
/// each layer idmapped through the pod's user namespace (so the files of
/// the node's root are the pod's root's), under an overlay whose writable
/// layer belongs to the pod's root. Blocking.
fn mount_idmapped(r: &RootfsRecord, snapshots: &[PathBuf]) -> Result<()> {
    let userns_path = Path::new(&r.userns);
    let userns = std::fs::File::open(userns_path).map_err(|e| fail("open", userns_path, e))?;
    // The idmapped layers live as long as these fds, or the overlay.
    let layers = snapshots
        .iter()
        .rev()
        .map(|p| crate::userns::idmapped(p, &userns, true))
        .collect::<Result<Vec<_>>>()?;
    if r.read_only && layers.len() == 1 {
        return crate::userns::attach(&layers[0], Path::new(&r.target));
    }
    if !r.read_only {
        if let Some(map) = &r.id_map {
            let upper = Path::new(&r.upper);
            std::fs::create_dir_all(upper).map_err(|e| fail("create", upper, e))?;
            nix::unistd::chown(
                upper,
                Some(nix::unistd::Uid::from_raw(map.host_uid)),
                Some(nix::unistd::Gid::from_raw(map.host_gid)),
            )
            .map_err(|e| fail("give the pod's root", upper, e))?;
        }
    }
    use std::os::fd::AsRawFd;
    let lowers: Vec<String> = layers
        .iter()
        .map(|l| format!("/proc/self/fd/{}", l.as_raw_fd()))
        .collect();
    mount_overlay(r, &lowers)
}

/// Unmounts and removes a root filesystem; what is gone is fine. Blocking.
pub fn remove_rootfs(r: &RootfsRecord) -> Result<()> {
    let target = Path::new(&r.target);
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(fail("unmount", target, e)),
    }
    remove_tree(target);
    if let Some(dir) = Path::new(&r.upper).parent() {
        remove_tree(dir);
    }
    Ok(())
}

/// A root filesystem's changes, to put into a new writable layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsDiff {
    /// The changed files (a tar), if any.
    pub tar: Option<PathBuf>,
    /// Deleted paths, absolute as the container saw them.
    pub deleted: Vec<String>,
}

/// `path` (absolute, as the container saw it) relative to the root, if it
/// names something below it without `..`.
pub fn inside(path: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => rel.push(p),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!rel.as_os_str().is_empty()).then_some(rel)
}

/// Puts `diff` into `upper`, a new container's writable layer before it
/// is mounted: the changed files as they were, each deleted path as an
/// overlay whiteout.
pub fn apply_diff(diff: &RootfsDiff, upper: &Path) -> Result<()> {
    std::fs::create_dir_all(upper).map_err(|e| fail("create", upper, e))?;
    if let Some(tar) = &diff.tar {
        let file = std::fs::File::open(tar).map_err(|e| fail("open", tar, e))?;
        unpack::apply(std::io::BufReader::new(file), upper)?;
    }
    for d in &diff.deleted {
        let rel = inside(d).ok_or_else(|| {
            Error::InvalidArgument(format!("deleted path {d:?} is not inside the container"))
        })?;
        let parent = unpack::safe_parent(upper, &rel)?;
        let Some(name) = rel.file_name() else {
            continue;
        };
        let target = parent.join(name);
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| fail("whiteout", &target, e))?;
    }
    Ok(())
}

impl Images {
    /// The record for a new root filesystem of `container_id` from `image`.
    pub(super) fn rootfs_record(
        &self,
        container_id: &str,
        image: &str,
        read_only: bool,
        volume_of: Option<String>,
        userns: Option<(PathBuf, crate::userns::IdMap)>,
    ) -> Result<RootfsRecord> {
        if container_id.is_empty()
            || container_id.contains(['/', '\0'])
            || container_id.starts_with('.')
        {
            return Err(Error::InvalidArgument(format!(
                "container id {container_id:?} cannot name a directory"
            )));
        }
        let img = self
            .find(image)?
            .ok_or_else(|| Error::NotFound(format!("image {image:?} is not present")))?;
        if img.chain_ids.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "image {} has no layers",
                img.id
            )));
        }
        let root = &self.backend.config.root;
        let own = root.join("rootfs").join(container_id);
        Ok(RootfsRecord {
            container_id: container_id.to_string(),
            image_id: img.id.clone(),
            chain_ids: img.chain_ids.clone(),
            target: self
                .backend
                .config
                .state
                .join("rootfs")
                .join(container_id)
                .display()
                .to_string(),
            upper: own.join("upper").display().to_string(),
            work: own.join("work").display().to_string(),
            // An image volume is read-only, whatever was asked.
            read_only: read_only || volume_of.is_some(),
            owner: volume_of.unwrap_or_default(),
            userns: userns
                .as_ref()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default(),
            id_map: userns.map(|(_, m)| m),
        })
    }

    pub(super) fn snapshot_paths(&self, r: &RootfsRecord) -> Result<Vec<PathBuf>> {
        r.chain_ids
            .iter()
            .map(|c| {
                let p = self.backend.snapshots.path(c);
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(Error::FailedPrecondition(format!(
                        "snapshot {c} of image {} is missing",
                        r.image_id
                    )))
                }
            })
            .collect()
    }
}

/// Whether `target` is a mount point now.
pub fn is_mounted(target: &str) -> bool {
    crate::mounts::is_mount_point(Path::new(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    fn record(dir: &Path, id: &str, read_only: bool) -> RootfsRecord {
        RootfsRecord {
            container_id: id.into(),
            image_id: "sha256:x".into(),
            chain_ids: vec![],
            target: dir.join("state/rootfs").join(id).display().to_string(),
            upper: dir
                .join("root/rootfs")
                .join(id)
                .join("upper")
                .display()
                .to_string(),
            work: dir
                .join("root/rootfs")
                .join(id)
                .join("work")
                .display()
                .to_string(),
            read_only,
            ..Default::default()
        }
    }

    #[test]
    fn a_writable_overlay_sees_every_layer_and_writes_only_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lower, top) = (dir.path().join("l0"), dir.path().join("l1"));
        std::fs::create_dir_all(lower.join("etc")).expect("mkdir");
        std::fs::write(lower.join("etc/a"), "a").expect("write");
        std::fs::write(lower.join("etc/gone"), "x").expect("write");
        std::fs::create_dir_all(top.join("etc")).expect("mkdir");
        std::fs::write(top.join("etc/b"), "b").expect("write");
        mknod(
            &top.join("etc/gone"),
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .expect("whiteout");

        let r = record(dir.path(), "c1", false);
        mount_rootfs(&r, &[lower.clone(), top.clone()]).expect("mount (needs root)");
        let t = Path::new(&r.target);
        let seen = (
            std::fs::read_to_string(t.join("etc/a")).ok(),
            std::fs::read_to_string(t.join("etc/b")).ok(),
            t.join("etc/gone").exists(),
            std::fs::write(t.join("etc/new"), "n").is_ok(),
        );
        assert!(is_mounted(&r.target));
        remove_rootfs(&r).expect("remove");
        assert_eq!(seen, (Some("a".into()), Some("b".into()), false, true));
        assert!(!lower.join("etc/new").exists() && !top.join("etc/new").exists());
        assert!(!t.exists() && !Path::new(&r.upper).exists());
        remove_rootfs(&r).expect("twice");
    }

    #[test]
    fn a_restored_diff_shows_its_files_and_hides_its_deletions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lower = dir.path().join("l0");
        std::fs::create_dir_all(lower.join("etc")).expect("mkdir");
        std::fs::write(lower.join("etc/kept"), "k").expect("write");
        std::fs::write(lower.join("etc/gone"), "g").expect("write");
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, "etc/new", &b"new"[..])
            .expect("entry");
        let tar_path = dir.path().join("diff.tar");
        std::fs::write(&tar_path, tar.into_inner().expect("tar")).expect("write");
        let r = record(dir.path(), "c3", false);
        let hostile = RootfsDiff {
            tar: None,
            deleted: vec!["/../../outside".into()],
        };
        assert!(apply_diff(&hostile, Path::new(&r.upper)).is_err());
        let diff = RootfsDiff {
            tar: Some(tar_path),
            deleted: vec!["/etc/gone".into(), "/etc/never-was".into()],
        };
        apply_diff(&diff, Path::new(&r.upper)).expect("apply");
        mount_rootfs(&r, std::slice::from_ref(&lower)).expect("mount");
        let t = Path::new(&r.target);
        let seen = (
            std::fs::read_to_string(t.join("etc/new")).ok(),
            std::fs::read_to_string(t.join("etc/kept")).ok(),
            t.join("etc/gone").exists(),
            t.join("etc/never-was").exists(),
        );
        remove_rootfs(&r).expect("remove");
        assert_eq!(seen, (Some("new".into()), Some("k".into()), false, false));
        assert!(lower.join("etc/gone").exists(), "the image is untouched");
    }

    #[test]
    fn a_read_only_single_layer_rootfs_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let only = dir.path().join("l0");
        std::fs::create_dir_all(&only).expect("mkdir");
        std::fs::write(only.join("f"), "f").expect("write");
        let r = record(dir.path(), "c2", true);
        mount_rootfs(&r, std::slice::from_ref(&only)).expect("mount");
        let t = Path::new(&r.target);
        let wrote = std::fs::write(t.join("g"), "g");
        let read = std::fs::read_to_string(t.join("f")).ok();
        remove_rootfs(&r).expect("remove");
        assert!(wrote.is_err(), "read-only");
        assert_eq!(read, Some("f".into()));
        assert!(only.join("f").exists(), "the snapshot itself is untouched");
    }
}
