//! Checks of a container's configuration and of resources (CreateContainer
//! and UpdateContainerResources) before anything is made: every field a
//! client controls, each refusal an InvalidArgument naming the field.

use super::messages::{ContainerConfig, Resources};
use super::spec::parse_capability;
use crate::checked::{self, shown, NAME_MAX, PATH_MAX};
use crate::sandbox::validate::METADATA_MAP_MAX;
use crate::{Error, Result};

fn invalid(m: String) -> Error {
    Error::InvalidArgument(m)
}

/// The CFS period the kernel takes, in microseconds: 1 ms to 1 s.
const CPU_PERIOD: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;

/// The smallest CFS quota the kernel takes: 1 ms.
const CPU_QUOTA_MIN: i64 = 1_000;

/// CPU shares as cgroup v1 holds them.
const CPU_SHARES: std::ops::RangeInclusive<i64> = 2..=262_144;

/// The smallest memory limit a container can start under: the runtime's
/// own process must fit in it before the container's program runs (the
/// same floor docker sets, 6 MiB).
pub const MEMORY_MIN: i64 = 6 * 1024 * 1024;

/// Entries a container may list (mounts, devices, paths).
const LIST_MAX: usize = 1024;

pub fn container(c: &ContainerConfig) -> Result<()> {
    checked::required("container metadata: name", &c.name, NAME_MAX)?;
    if c.name.contains('/') {
        return Err(invalid(format!(
            "container metadata: name {} holds '/'",
            shown(&c.name)
        )));
    }
    checked::required("image", &c.image, 4096)?;
    checked::string_map("container labels", &c.labels, METADATA_MAP_MAX)?;
    checked::string_map("container annotations", &c.annotations, METADATA_MAP_MAX)?;
    let mut total = 0;
    checked::exec_strings("command", c.command.iter().map(String::as_str), &mut total)?;
    checked::exec_strings("args", c.args.iter().map(String::as_str), &mut total)?;
    for (k, v) in &c.envs {
        checked::required("env name", k, checked::ARG_MAX_ONE)?;
        if k.contains('=') {
            return Err(invalid(format!("env name {} holds '='", shown(k))));
        }
        let entry = format!("{k}={v}");
        checked::exec_strings(&format!("env {}", shown(k)), [entry.as_str()], &mut total)?;
    }
    if !c.working_dir.is_empty() {
        checked::absolute("working dir", &c.working_dir)?;
    }
    if !c.log_path.is_empty() {
        checked::inside("log path", &c.log_path)?;
    }
    count("mounts", c.mounts.len())?;
    for (i, m) in c.mounts.iter().enumerate() {
        checked::absolute("mount container path", &m.container_path)?;
        if m.image.is_empty() {
            checked::absolute("mount host path", &m.host_path)?;
            if !m.image_sub_path.is_empty() {
                return Err(invalid(format!(
                    "mounts[{i}].image_sub_path is set but mounts[{i}].image is not"
                )));
            }
        } else {
            // An image volume's host path is berth's to choose.
            checked::text(&format!("mounts[{i}].image"), &m.image, 4096)?;
            if !m.image_sub_path.is_empty() {
                checked::inside(&format!("mounts[{i}].image_sub_path"), &m.image_sub_path)?;
            }
        }
    }
    count("devices", c.devices.len())?;
    for d in &c.devices {
        checked::absolute("device container path", &d.container_path)?;
        checked::absolute("device host path", &d.host_path)?;
        if !d.permissions.chars().all(|p| matches!(p, 'r' | 'w' | 'm')) {
            return Err(invalid(format!(
                "device {}: permissions {} are not made of r, w and m",
                shown(&d.host_path),
                shown(&d.permissions)
            )));
        }
    }
    resources("resources", &c.resources)?;
    security(c)
}

fn count(field: &str, n: usize) -> Result<()> {
    if n > LIST_MAX {
        return Err(invalid(format!(
            "{field}: {n} entries; the most is {LIST_MAX}"
        )));
    }
    Ok(())
}

