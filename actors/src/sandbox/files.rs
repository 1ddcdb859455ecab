//! The files a pod's containers share: `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` (from the pod's DNS config, or the host's) and a
//! per-pod `/dev/shm` (a tmpfs), under `<state>/sandboxes/<id>/`.

use super::messages::{DnsConfig, PodConfig};
use crate::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// The size of a pod's /dev/shm, as docker and containerd give it.
const SHM_BYTES: u64 = 64 << 20;

fn fail(what: &str, p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", p.display()))
}

/// Where a pod's shared files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub dir: PathBuf,
}

impl PodFiles {
    pub fn new(state: &Path, id: &str) -> PodFiles {
        PodFiles {
            dir: state.join("sandboxes").join(id),
        }
    }

    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }

    /// The pause container's root of a pod in its own user namespace: the
    /// sandbox image bound read-only where the pod's root can reach it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Binds the sandbox image's `rootfs` read-only at [`Self::root`].
    /// Blocking.
    pub fn bind_root(&self, rootfs: &Path) -> Result<()> {
        let root = self.root();
        std::fs::create_dir_all(&root).map_err(|e| fail("create", &root, e))?;
        mount(
            Some(rootfs),
            &root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind the sandbox image on", &root, e))?;
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| fail("remount read-only", &root, e))
    }

    /// Writes the files and mounts the shm tmpfs (none for a pod that uses
    /// the host's IPC namespace). Blocking.
    pub fn create(&self, config: &PodConfig, hostname: &str, host_ipc: bool) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("create", &self.dir, e))?;
        let write =
            |p: PathBuf, text: String| std::fs::write(&p, text).map_err(|e| fail("write", &p, e));
        write(self.hostname(), format!("{hostname}\n"))?;
        write(
            self.hosts(),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".into(),
        )?;
        let resolv = match &config.dns {
            Some(dns)
                if !dns.servers.is_empty()
                    || !dns.searches.is_empty()
                    || !dns.options.is_empty() =>
            {
                resolv_conf(dns)
            }
            _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        write(self.resolv_conf(), resolv)?;
        if !host_ipc {
            let shm = self.shm();
            std::fs::create_dir_all(&shm).map_err(|e| fail("create", &shm, e))?;
            let opts = format!("mode=1777,size={SHM_BYTES}");
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(opts.as_str()),
            )
            .map_err(|e| fail("mount shm on", &shm, e))?;
        }
        Ok(())
    }

    /// Unmounts the shm and removes the files; what is already gone is
    /// fine. Blocking.
    pub fn remove(&self) -> Result<()> {
        for m in [self.shm(), self.root()] {
            match umount2(&m, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(fail("unmount", &m, e)),
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("remove", &self.dir, e)),
            _ => Ok(()),
        }
    }
}

/// resolv.conf from the pod's DNS config.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_follows_the_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn files_and_shm_come_and_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = PodFiles::new(dir.path(), "pod1");
        files
            .create(&PodConfig::default(), "web-1", false)
            .expect("create (needs root for the shm mount)");
        assert_eq!(
            std::fs::read_to_string(files.hostname()).expect("hostname"),
            "web-1\n"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(mounts.contains(&files.shm().display().to_string()));
        files.remove().expect("remove");
        assert!(!files.dir.exists());
        files.remove().expect("twice");
    }
}
