//! Resource usage of a container or a pod, read from its cgroup, for CRI
//! `ContainerStats` and `PodSandboxStats`; and the disk usage of a
//! container's writable layer.
//!
//! runc with the cgroupfs driver places a cgroups path such as
//! `/berth/<id>` under each v1 controller's mount
//! (`/sys/fs/cgroup/<controller>/berth/<id>`), or once under the cgroup2
//! mount (`/sys/fs/cgroup/berth/<id>`). Which layout the node has is found
//! once. A hybrid node (v1 controllers, cgroup2 only at
//! `/sys/fs/cgroup/unified` with no controllers in it) counts as v1.
//!
//! Both layouts count hierarchically: a pod's cgroup includes its
//! containers, so the same reader serves pods and containers.

use crate::host::cgroup_unified;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::host::CGROUP_ROOT as ROOT;

/// What a cgroup has used; a value its cgroup does not report is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// When the reading was taken.
    pub timestamp_unix_nanos: i64,
    /// CPU time used on all cores, in nanoseconds.
    pub cpu_usage_core_nanos: Option<u64>,
    /// All memory charged to the cgroup, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// The usage less the inactive file cache, which the kernel reclaims
    /// first; this is what kubelet evicts on.
    pub memory_working_set_bytes: Option<u64>,
    /// Anonymous memory (not backed by a file).
    pub memory_rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Processes and threads in the cgroup.
    pub pids: Option<u64>,
    /// Processes the OOM killer has killed in the cgroup.
    pub oom_kills: Option<u64>,
    /// Swap the cgroup uses, and how much more it may (None: no limit).
    pub swap_usage_bytes: Option<u64>,
    pub swap_available_bytes: Option<u64>,
    /// Bytes read from and written to block devices.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// Pressure stall information, where the cgroup has it (cgroup v2,
    /// or the cgroup2 hierarchy of a hybrid node).
    pub pressure: Option<Pressure>,
}

/// How long the cgroup's tasks stalled for CPU, memory and IO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

/// One resource's pressure: `some` task stalled, or `full`y all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Psi {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// A pressure line: stall time in microseconds, and the share of the
/// last 10, 60 and 300 seconds stalled, in hundredths of a percent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PsiLine {
    pub total_micros: u64,
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
}

/// A `*.pressure` file: `some avg10=0.12 avg60=... avg300=... total=N`
/// and (except for CPU on older kernels) a `full` line.
pub fn parse_pressure(text: &str) -> Option<Psi> {
    fn hundredths(v: &str) -> u32 {
        let (whole, frac) = v.split_once('.').unwrap_or((v, "0"));
        let frac: String = frac.chars().chain("00".chars()).take(2).collect();
        whole.parse::<u32>().unwrap_or(0) * 100 + frac.parse::<u32>().unwrap_or(0)
    }
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let mut l = PsiLine::default();
        for w in words {
            match w.split_once('=') {
                Some(("avg10", v)) => l.avg10 = hundredths(v),
                Some(("avg60", v)) => l.avg60 = hundredths(v),
                Some(("avg300", v)) => l.avg300 = hundredths(v),
                Some(("total", v)) => l.total_micros = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        *slot = Some(l);
    }
    Some(Psi { some: some?, full })
}

/// The pressure files in the cgroup directory `dir`, if it has any.
fn read_pressure(dir: &Path) -> Option<Pressure> {
    let psi = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|t| parse_pressure(&t))
    };
    let p = Pressure {
        cpu: psi("cpu.pressure"),
        memory: psi("memory.pressure"),
        io: psi("io.pressure"),
    };
    (p.cpu.is_some() || p.memory.is_some() || p.io.is_some()).then_some(p)
}

/// The pressure of the cgroup at `rel` under `root`: in the cgroup v2
/// tree, or a hybrid node's cgroup2 hierarchy beside the v1 controllers.
/// None where the kernel keeps none.
fn pressure_at(root: &Path, v2: bool, rel: &Path) -> Option<Pressure> {
    if v2 {
        read_pressure(&root.join(rel))
    } else {
        read_pressure(&root.join("unified").join(rel))
    }
}