fn security(c: &ContainerConfig) -> Result<()> {
    let sec = &c.security;
    // A group alone says nothing of who runs: containerd and CRI-O refuse
    // it too, and critest expects the refusal.
    if sec.run_as_group.is_some() && sec.run_as_user.is_none() && sec.run_as_username.is_empty() {
        return Err(invalid(
            "security context: run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    checked::text(
        "security context: run_as_username",
        &sec.run_as_username,
        256,
    )?;
    for (field, list) in [
        ("capabilities to add", &sec.capabilities_add),
        ("capabilities to drop", &sec.capabilities_drop),
    ] {
        count(field, list.len())?;
        for name in list {
            checked::text(field, name, 64)?;
            parse_capability(field, name)?;
        }
    }
    for (field, list) in [
        ("masked paths", &sec.masked_paths),
        ("readonly paths", &sec.readonly_paths),
    ] {
        let list = list.as_deref().unwrap_or_default();
        count(field, list.len())?;
        for p in list {
            checked::absolute(field, p)?;
        }
    }
    if let Some(path) = sec.seccomp.strip_prefix("localhost/") {
        checked::absolute("seccomp localhost profile", path)?;
    }
    Ok(())
}

/// Resources as CreateContainer and UpdateContainerResources carry them:
/// each value within what the kernel's cgroups take on this node.
pub fn resources(field: &str, r: &Resources) -> Result<()> {
    let bad = |what: &str, why: String| invalid(format!("{field}: {what} {why}"));
    if r.cpu_period != 0 && !CPU_PERIOD.contains(&r.cpu_period) {
        return Err(bad(
            "cpu_period",
            format!("{} µs is outside 1000..=1000000", r.cpu_period),
        ));
    }
    if !(r.cpu_quota == 0 || r.cpu_quota == -1 || r.cpu_quota >= CPU_QUOTA_MIN) {
        return Err(bad(
            "cpu_quota",
            format!(
                "{} µs is neither unset (0 or -1) nor at least {CPU_QUOTA_MIN}",
                r.cpu_quota
            ),
        ));
    }
    if r.cpu_shares != 0 && !CPU_SHARES.contains(&r.cpu_shares) {
        return Err(bad(
            "cpu_shares",
            format!("{} is outside 2..=262144", r.cpu_shares),
        ));
    }
    if r.memory_limit_in_bytes != 0 && r.memory_limit_in_bytes < MEMORY_MIN {
        return Err(bad(
            "memory_limit_in_bytes",
            format!(
                "{} is below the smallest limit a container starts under ({MEMORY_MIN})",
                r.memory_limit_in_bytes
            ),
        ));
    }
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(bad(
            "memory_swap_limit_in_bytes",
            format!("{swap} is negative"),
        ));
    }
    if swap > 0 && r.memory_limit_in_bytes > 0 && swap < r.memory_limit_in_bytes {
        return Err(bad(
            "memory_swap_limit_in_bytes",
            format!(
                "{swap} is below memory_limit_in_bytes {} (it counts memory and swap together)",
                r.memory_limit_in_bytes
            ),
        ));
    }
    cpu_list(
        field,
        "cpuset_cpus",
        &r.cpuset_cpus,
        "/sys/devices/system/cpu/online",
    )?;
    cpu_list(
        field,
        "cpuset_mems",
        &r.cpuset_mems,
        "/sys/devices/system/node/online",
    )?;
    for size in r.hugepage_limits.keys() {
        if !hugepage_size(size) {
            return Err(bad(
                "hugepage_limits",
                format!("page size {} is not like \"2MB\" or \"1GB\"", shown(size)),
            ));
        }
    }
    for (key, value) in &r.unified {
        let ok = key.split_once('.').is_some_and(|(controller, file)| {
            !controller.is_empty()
                && !file.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'))
        });
        if !ok || key.len() > NAME_MAX {
            return Err(bad(
                "unified",
                format!("key {} is not a cgroup file name", shown(key)),
            ));
        }
        checked::line(&format!("{field}: unified {}", shown(key)), value, PATH_MAX)?;
    }
    Ok(())
}

/// A page size the hugetlb controller names: digits and KB, MB or GB, a
/// power of two.
fn hugepage_size(size: &str) -> bool {
    let Some(digits) = ["KB", "MB", "GB"]
        .iter()
        .find_map(|unit| size.strip_suffix(unit))
    else {
        return false;
    };
    digits
        .parse::<u64>()
        .is_ok_and(|n| n > 0 && n.is_power_of_two())
}

/// A cpuset list ("0-3,5") whose every number the node has, as its
/// `online` file lists them. Empty means unset.
fn cpu_list(field: &str, name: &str, list: &str, online: &str) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let bad = |why: String| invalid(format!("{field}: {name} {} {why}", shown(list)));
    let wanted = parse_list(list).ok_or_else(|| bad("is not a list like \"0-3,5\"".into()))?;
    // Without the file (no NUMA: no node directory) only 0 exists.
    let have = std::fs::read_to_string(online)
        .ok()
        .and_then(|s| parse_list(s.trim()))
        .unwrap_or_else(|| vec![(0, 0)]);
    for (lo, hi) in wanted {
        for n in [lo, hi] {
            if !have.iter().any(|(a, b)| (*a..=*b).contains(&n)) {
                return Err(bad(format!(
                    "names {n}, which this node does not have online"
                )));
            }
        }
    }
    Ok(())
}

