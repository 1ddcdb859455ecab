//! Capabilities: containerd's default set, CRI adds and drops, and what
//! privileged and "ALL" mean (every capability berthd itself holds).

use super::*;

/// containerd's default capability set for an unprivileged container.
pub(super) const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A capability as kubelet may spell it: any case, with or without
/// `CAP_`. None for "ALL".
pub(crate) fn parse_capability(field: &str, name: &str) -> Result<Option<Capability>> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(None);
    }
    Capability::from_str(bare)
        .map(Some)
        .map_err(|_| invalid(format!("{field}: unknown capability {name:?}")))
}

/// containerd's order: "ALL" added, then "ALL" dropped, then each single
/// add, then each single drop, so that add ALL + drop CHOWN is everything
/// but CHOWN and drop ALL + add NET_ADMIN is NET_ADMIN alone. "ALL" and
/// privileged mean every capability berthd holds (`held`), as containerd
/// and CRI-O grant: no runtime can give more than its own bounding set.
pub(super) fn capability_set(sec: &ContainerSecurity, held: &Capabilities) -> Result<Capabilities> {
    let parse = |field: &str, list: &[String]| -> Result<(bool, Vec<Capability>)> {
        let mut all = false;
        let mut caps = Vec::new();
        for name in list {
            match parse_capability(field, name)? {
                Some(c) => caps.push(c),
                None => all = true,
            }
        }
        Ok((all, caps))
    };
    let (add_all, add) = parse("capabilities_add", &sec.capabilities_add)?;
    let (drop_all, drop) = parse("capabilities_drop", &sec.capabilities_drop)?;
    if sec.privileged {
        return Ok(held.clone());
    }
    if let Some(c) = add.iter().find(|c| !held.contains(c)) {
        return Err(Error::FailedPrecondition(format!(
            "capabilities_add: CAP_{c} is not held by berthd on this node, so no container can have it"
        )));
    }
    let mut set: Capabilities = DEFAULT_CAPABILITIES
        .into_iter()
        .filter(|c| held.contains(c))
        .collect();
    if add_all {
        set.extend(held.iter().copied());
    }
    if drop_all {
        set.clear();
    }
    set.extend(add);
    for c in drop {
        set.remove(&c);
    }
    Ok(set)
}

/// Inheritable and ambient stay empty: a non-root process in the container
/// gets no capability it did not ask for through file capabilities.
pub(super) fn capabilities(
    sec: &ContainerSecurity,
    held: &Capabilities,
) -> Result<LinuxCapabilities> {
    let set = capability_set(sec, held)?;
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    Ok(caps)
}