/// Bytes read and written, summed over devices, from v1's
/// `blkio.throttle.io_service_bytes` (`MAJ:MIN Read N` lines).
fn blkio_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [_, op, n] = f[..] {
            let n: u64 = n.parse().unwrap_or(0);
            match op {
                "Read" => read = read.saturating_add(n),
                "Write" => write = write.saturating_add(n),
                _ => {}
            }
        }
    }
    (read, write)
}

/// Bytes read and written, summed over devices, from v2's `io.stat`
/// (`MAJ:MIN rbytes=N wbytes=N ...` lines).
fn io_stat_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for w in text.split_whitespace() {
        match w.split_once('=') {
            Some(("rbytes", n)) => read = read.saturating_add(n.parse().unwrap_or(0)),
            Some(("wbytes", n)) => write = write.saturating_add(n.parse().unwrap_or(0)),
            _ => {}
        }
    }
    (read, write)
}

/// v1 counts a limit it does not have as this (a page short of i64::MAX).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// One network interface's counters, as `/proc/<pid>/net/dev` has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces of a `/proc/<pid>/net/dev` text, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() {
                return None;
            }
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| n.get(i).copied().unwrap_or(0);
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: at(0),
                rx_packets: at(1),
                rx_errors: at(2),
                rx_dropped: at(3),
                tx_bytes: at(8),
                tx_packets: at(9),
                tx_errors: at(10),
                tx_dropped: at(11),
            })
        })
        .collect()
}

/// The interfaces in the network namespace of process `pid` (a pod's
/// pause); none for pid 0 or a process that is gone.
pub fn pod_network(pid: u32) -> Vec<InterfaceUsage> {
    if pid == 0 {
        return Vec::new();
    }
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// Reads the cgroup at `cgroups_path` (as in the OCI spec's `cgroupsPath`)
/// on this node.
pub fn read(cgroups_path: &str) -> Result<CgroupStats> {
    read_at(Path::new(ROOT), cgroup_unified(), cgroups_path)
}

/// Reads the cgroup at `cgroups_path` under `root`, laid out as cgroup v2
/// when `v2`, else as v1 with one directory per controller.
pub fn read_at(root: &Path, v2: bool, cgroups_path: &str) -> Result<CgroupStats> {
    let rel = relative(cgroups_path)?;
    // Taken before the files are read, so two readings a known interval
    // apart never claim more time than passed between them.
    let timestamp_unix_nanos = crate::journal::unix_nanos();
    let mut stats = if v2 {
        read_v2(root, &rel, cgroups_path)?
    } else {
        read_v1(root, &rel, cgroups_path)?
    };
    stats.timestamp_unix_nanos = timestamp_unix_nanos;
    Ok(stats)
}

/// Whether the OOM killer has acted in the cgroup at `cgroups_path` on
/// this node (or it is out of memory right now, on v1). A cgroup that
/// cannot be read says no.
pub fn oom_killed(cgroups_path: &str) -> bool {
    oom_killed_at(Path::new(ROOT), cgroup_unified(), cgroups_path)
}

/// [`oom_killed`] for the cgroup tree at `root`, laid out as in [`read_at`].
pub fn oom_killed_at(root: &Path, v2: bool, cgroups_path: &str) -> bool {
    let Ok(rel) = relative(cgroups_path) else {
        return false;
    };
    if v2 {
        let events = keyed(&root.join(&rel).join("memory.events"));
        return matches!(events, Ok(Some(m)) if m.get("oom_kill").is_some_and(|&n| n > 0));
    }
    match keyed(&root.join("memory").join(&rel).join("memory.oom_control")) {
        Ok(Some(m)) => {
            // Kernels before 4.13 have no `oom_kill` count; `under_oom`
            // still tells of a cgroup stuck at its limit.
            m.get("oom_kill").is_some_and(|&n| n > 0) || m.get("under_oom") == Some(&1)
        }
        _ => false,
    }
}

/// The space a directory tree takes on disk and the inodes in it: blocks
/// actually allocated (so sparse files count what they hold), each inode
/// once however many hard links it has, the top directory included.
/// Symbolic links are counted, never followed. What cannot be read (a file
/// removed during the walk) is left out. It walks the whole tree, so it
/// blocks.
pub fn dir_usage(path: &Path) -> (u64, u64) {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut pending = vec![path.to_path_buf()];
    // A loop rather than recursion: a deep tree must not exhaust the stack.
    while let Some(p) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        // Only the first sight of an inode counts, and only then is a
        // directory entered; that also ends any loop a bind mount makes.
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, seen.len() as u64)
}

