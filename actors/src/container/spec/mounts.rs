//! Mounts: the runtime's defaults, the pod's shared files, the CRI mounts
//! (propagation, read-only, recursive read-only) and the host paths they need.

use super::*;

pub(super) fn bind(destination: &Path, source: &Path, options: Vec<String>) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(spec_err)
}

pub(super) fn propagation_option(p: Propagation) -> &'static str {
    match p {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => "rslave",
        Propagation::Bidirectional => "rshared",
    }
}

/// A CRI mount as a bind mount, checked. `rro` says whether the pod's
/// runtime handler makes recursive read-only mounts on this node.
pub(super) fn cri_mount(m: &MountConfig, rro: bool) -> Result<Mount> {
    if !Path::new(&m.container_path).is_absolute() {
        return Err(invalid(format!(
            "mounts: container_path {:?} is not an absolute path",
            m.container_path
        )));
    }
    if !Path::new(&m.host_path).is_absolute() {
        return Err(invalid(format!(
            "mounts: host_path {:?} (for {}) is not an absolute path",
            m.host_path, m.container_path
        )));
    }
    if m.recursive_read_only && !m.readonly {
        return Err(invalid(format!(
            "mounts: {} is recursive_read_only but not readonly",
            m.container_path
        )));
    }
    if m.recursive_read_only && m.propagation != Propagation::Private {
        return Err(invalid(format!(
            "mounts: {} is recursive_read_only, which needs private propagation",
            m.container_path
        )));
    }
    if m.recursive_read_only && !rro {
        return Err(Error::FailedPrecondition(format!(
            "mounts: {} is recursive_read_only, which this runtime handler cannot do on this node",
            m.container_path
        )));
    }
    let access = if m.recursive_read_only {
        "rro"
    } else if m.readonly {
        "ro"
    } else {
        "rw"
    };
    bind(
        Path::new(&m.container_path),
        Path::new(&m.host_path),
        vec![
            "rbind".to_string(),
            propagation_option(m.propagation).to_string(),
            access.to_string(),
        ],
    )
}

/// Mounts are made in order: a parent must come before what is mounted
/// under it, or it would hide it.
pub(super) fn depth(m: &Mount) -> usize {
    m.destination()
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

pub(super) fn mounts(inputs: &SpecInputs) -> Result<Vec<Mount>> {
    let config = &inputs.config;
    let privileged = config.security.privileged;
    let rro = inputs
        .host
        .recursive_read_only
        .contains(&inputs.runtime_handler);
    let cri: Vec<Mount> = config
        .mounts
        .iter()
        .map(|m| cri_mount(m, rro))
        .collect::<Result<_>>()?;
    let targeted = |dest: &Path| cri.iter().any(|m| m.destination() == dest);
    let dev = Path::new("/dev");
    let dev_shm = Path::new("/dev/shm");
    // A pod on the host's IPC namespace gets the host's /dev/shm.
    let shm = inputs.shm.clone().or_else(|| {
        (inputs.pod_security.namespaces.ipc == NamespaceMode::Node)
            .then(|| PathBuf::from("/dev/shm"))
    });

    let mut out = Vec::new();
    for mut m in Spec::default().mounts().clone().unwrap_or_default() {
        let dest = m.destination().clone();
        // A CRI mount replaces the default at its path; a CRI /dev replaces
        // everything the defaults put under /dev.
        if targeted(&dest) || (dest.starts_with(dev) && targeted(dev)) {
            continue;
        }
        if dest == dev_shm && shm.is_some() {
            continue;
        }
        if dest == dev && privileged {
            // Every host device, by binding the host's /dev; the devpts,
            // shm and mqueue mounts still go over it.
            out.push(bind(
                dev,
                dev,
                vec![
                    "rbind".into(),
                    "rprivate".into(),
                    "nosuid".into(),
                    "rw".into(),
                ],
            )?);
            continue;
        }
        if privileged && (dest == Path::new("/sys") || dest == Path::new("/sys/fs/cgroup")) {
            if let Some(options) = m.options_mut() {
                for o in options.iter_mut().filter(|o| *o == "ro") {
                    *o = "rw".to_string();
                }
            }
        }
        out.push(m);
    }

    let rw = || {
        vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            "rw".to_string(),
        ]
    };
    let mut extra = Vec::new();
    if let Some(shm) = &shm {
        if !targeted(dev_shm) && !targeted(dev) {
            extra.push(bind(dev_shm, shm, rw())?);
        }
    }
    for (dest, source) in [
        ("/etc/hostname", &inputs.hostname_file),
        ("/etc/hosts", &inputs.hosts_file),
        ("/etc/resolv.conf", &inputs.resolv_conf),
    ] {
        if !targeted(Path::new(dest)) {
            extra.push(bind(Path::new(dest), source, rw())?);
        }
    }
    extra.extend(cri);
    // Stable: among mounts of the same depth, kubelet's order is kept.
    extra.sort_by_key(depth);
    out.extend(extra);
    Ok(out)
}

/// A mount that propagates needs the container's root to propagate too.
pub(super) fn rootfs_propagation(mounts: &[MountConfig]) -> Option<String> {
    if mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared".to_string())
    } else if mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave".to_string())
    } else {
        None
    }
}

/// Creates the host path of every CRI mount that does not exist yet, as a
/// directory (kubelet expects that of a runtime). Blocking; the one side
/// effect of making a container's spec, kept out of [`build`].
pub fn prepare_host_paths(config: &ContainerConfig) -> Result<()> {
    // An image volume's source is the image's, made by berth.
    for m in config.mounts.iter().filter(|m| m.image.is_empty()) {
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(invalid(format!(
                "mounts: host_path {:?} (for {}) is not an absolute path",
                m.host_path, m.container_path
            )));
        }
        match std::fs::symlink_metadata(host) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(host).map_err(|e| {
                    Error::Internal(format!("create mount host_path {}: {e}", host.display()))
                })?;
            }
            Err(e) => {
                return Err(Error::Internal(format!(
                    "mount host_path {}: {e}",
                    host.display()
                )))
            }
        }
    }
    Ok(())
}

/// Where an image volume's mount comes from: the mounted image's root, or
/// the directory or file at `sub_path` in it, with symbolic links resolved
/// inside the image. None when the sub-path does not exist there.
pub fn image_volume_source(root: &Path, sub_path: &str) -> Result<Option<PathBuf>> {
    if sub_path.is_empty() {
        return Ok(Some(root.to_path_buf()));
    }
    super::user::resolve_in_root(root, &Path::new("/").join(sub_path)).map_err(|e| {
        Error::Internal(format!(
            "image volume sub-path {sub_path:?} in {}: {e}",
            root.display()
        ))
    })
}
