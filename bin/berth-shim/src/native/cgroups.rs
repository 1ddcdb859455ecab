//! The cgroups a new process joins: every hierarchy the container's init
//! is in (cgroup v1 controllers, named hierarchies and the v2 tree alike),
//! found through `/proc/<init>/cgroup` and the shim's own mount table, so
//! that cgroupfs and systemd paths, v1, v2 and hybrid nodes all work.

use std::path::PathBuf;

/// A cgroup file system mounted in the shim's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path inside the hierarchy that is mounted (usually `/`).
    root: String,
    point: PathBuf,
    /// v1: the controllers and `name=` options; v2: None.
    controllers: Option<Vec<String>>,
}

/// The cgroup mounts in a `/proc/self/mountinfo` text.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next(), right.next(), right.next());
        let controllers = match fstype {
            Some("cgroup2") => None,
            Some("cgroup") => Some(
                options
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .map(str::to_string)
                    .collect(),
            ),
            _ => continue,
        };
        found.push(Mount {
            root: unescape(root),
            point: PathBuf::from(unescape(point)),
            controllers,
        });
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let digits: String = chars.by_ref().take(3).collect();
        match u8::from_str_radix(&digits, 8) {
            Ok(b) => out.push(b as char),
            Err(_) => {
                out.push('\\');
                out.push_str(&digits);
            }
        }
    }
    out
}

/// The `cgroup.procs` files of the cgroups in a `/proc/<pid>/cgroup`
/// text: one per hierarchy that is mounted here.
pub fn procs_files(proc_cgroup: &str, mounts: &[Mount]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(list), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let wanted: Vec<&str> = list.split(',').filter(|c| !c.is_empty()).collect();
        let mount = mounts.iter().find(|m| match &m.controllers {
            None => wanted.is_empty(),
            Some(have) => {
                !wanted.is_empty() && wanted.iter().all(|w| have.iter().any(|h| h == w))
            }
        } && inside(path, &m.root).is_some());
        let Some(mount) = mount else { continue };
        let Some(rest) = inside(path, &mount.root) else {
            continue;
        };
        let mut file = mount.point.clone();
        file.extend(rest.split('/').filter(|s| !s.is_empty()));
        file.push("cgroup.procs");
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// `path` below `root`, or None when it is elsewhere in the hierarchy.
fn inside<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
36 31 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
37 31 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:16 - cgroup cgroup rw,xattr,name=systemd
40 31 0:33 /inner /mnt/bound\\040dir rw - cgroup cgroup rw,pids
";

    #[test]
    fn every_mounted_hierarchy_of_the_init_is_joined() {
        let m = mounts(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(m[4].point, PathBuf::from("/mnt/bound dir"));
        let cgroup = "\
12:memory:/kubepods/pod1/c1
4:cpu,cpuacct:/kubepods/pod1/c1
3:name=systemd:/kubepods/pod1/c1
2:pids:/inner/x
9:blkio:/kubepods/pod1/c1
0::/kubepods/pod1/c1
";
        let files: Vec<String> = procs_files(cgroup, &m)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/memory/kubepods/pod1/c1/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1/cgroup.procs",
                "/sys/fs/cgroup/systemd/kubepods/pod1/c1/cgroup.procs",
                "/mnt/bound dir/x/cgroup.procs",
                "/sys/fs/cgroup/unified/kubepods/pod1/c1/cgroup.procs",
            ]
        );
    }

    #[test]
    fn a_pure_v2_node() {
        let m = mounts("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let files = procs_files("0::/kubepods/a\n", &m);
        assert_eq!(
            files,
            [PathBuf::from("/sys/fs/cgroup/kubepods/a/cgroup.procs")]
        );
        // A path outside a mount's root is not joined through it.
        let m = mounts("30 25 0:26 /sub /x rw - cgroup2 cgroup2 rw\n");
        assert!(procs_files("0::/subway\n", &m).is_empty());
        assert_eq!(
            procs_files("0::/sub\n", &m),
            [PathBuf::from("/x/cgroup.procs")]
        );
    }
}