/// The cgroups path as a path relative to a hierarchy's mount. `..` is
/// refused: it could name a directory outside the cgroup tree.
pub(crate) fn relative(cgroups_path: &str) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for c in Path::new(cgroups_path).components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "cgroups path {cgroups_path:?} must not contain \"..\""
                )));
            }
        }
    }
    Ok(rel)
}

fn not_found(root: &Path, cgroups_path: &str) -> Error {
    Error::NotFound(format!(
        "cgroup {cgroups_path:?} not found under {}",
        root.display()
    ))
}

fn read_v1(root: &Path, rel: &Path, cgroups_path: &str) -> Result<CgroupStats> {
    let memory = root.join("memory").join(rel);
    let cpuacct = root.join("cpuacct").join(rel);
    let pids = root.join("pids").join(rel);
    // runc makes the directory in every controller, so any one of them
    // means the cgroup is there; a controller the node lacks only leaves
    // its values unknown.
    if ![&memory, &cpuacct, &pids].iter().any(|d| d.is_dir()) {
        return Err(not_found(root, cgroups_path));
    }
    let stat = keyed(&memory.join("memory.stat"))?.unwrap_or_default();
    let usage = single(&memory.join("memory.usage_in_bytes"))?;
    let oom = keyed(&memory.join("memory.oom_control"))?.unwrap_or_default();
    // Swap is what memory+swap holds beyond memory (where the kernel
    // accounts swap at all); its room is the memory+swap limit's beyond
    // the memory limit, less what is used.
    let memsw = single(&memory.join("memory.memsw.usage_in_bytes"))?;
    let swap_usage = memsw.zip(usage).map(|(m, u)| m.saturating_sub(u));
    let limits = (
        single(&memory.join("memory.memsw.limit_in_bytes"))?,
        single(&memory.join("memory.limit_in_bytes"))?,
    );
    let swap_available = match (limits, swap_usage) {
        ((Some(sw), Some(mem)), Some(used)) if sw < V1_UNLIMITED => {
            Some(sw.saturating_sub(mem).saturating_sub(used))
        }
        _ => None,
    };
    // The recursive file counts a pod's containers too.
    let blkio = root.join("blkio").join(rel);
    let io = match contents(&blkio.join("blkio.throttle.io_service_bytes_recursive"))? {
        Some(t) => Some(t),
        None => contents(&blkio.join("blkio.throttle.io_service_bytes"))?,
    }
    .map(|t| blkio_bytes(&t));
    // The `total_` values include the cgroup's descendants (a pod's
    // containers); the plain ones would count only its own processes.
    Ok(CgroupStats {
        timestamp_unix_nanos: 0,
        cpu_usage_core_nanos: single(&cpuacct.join("cpuacct.usage"))?,
        memory_usage_bytes: usage,
        memory_working_set_bytes: working_set(usage, stat.get("total_inactive_file").copied()),
        memory_rss_bytes: stat.get("total_rss").copied(),
        page_faults: stat.get("total_pgfault").copied(),
        major_page_faults: stat.get("total_pgmajfault").copied(),
        pids: single(&pids.join("pids.current"))?,
        oom_kills: oom.get("oom_kill").copied(),
        swap_usage_bytes: swap_usage,
        swap_available_bytes: swap_available,
        io_read_bytes: io.map(|(r, _)| r),
        io_write_bytes: io.map(|(_, w)| w),
        pressure: pressure_at(root, false, rel),
    })
}

