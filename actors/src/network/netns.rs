//! Pod network namespaces, pinned by a bind mount under the state
//! directory (`<state>/netns/<sandbox id>`) so that they outlive every
//! process in them, and removed by unmounting the pin.

use crate::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Where a sandbox's namespace is pinned.
pub fn pin_path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(sandbox_id)
}

/// Where the user namespace of the pod whose network namespace is pinned
/// at `pin` is pinned (`<state>/userns/<sandbox id>`), if it has one.
pub fn userns_pin(pin: &Path) -> PathBuf {
    userns_dir(pin.parent().unwrap_or(Path::new("/"))).join(pin.file_name().unwrap_or_default())
}

/// Where pods' user namespaces are pinned, beside `netns_dir`
/// (`<state>/netns`): `<state>/userns`.
pub fn userns_dir(netns_dir: &Path) -> PathBuf {
    netns_dir.parent().unwrap_or(Path::new("/")).join("userns")
}

/// Creates a new network namespace pinned at `pin`; with `userns`, owned
/// by a new user namespace with that mapping (pinned at [`userns_pin`]).
/// Blocking.
pub fn create_for(pin: &Path, userns: Option<&crate::userns::IdMap>) -> Result<()> {
    match userns {
        Some(map) => crate::userns::create_pinned(map, &userns_pin(pin), pin),
        None => create(pin),
    }
}

/// Creates a new network namespace pinned at `pin`. Blocking: it runs on a
/// thread of its own, which enters the new namespace and ends, leaving the
/// caller's namespace untouched.
pub fn create(pin: &Path) -> Result<()> {
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    }
    std::fs::File::create(pin).map_err(|e| fail("create", pin, e))?;
    let target = pin.to_path_buf();
    let made = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| fail("unshare for", &target, e))?;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let own = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
            mount(
                Some(&own),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| fail("pin", &target, e))
        })
        .map_err(|e| fail("thread for", pin, e))?
        .join()
        .map_err(|_| fail("thread for", pin, "panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(pin);
    }
    made
}

/// Unpins and removes the namespace, and the pod's user namespace if it
/// has one; a pin that is already gone is fine.
pub fn remove(pin: &Path) -> Result<()> {
    crate::userns::unpin(&userns_pin(pin))?;
    match umount2(pin, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(fail("unmount", pin, e)),
    }
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("remove", pin, e)),
        _ => Ok(()),
    }
}

/// Whether `pin` is a mounted namespace (not just a leftover file).
pub fn is_pinned(pin: &Path) -> bool {
    crate::mounts::is_mount_point(pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_pinned_namespace_is_new_and_removable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = pin_path(dir.path(), "pod1");
        create(&pin).expect("create (needs root)");
        assert!(is_pinned(&pin));
        let ours = std::fs::metadata("/proc/self/ns/net")
            .expect("own ns")
            .ino();
        let theirs = std::fs::metadata(&pin).expect("pinned ns").ino();
        assert_ne!(ours, theirs, "a new namespace, not ours");
        remove(&pin).expect("remove");
        assert!(!pin.exists() && !is_pinned(&pin));
        remove(&pin).expect("removing twice is fine");
    }
}
