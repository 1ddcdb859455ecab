//! User namespaces for pods (CRI `userns_options` with mode POD), as
//! containerd makes them: the pod's user namespace is made first, with
//! its network namespace inside it (so that the pod may mount sysfs and
//! own its network), both pinned by bind mounts; the pause container and
//! every container of the pod join them. The runtime needs no support for
//! idmapped mounts: berth mounts each container's image layers idmapped
//! (`mount_setattr(MOUNT_ATTR_IDMAP)` with the pod's user namespace) under
//! the overlay, and gives the writable layer to the pod's root, so that
//! the container's root owns its files.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A pod's one mapping: container IDs from 0 for `length`, to the host's
/// from `host_uid` (users) and `host_gid` (groups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub length: u32,
}

impl IdMap {
    /// The host's ID for container ID `id`, if it is mapped.
    pub fn host_uid_of(&self, id: u32) -> Option<u32> {
        (id < self.length).then(|| self.host_uid + id)
    }
}

fn fail(what: &str, p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", p.display()))
}

/// A process in a new user namespace (and network namespace, with `net`)
/// whose maps are written: its namespaces can be opened or pinned. Killed
/// when dropped.
struct Holder {
    child: std::process::Child,
}

impl Holder {
    fn start(map: &IdMap, net: bool) -> Result<Holder> {
        let mut flags = libc::CLONE_NEWUSER;
        if net {
            flags |= libc::CLONE_NEWNET;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: unshare(2) is async-signal-safe and touches nothing of
        // the parent; the child has one thread.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Internal(format!("a user namespace: {e}")))?;
        let holder = Holder { child };
        let pid = holder.child.id();
        for (file, host) in [("uid_map", map.host_uid), ("gid_map", map.host_gid)] {
            let path = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&path, format!("0 {host} {}\n", map.length))
                .map_err(|e| fail("write", &path, e))?;
        }
        Ok(holder)
    }

    fn ns(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.child.id()))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pin(ns: &Path, at: &Path) -> Result<()> {
    if let Some(dir) = at.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    }
    std::fs::File::create(at).map_err(|e| fail("create", at, e))?;
    nix::mount::mount(
        Some(ns),
        at,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("pin", at, e))
}

/// Makes a pod's user namespace with `map` and a network namespace owned
/// by it, pinned at `userns_pin` and `netns_pin`. Blocking. Nothing is
/// left when it fails.
pub fn create_pinned(map: &IdMap, userns_pin: &Path, netns_pin: &Path) -> Result<()> {
    let holder = Holder::start(map, true)?;
    let made = pin(&holder.ns("user"), userns_pin).and_then(|()| pin(&holder.ns("net"), netns_pin));
    drop(holder);
    if made.is_err() {
        let _ = unpin(netns_pin);
        let _ = unpin(userns_pin);
    }
    made
}

/// Unpins and removes a pinned namespace; one that is gone is fine.
pub fn unpin(pin: &Path) -> Result<()> {
    match nix::mount::umount2(pin, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(fail("unmount", pin, e)),
    }
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("remove", pin, e)),
        _ => Ok(()),
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;

/// A detached copy of the mount at `src` whose IDs are mapped through the
/// user namespace `userns` (an open nsfs file), read-only with
/// `read_only`. It lives as long as the fd or whatever mounts it.
pub fn idmapped(src: &Path, userns: &std::fs::File, read_only: bool) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(src.as_os_str().as_bytes())
        .map_err(|_| fail("open_tree", src, "a NUL in the path"))?;
    // SAFETY: open_tree takes a dirfd, a NUL-terminated path and flags and
    // returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(fail("open_tree", src, std::io::Error::last_os_error()));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr takes the fd, an empty path with AT_EMPTY_PATH,
    // and a mount_attr of the size given, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(fail(
            "idmap the mount of",
            src,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(tree)
}

/// Attaches a detached mount (from [`idmapped`]) at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| fail("move_mount to", target, "a NUL in the path"))?;
    let empty = c"";
    // SAFETY: move_mount takes the detached tree's fd with an empty path,
    // and a target path; both strings outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(fail(
            "move_mount to",
            target,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Whether a pod's root, a user the node does not know, can reach berth's
/// state directory `state` (where root filesystems and pod files are
/// mounted): every directory on the way must be searchable by others.
pub fn reachable(state: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in state.ancestors() {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) is not searchable by others, so a pod's root could not reach its root filesystem under {}",
                dir.display(),
                meta.permissions().mode() & 0o7777,
                state.display()
            ));
        }
    }
    Ok(())
}

/// Whether pods can have user namespaces here: `state` is reachable (see
/// [`reachable`]) and the kernel mounts an overlay on idmapped layers in
/// `work` (on the filesystem berth's snapshots are on). The error says
/// why not.
pub fn probe(work: &Path, state: &Path) -> std::result::Result<(), String> {
    reachable(state)?;
    idmapped_overlay(work)
}

fn idmapped_overlay(work: &Path) -> std::result::Result<(), String> {
    let dir = work.join(format!("userns-probe-{}", std::process::id()));
    let lower = dir.join("lower");
    let (upper, wdir, target) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    let tried = (|| -> Result<()> {
        for d in [&lower, &upper, &wdir, &target] {
            std::fs::create_dir_all(d).map_err(|e| fail("create", d, e))?;
        }
        let holder = Holder::start(
            &IdMap {
                host_uid: 100_000,
                host_gid: 100_000,
                length: 65_536,
            },
            false,
        )?;
        let userns = std::fs::File::open(holder.ns("user"))
            .map_err(|e| fail("open", &holder.ns("user"), e))?;
        drop(holder);
        let layer = idmapped(&lower, &userns, true)?;
        let opts = format!(
            "lowerdir=/proc/self/fd/{},upperdir={},workdir={}",
            layer.as_raw_fd(),
            upper.display(),
            wdir.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| fail("mount an overlay on idmapped layers at", &target, e))?;
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    tried.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_pods_namespaces_are_made_pinned_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (u, n) = (dir.path().join("user"), dir.path().join("net"));
        let map = IdMap {
            host_uid: 200_000,
            host_gid: 300_000,
            length: 65_536,
        };
        create_pinned(&map, &u, &n).expect("namespaces (the tests run as root)");
        assert!(crate::mounts::is_mount_point(&u));
        assert!(crate::mounts::is_mount_point(&n));
        // The pinned user namespace is not ours, and maps as asked.
        let own = std::fs::metadata("/proc/self/ns/user").expect("own userns");
        assert_ne!(std::fs::metadata(&u).expect("pin").ino(), own.ino());
        unpin(&n).expect("unpin");
        unpin(&u).expect("unpin");
        assert!(!u.exists() && !n.exists());
        unpin(&u).expect("unpinning twice is fine");
    }

    #[test]
    fn this_kernel_mounts_overlays_on_idmapped_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(idmapped_overlay(dir.path()), Ok(()));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_state_directory_behind_a_closed_one_is_out_of_reach() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let why = probe(dir.path(), &state).expect_err("closed");
        assert!(
            why.contains("mode 700") && why.contains("not searchable"),
            "{why}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        if reachable(dir.path()).is_ok() {
            assert_eq!(probe(&state, &state), Ok(()));
        }
    }

    #[test]
    fn mapped_ids() {
        let map = IdMap {
            host_uid: 1000,
            host_gid: 2000,
            length: 10,
        };
        assert_eq!(map.host_uid_of(0), Some(1000));
        assert_eq!(map.host_uid_of(9), Some(1009));
        assert_eq!(map.host_uid_of(10), None);
    }
}