fn read_v2(root: &Path, rel: &Path, cgroups_path: &str) -> Result<CgroupStats> {
    let dir = root.join(rel);
    if !dir.is_dir() {
        return Err(not_found(root, cgroups_path));
    }
    let cpu = keyed(&dir.join("cpu.stat"))?.unwrap_or_default();
    let stat = keyed(&dir.join("memory.stat"))?.unwrap_or_default();
    let usage = single(&dir.join("memory.current"))?;
    let events = keyed(&dir.join("memory.events"))?.unwrap_or_default();
    let swap_usage = single(&dir.join("memory.swap.current"))?;
    // "max" (no limit) is not a number: no room is then reported.
    let swap_max =
        contents(&dir.join("memory.swap.max"))?.and_then(|t| t.trim().parse::<u64>().ok());
    let io = contents(&dir.join("io.stat"))?.map(|t| io_stat_bytes(&t));
    Ok(CgroupStats {
        timestamp_unix_nanos: 0,
        cpu_usage_core_nanos: cpu.get("usage_usec").map(|us| us.saturating_mul(1000)),
        memory_usage_bytes: usage,
        memory_working_set_bytes: working_set(usage, stat.get("inactive_file").copied()),
        memory_rss_bytes: stat.get("anon").copied(),
        page_faults: stat.get("pgfault").copied(),
        major_page_faults: stat.get("pgmajfault").copied(),
        pids: single(&dir.join("pids.current"))?,
        oom_kills: events.get("oom_kill").copied(),
        swap_usage_bytes: swap_usage,
        swap_available_bytes: swap_max.zip(swap_usage).map(|(m, u)| m.saturating_sub(u)),
        io_read_bytes: io.map(|(r, _)| r),
        io_write_bytes: io.map(|(_, w)| w),
        pressure: read_pressure(&dir),
    })
}

/// Usage less the inactive file cache. The two files are read at
/// different moments, and v1's usage is only approximate (per-CPU charges
/// are batched), so the cache can exceed the usage; the result then stops
/// at zero rather than wrapping. Without memory.stat nothing is known to
/// be reclaimable, and no figure is better than an inflated one.
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    Some(usage?.saturating_sub(inactive_file?))
}

/// A file's contents, or `None` when the file is not there: its controller
/// is not enabled, the kernel is too old to have it, or the cgroup went
/// away while it was being read (which the kernel reports as ENODEV).
fn contents(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(Error::Internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// A file holding one number.
fn single(path: &Path) -> Result<Option<u64>> {
    let Some(s) = contents(path)? else {
        return Ok(None);
    };
    s.trim().parse().map(Some).map_err(|_| {
        Error::Internal(format!(
            "{} holds {:?}, not a number",
            path.display(),
            s.trim()
        ))
    })
}

/// A file of `key value` lines. Lines that are not a key and a number are
/// skipped, so a kernel that adds another kind of line breaks nothing.
fn keyed(path: &Path) -> Result<Option<HashMap<String, u64>>> {
    let Some(s) = contents(path)? else {
        return Ok(None);
    };
    let map = s
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            parts.next().is_none().then(|| (key.to_string(), value))
        })
        .collect();
    Ok(Some(map))
}

#[cfg(test)]
mod tests;

/// Adds `b`'s counters to `a` (a pod is its containers and its pause).
pub fn add(a: &mut CgroupStats, b: &CgroupStats) {
    fn sum(x: &mut Option<u64>, y: Option<u64>) {
        if let Some(y) = y {
            *x = Some(x.unwrap_or(0) + y);
        }
    }
    sum(&mut a.cpu_usage_core_nanos, b.cpu_usage_core_nanos);
    sum(&mut a.memory_usage_bytes, b.memory_usage_bytes);
    sum(&mut a.memory_working_set_bytes, b.memory_working_set_bytes);
    sum(&mut a.memory_rss_bytes, b.memory_rss_bytes);
    sum(&mut a.page_faults, b.page_faults);
    sum(&mut a.major_page_faults, b.major_page_faults);
    sum(&mut a.pids, b.pids);
    sum(&mut a.oom_kills, b.oom_kills);
    sum(&mut a.swap_usage_bytes, b.swap_usage_bytes);
    sum(&mut a.io_read_bytes, b.io_read_bytes);
    sum(&mut a.io_write_bytes, b.io_write_bytes);
    // Room and pressure do not add up: a pod's are its own cgroup's.
    a.timestamp_unix_nanos = a.timestamp_unix_nanos.max(b.timestamp_unix_nanos);
}
