//! The container's user: uid, gid and supplementary groups from the CRI
//! security context and the image's USER, looked up in the image's own
//! `/etc/passwd` and `/etc/group` (read without leaving the root filesystem).

use super::*;

/// How many symbolic links a lookup inside the root filesystem may follow
/// (the kernel's own limit).
pub(super) const MAX_SYMLINKS: usize = 40;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone)]
pub(super) struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone)]
pub(super) struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

pub(super) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            // Lines that do not parse (NIS `+` entries, damage) are skipped,
            // as libc's lookups skip them.
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.trim().parse().ok()?,
                gid: fields.get(3)?.trim().parse().ok()?,
            })
        })
        .collect()
}

pub(super) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: fields.first()?.to_string(),
                gid: fields.get(2)?.trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Where `inner` (absolute, as the container sees it) is on the host, with
/// every symbolic link on the way resolved as if `root` were `/`: a link to
/// `/etc/shadow` or to `../../..` stays inside the image. None when some
/// part of the path does not exist.
pub(super) fn resolve_in_root(root: &Path, inner: &Path) -> std::io::Result<Option<PathBuf>> {
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, inner);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            // `..` at the top stays at the top, as it does at `/`.
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Ok(None);
        }
        let target = std::fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        push_components(&mut pending, &target);
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(Some(path))
}

/// Queues `path`'s components so that its first is walked next; the root
/// and `.` say nothing about where to go.
pub(super) fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(s) => pending.push(s.to_os_string()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The text of a file inside the image (`/etc/passwd`), or None when it is
/// missing or not a regular file.
pub(super) fn read_in_rootfs(rootfs: &Path, inner: &str) -> Result<Option<String>> {
    let fail = |e: std::io::Error| Error::Internal(format!("read {inner} in the image: {e}"));
    let Some(path) = resolve_in_root(rootfs, Path::new(inner)).map_err(fail)? else {
        return Ok(None);
    };
    // O_NOFOLLOW: the last component was just found not to be a link; if
    // it became one since, refuse it rather than follow it out.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    if !file.metadata().map_err(fail)?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(fail)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A CRI id (i64) as the u32 the kernel takes.
pub(super) fn id(field: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| invalid(format!("{field} {value} is not a valid id")))
}

/// The effective uid, gid and supplementary gids of the container's
/// process: `run_as_user`, else `run_as_username`, else the image's USER
/// (`name`, `uid`, `uid:gid`, `name:gid`, `uid:group`, `name:group`),
/// looked up in the image's own `/etc/passwd` and `/etc/group`. The gid is
/// `run_as_group`, else USER's group, else the user's primary group (0 for
/// a uid with no passwd entry). The supplementary list starts with that
/// gid (runc's setgroups replaces the whole list), then, unless the policy
/// is Strict, the groups `/etc/group` lists the user in, then the CRI's
/// `supplemental_groups`.
pub fn resolve_user(
    rootfs: &Path,
    image_user: &str,
    sec: &ContainerSecurity,
) -> Result<(u32, u32, Vec<u32>)> {
    let passwd = parse_passwd(&read_in_rootfs(rootfs, "/etc/passwd")?.unwrap_or_default());
    let groups = parse_group(&read_in_rootfs(rootfs, "/etc/group")?.unwrap_or_default());
    let by_uid = |uid: u32| passwd.iter().find(|e| e.uid == uid);
    let by_name = |name: &str| passwd.iter().find(|e| e.name == name);

    let (uid, entry, user_group) = if let Some(v) = sec.run_as_user {
        let uid = id("run_as_user", v)?;
        (uid, by_uid(uid), None)
    } else if !sec.run_as_username.is_empty() {
        let entry = by_name(&sec.run_as_username).ok_or_else(|| {
            invalid(format!(
                "run_as_username {:?} is not in the image's /etc/passwd",
                sec.run_as_username
            ))
        })?;
        (entry.uid, Some(entry), None)
    } else {
        let (user, group) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (uid, entry) = if user.is_empty() {
            if group.is_some() {
                return Err(invalid(format!(
                    "the image's USER {image_user:?} names no user"
                )));
            }
            (0, by_uid(0))
        } else if let Ok(uid) = user.parse::<u32>() {
            (uid, by_uid(uid))
        } else {
            let entry = by_name(user).ok_or_else(|| {
                invalid(format!(
                    "the image's USER {image_user:?}: user {user:?} is not in the image's /etc/passwd"
                ))
            })?;
            (entry.uid, Some(entry))
        };
        let gid = match group {
            None => None,
            Some("") => {
                return Err(invalid(format!(
                    "the image's USER {image_user:?} names an empty group"
                )))
            }
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| {
                            invalid(format!(
                            "the image's USER {image_user:?}: group {g:?} is not in the image's /etc/group"
                        ))
                        })?
                        .gid
                }
            }),
        };
        (uid, entry, gid)
    };

    let gid = match sec.run_as_group {
        Some(v) => id("run_as_group", v)?,
        None => user_group.unwrap_or_else(|| entry.map_or(0, |e| e.gid)),
    };
    let mut gids = vec![gid];
    if sec.supplemental_groups_policy == SupplementalGroupsPolicy::Merge {
        if let Some(entry) = entry {
            gids.extend(
                groups
                    .iter()
                    .filter(|g| g.members.contains(&entry.name))
                    .map(|g| g.gid),
            );
        }
    }
    for g in &sec.supplemental_groups {
        gids.push(id("supplemental_groups", *g)?);
    }
    let mut seen = std::collections::HashSet::new();
    gids.retain(|g| seen.insert(*g));
    Ok((uid, gid, gids))
}
