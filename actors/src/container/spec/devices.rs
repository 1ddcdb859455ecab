//! Devices: CRI devices made available in the container, and the device
//! cgroup rules that allow them.

use super::*;

pub(super) fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(n) = major {
        b = b.major(n);
    }
    if let Some(n) = minor {
        b = b.minor(n);
    }
    b.build().map_err(spec_err)
}

/// Each CRI device as a node in the container and a cgroup rule letting
/// the container use it.
pub(super) fn devices(list: &[DeviceConfig]) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in list {
        if !Path::new(&d.container_path).is_absolute() {
            return Err(invalid(format!(
                "devices: container_path {:?} is not an absolute path",
                d.container_path
            )));
        }
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(format!(
                "devices: permissions {:?} for {} are not a combination of r, w and m",
                d.permissions, d.host_path
            )));
        }
        // Follows symlinks: /dev/disk/by-id/... names are links to nodes.
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| invalid(format!("devices: host_path {:?}: {e}", d.host_path)))?;
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(invalid(format!(
                "devices: host_path {:?} is not a device",
                d.host_path
            )));
        };
        let rdev = meta.rdev();
        let major = i64::try_from(nix::sys::stat::major(rdev)).map_err(spec_err)?;
        let minor = i64::try_from(nix::sys::stat::minor(rdev)).map_err(spec_err)?;
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(&d.container_path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(spec_err)?,
        );
        rules.push(device_rule(
            true,
            Some(typ),
            Some(major),
            Some(minor),
            access,
        )?);
    }
    Ok((nodes, rules))
}