/// Ranges of a kernel list ("0-3,5" → [(0,3),(5,5)]); None if malformed.
fn parse_list(s: &str) -> Option<Vec<(u32, u32)>> {
    s.split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?);
            (lo <= hi).then_some((lo, hi))
        })
        .collect()
}

/// The command of an exec: not empty, and a command line the kernel takes.
pub fn exec_command(cmd: &[String]) -> Result<()> {
    if cmd.first().is_none_or(String::is_empty) {
        return Err(invalid("exec: cmd is empty".into()));
    }
    checked::exec_strings("exec: cmd", cmd.iter().map(String::as_str), &mut 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::messages::{DeviceConfig, MountConfig};

    fn good() -> ContainerConfig {
        ContainerConfig {
            name: "app".into(),
            image: "busybox".into(),
            command: vec!["sh".into()],
            ..Default::default()
        }
    }

    type Edit = Box<dyn Fn(&mut ContainerConfig)>;
    type ResourcesEdit = fn(&mut Resources);

    fn refused(c: &ContainerConfig, names: &str) {
        let e = container(c).expect_err(names).to_string();
        assert!(e.contains(names), "wanted {names:?} in {e}");
    }

    #[test]
    fn a_plain_container_passes() {
        let mut c = good();
        c.working_dir = "/srv".into();
        c.log_path = "app/0.log".into();
        c.envs = vec![("PATH".into(), "/bin".into())];
        c.resources.cpu_period = 100_000;
        c.resources.cpu_quota = 50_000;
        c.resources.cpu_shares = 2;
        c.resources.memory_limit_in_bytes = 64 << 20;
        c.resources.memory_swap_limit_in_bytes = -1;
        c.resources.cpuset_cpus = "0".into();
        c.resources.hugepage_limits.insert("2MB".into(), 0);
        c.resources.hugepage_limits.insert("1GB".into(), 0);
        c.resources
            .unified
            .insert("memory.high".into(), "max".into());
        c.security.capabilities_add = vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()];
        c.security.capabilities_drop = vec!["ALL".into()];
        container(&c).expect("valid");
    }

    #[test]
    fn every_client_string_is_checked() {
        let cases: Vec<(&str, Edit)> = vec![
            ("name", Box::new(|c| c.name = "x".repeat(300))),
            ("image", Box::new(|c| c.image.clear())),
            ("command", Box::new(|c| c.command = vec!["s\0h".into()])),
            ("args", Box::new(|c| c.args = vec!["x".repeat(200_000)])),
            (
                "env name",
                Box::new(|c| c.envs = vec![("A=B".into(), "c".into())]),
            ),
            (
                "env",
                Box::new(|c| c.envs = vec![("A".into(), "b\0".into())]),
            ),
            ("working dir", Box::new(|c| c.working_dir = "srv".into())),
            ("log path", Box::new(|c| c.log_path = "../x".into())),
            (
                "mount container path",
                Box::new(|c| {
                    c.mounts = vec![MountConfig {
                        container_path: "/a/../..".into(),
                        host_path: "/tmp".into(),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "permissions",
                Box::new(|c| {
                    c.devices = vec![DeviceConfig {
                        container_path: "/dev/x".into(),
                        host_path: "/dev/null".into(),
                        permissions: "rwx".into(),
                    }]
                }),
            ),
            (
                "unknown capability",
                Box::new(|c| c.security.capabilities_add = vec!["NOPE".into()]),
            ),
            (
                "run_as_username",
                Box::new(|c| c.security.run_as_username = "a\0".into()),
            ),
            (
                "masked paths",
                Box::new(|c| c.security.masked_paths = Some(vec!["proc".into()])),
            ),
            (
                "seccomp localhost profile",
                Box::new(|c| c.security.seccomp = "localhost/profile.json".into()),
            ),
        ];
        for (names, edit) in cases {
            let mut c = good();
            edit(&mut c);
            refused(&c, names);
        }
    }

    #[test]
    fn resources_stay_within_what_the_kernel_takes() {
        let cases: Vec<(&str, ResourcesEdit)> = vec![
            ("cpu_period", |r| r.cpu_period = 1),
            ("cpu_period", |r| r.cpu_period = 10_000_000),
            ("cpu_quota", |r| r.cpu_quota = 5),
            ("cpu_quota", |r| r.cpu_quota = -2),
            ("cpu_shares", |r| r.cpu_shares = 1),
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = 1),
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -7),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_swap_limit_in_bytes = -2
            }),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_limit_in_bytes = 64 << 20;
                r.memory_swap_limit_in_bytes = 8 << 20;
            }),
            ("cpuset_cpus", |r| r.cpuset_cpus = "abc".into()),
            ("cpuset_cpus", |r| r.cpuset_cpus = "3-1".into()),
            ("cpuset_cpus", |r| r.cpuset_cpus = "99999".into()),
            ("cpuset_mems", |r| r.cpuset_mems = "4096".into()),
            ("hugepage_limits", |r| {
                r.hugepage_limits.insert("3MB".into(), 1);
            }),
            ("unified", |r| {
                r.unified.insert("../cgroup.procs".into(), "1".into());
            }),
            ("unified", |r| {
                r.unified.insert("memory.high".into(), "1\n2".into());
            }),
        ];
        for (names, edit) in cases {
            let mut r = Resources::default();
            edit(&mut r);
            let e = resources("resources", &r).expect_err(names).to_string();
            assert!(e.contains(names), "wanted {names:?} in {e}");
        }
    }

    #[test]
    fn kernel_lists_parse() {
        assert_eq!(parse_list("0-3,5"), Some(vec![(0, 3), (5, 5)]));
        assert_eq!(parse_list("0"), Some(vec![(0, 0)]));
        assert_eq!(parse_list(""), None);
        assert_eq!(parse_list("1-"), None);
        assert_eq!(parse_list("2-1"), None);
        assert_eq!(parse_list("a"), None);
    }

    #[test]
    fn exec_commands_are_checked() {
        exec_command(&["true".into()]).unwrap();
        assert!(exec_command(&[]).unwrap_err().to_string().contains("cmd"));
        assert!(exec_command(&["".into()]).is_err());
        assert!(exec_command(&["ec\0ho".into()]).is_err());
    }
}
