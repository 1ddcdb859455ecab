use super::*;
use std::fs;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CG: &str = "/berth/abc";

fn put(dir: &Path, name: &str, text: &str) {
    fs::create_dir_all(dir).expect("cgroup dir");
    fs::write(dir.join(name), text).expect("cgroup file");
}

/// A v1 tree: one directory per controller, the cgroup in each.
fn v1_tree() -> TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let memory = root.path().join("memory/berth/abc");
    let cpuacct = root.path().join("cpuacct/berth/abc");
    let pids = root.path().join("pids/berth/abc");
    put(&cpuacct, "cpuacct.usage", "123456789\n");
    put(&memory, "memory.usage_in_bytes", "10485760\n");
    // The plain values are the cgroup's own; the `total_` ones, which
    // must be used, differ so that a mix-up shows.
    put(
        &memory,
        "memory.stat",
        "cache 1\nrss 2\npgfault 3\npgmajfault 4\ninactive_file 5\n\
         total_cache 4194304\ntotal_rss 6291456\ntotal_pgfault 777\n\
         total_pgmajfault 7\ntotal_inactive_file 3145728\n\
         hierarchical_memory_limit 9223372036854771712\n",
    );
    put(
        &memory,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    put(&pids, "pids.current", "3\n");
    put(&memory, "memory.memsw.usage_in_bytes", "11534336\n");
    put(&memory, "memory.memsw.limit_in_bytes", "33554432\n");
    put(&memory, "memory.limit_in_bytes", "16777216\n");
    put(
        &root.path().join("blkio/berth/abc"),
        "blkio.throttle.io_service_bytes_recursive",
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 1024\n8:16 Write 0\nTotal 13312\n",
    );
    // A hybrid node: pressure in the cgroup2 hierarchy beside v1.
    put(
        &root.path().join("unified/berth/abc"),
        "cpu.pressure",
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    );
    root
}

/// A v2 tree: one directory for the cgroup.
fn v2_tree() -> TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("berth/abc");
    put(
        &dir,
        "cpu.stat",
        "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n\
         nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    );
    put(&dir, "memory.current", "8388608\n");
    put(
        &dir,
        "memory.stat",
        "anon 4194304\nfile 4194304\nkernel 0\nactive_file 1048576\n\
         inactive_file 2097152\npgfault 900\npgmajfault 9\n",
    );
    put(
        &dir,
        "memory.events",
        "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    put(&dir, "pids.current", "5\n");
    put(&dir, "memory.swap.current", "1048576\n");
    put(&dir, "memory.swap.max", "4194304\n");
    put(
        &dir,
        "io.stat",
        "8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n8:16 rbytes=100 wbytes=0 rios=1 wios=0\n",
    );
    put(
        &dir,
        "memory.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
    );
    put(
        &dir,
        "io.pressure",
        "some avg10=12.34 avg60=5.6 avg300=0.01 total=3000000\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1000000\n",
    );
    root
}

#[test]
fn v1_reads_every_value() {
    let root = v1_tree();
    let before = crate::journal::unix_nanos();
    let s = read_at(root.path(), false, CG).expect("read");
    assert!(s.timestamp_unix_nanos >= before);
    assert_eq!(
        s,
        CgroupStats {
            timestamp_unix_nanos: s.timestamp_unix_nanos,
            cpu_usage_core_nanos: Some(123_456_789),
            memory_usage_bytes: Some(10_485_760),
            memory_working_set_bytes: Some(10_485_760 - 3_145_728),
            memory_rss_bytes: Some(6_291_456),
            page_faults: Some(777),
            major_page_faults: Some(7),
            pids: Some(3),
            oom_kills: Some(2),
            // memory+swap less memory; its room: 32 - 16 MiB less that.
            swap_usage_bytes: Some(1_048_576),
            swap_available_bytes: Some(16_777_216 - 1_048_576),
            io_read_bytes: Some(5120),
            io_write_bytes: Some(8192),
            pressure: Some(Pressure {
                cpu: Some(Psi {
                    some: PsiLine {
                        total_micros: 2_500_000,
                        avg10: 150,
                        avg60: 25,
                        avg300: 0,
                    },
                    full: Some(PsiLine::default()),
                }),
                memory: None,
                io: None,
            }),
        }
    );
    // Without the leading slash it is the same cgroup.
    let again = read_at(root.path(), false, "berth/abc").expect("read");
    assert_eq!(again.memory_usage_bytes, Some(10_485_760));
}

#[test]
fn v2_reads_every_value() {
    let root = v2_tree();
    let s = read_at(root.path(), true, CG).expect("read");
    assert!(s.timestamp_unix_nanos > 0);
    assert_eq!(
        s,
        CgroupStats {
            timestamp_unix_nanos: s.timestamp_unix_nanos,
            cpu_usage_core_nanos: Some(2_500_000),
            memory_usage_bytes: Some(8_388_608),
            memory_working_set_bytes: Some(8_388_608 - 2_097_152),
            memory_rss_bytes: Some(4_194_304),
            page_faults: Some(900),
            major_page_faults: Some(9),
            pids: Some(5),
            oom_kills: Some(1),
            swap_usage_bytes: Some(1_048_576),
            swap_available_bytes: Some(3_145_728),
            io_read_bytes: Some(4196),
            io_write_bytes: Some(512),
            pressure: Some(Pressure {
                cpu: None,
                memory: Some(Psi {
                    some: PsiLine {
                        total_micros: 10,
                        ..Default::default()
                    },
                    full: Some(PsiLine {
                        total_micros: 5,
                        ..Default::default()
                    }),
                }),
                io: Some(Psi {
                    some: PsiLine {
                        total_micros: 3_000_000,
                        avg10: 1234,
                        avg60: 560,
                        avg300: 1,
                    },
                    full: Some(PsiLine {
                        total_micros: 1_000_000,
                        avg10: 100,
                        avg60: 0,
                        avg300: 0,
                    }),
                }),
            }),
        }
    );
}

#[test]
fn working_set_stops_at_zero() {
    let root = v1_tree();
    let memory = root.path().join("memory/berth/abc");
    put(&memory, "memory.usage_in_bytes", "4096\n");
    put(&memory, "memory.stat", "total_inactive_file 8192\n");
    let s = read_at(root.path(), false, CG).expect("read");
    assert_eq!(s.memory_usage_bytes, Some(4096));
    assert_eq!(s.memory_working_set_bytes, Some(0));

    let root = v2_tree();
    let dir = root.path().join("berth/abc");
    put(&dir, "memory.current", "100\n");
    put(&dir, "memory.stat", "inactive_file 101\n");
    let s = read_at(root.path(), true, CG).expect("read");
    assert_eq!(s.memory_working_set_bytes, Some(0));

    // Exactly equal is zero too, not an underflow by one.
    assert_eq!(working_set(Some(7), Some(7)), Some(0));
    assert_eq!(working_set(Some(7), None), None);
    assert_eq!(working_set(None, Some(7)), None);
}

#[test]
fn missing_files_are_none() {
    let root = tempfile::tempdir().expect("tempdir");
    for c in ["memory", "cpuacct", "pids"] {
        fs::create_dir_all(root.path().join(c).join("berth/abc")).expect("dir");
    }
    let s = read_at(root.path(), false, CG).expect("read");
    assert!(s.timestamp_unix_nanos > 0);
    assert_eq!(
        s,
        CgroupStats {
            timestamp_unix_nanos: s.timestamp_unix_nanos,
            ..Default::default()
        }
    );

    fs::create_dir_all(root.path().join("berth/abc")).expect("dir");
    let s = read_at(root.path(), true, CG).expect("read");
    assert_eq!(
        s,
        CgroupStats {
            timestamp_unix_nanos: s.timestamp_unix_nanos,
            ..Default::default()
        }
    );
}

#[test]
fn one_missing_file_leaves_only_its_values_unknown() {
    let root = v1_tree();
    fs::remove_file(root.path().join("memory/berth/abc/memory.stat")).expect("rm");
    let s = read_at(root.path(), false, CG).expect("read");
    assert_eq!(s.memory_usage_bytes, Some(10_485_760));
    assert_eq!(s.memory_working_set_bytes, None);
    assert_eq!(s.memory_rss_bytes, None);
    assert_eq!(s.page_faults, None);
    assert_eq!(s.major_page_faults, None);
    assert_eq!(s.cpu_usage_core_nanos, Some(123_456_789));
    assert_eq!(s.pids, Some(3));
    assert_eq!(s.oom_kills, Some(2));

    // An old kernel's oom_control has no `oom_kill` line.
    put(
        &root.path().join("memory/berth/abc"),
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\n",
    );
    let s = read_at(root.path(), false, CG).expect("read");
    assert_eq!(s.oom_kills, None);

    // A node without the pids controller: the cgroup is still found.
    fs::remove_dir_all(root.path().join("pids")).expect("rm pids");
    let s = read_at(root.path(), false, CG).expect("read");
    assert_eq!(s.pids, None);
    assert_eq!(s.memory_usage_bytes, Some(10_485_760));

    let root = v2_tree();
    let dir = root.path().join("berth/abc");
    fs::remove_file(dir.join("pids.current")).expect("rm");
    fs::remove_file(dir.join("memory.events")).expect("rm");
    let s = read_at(root.path(), true, CG).expect("read");
    assert_eq!(s.pids, None);
    assert_eq!(s.oom_kills, None);
    assert_eq!(s.memory_rss_bytes, Some(4_194_304));
}

#[test]
fn missing_cgroup_is_not_found() {
    let root = v1_tree();
    match read_at(root.path(), false, "/berth/nope") {
        Err(Error::NotFound(m)) => {
            assert!(m.contains("/berth/nope"), "{m}");
            assert!(m.contains(&root.path().display().to_string()), "{m}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let root = v2_tree();
    match read_at(root.path(), true, "/berth/nope") {
        Err(Error::NotFound(m)) => assert!(m.contains("/berth/nope"), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A v1 tree read as v2 has no such directory at its top either.
    let root = v1_tree();
    assert!(matches!(
        read_at(root.path(), true, CG),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn parent_components_are_refused() {
    let root = v1_tree();
    for bad in ["/berth/../../etc", "..", "berth/abc/.."] {
        match read_at(root.path(), false, bad) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(bad), "{m}"),
            other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
        }
        assert!(!oom_killed_at(root.path(), false, bad));
    }
}

#[test]
fn garbage_in_a_number_file_is_an_error_naming_it() {
    let root = v1_tree();
    put(
        &root.path().join("cpuacct/berth/abc"),
        "cpuacct.usage",
        "lots\n",
    );
    match read_at(root.path(), false, CG) {
        Err(Error::Internal(m)) => assert!(m.contains("cpuacct.usage"), "{m}"),
        other => panic!("expected Internal, got {other:?}"),
    }
}

#[test]
fn keyed_files_skip_lines_they_do_not_understand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, "a 1\nweird line here\nb x\n\nc 3\n").expect("write");
    let m = keyed(&path).expect("read").expect("present");
    assert_eq!(m.len(), 2);
    assert_eq!(m.get("a"), Some(&1));
    assert_eq!(m.get("c"), Some(&3));
    assert_eq!(keyed(&dir.path().join("none")).expect("read"), None);
}

#[test]
fn oom_killed_reads_the_memory_cgroup() {
    // v1: a kill counted.
    let root = v1_tree();
    assert!(oom_killed_at(root.path(), false, CG));
    let memory = root.path().join("memory/berth/abc");
    // No kill yet, but stuck at the limit right now.
    put(
        &memory,
        "memory.oom_control",
        "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n",
    );
    assert!(oom_killed_at(root.path(), false, CG));
    // An old kernel without the count, stuck at the limit.
    put(
        &memory,
        "memory.oom_control",
        "oom_kill_disable 1\nunder_oom 1\n",
    );
    assert!(oom_killed_at(root.path(), false, CG));
    put(
        &memory,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    assert!(!oom_killed_at(root.path(), false, CG));
    fs::remove_file(memory.join("memory.oom_control")).expect("rm");
    assert!(!oom_killed_at(root.path(), false, CG));
    assert!(!oom_killed_at(root.path(), false, "/berth/nope"));

    // v2.
    let root = v2_tree();
    assert!(oom_killed_at(root.path(), true, CG));
    let dir = root.path().join("berth/abc");
    // Hitting the limit (`oom`) without a kill is not a kill.
    put(
        &dir,
        "memory.events",
        "low 0\nhigh 0\nmax 9\noom 3\noom_kill 0\n",
    );
    assert!(!oom_killed_at(root.path(), true, CG));
    fs::remove_file(dir.join("memory.events")).expect("rm");
    assert!(!oom_killed_at(root.path(), true, CG));
    assert!(!oom_killed_at(root.path(), true, "/berth/nope"));
}

#[test]
fn dir_usage_counts_blocks_and_inodes_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().join("layer");
    fs::create_dir(&top).expect("top");
    fs::write(top.join("big"), vec![7u8; 64 * 1024]).expect("big");
    fs::create_dir(top.join("sub")).expect("sub");
    fs::write(top.join("sub/small"), b"hello").expect("small");
    // A link to a large tree outside: counted as a link, not walked.
    std::os::unix::fs::symlink("/usr", top.join("usr")).expect("symlink");

    let (bytes, inodes) = dir_usage(&top);
    // top, big, sub, sub/small, usr
    assert_eq!(inodes, 5);
    let allocated: u64 = ["", "big", "sub", "sub/small", "usr"]
        .iter()
        .map(|p| fs::symlink_metadata(top.join(p)).expect("stat").blocks() * 512)
        .sum();
    assert_eq!(bytes, allocated);
    assert!(bytes >= 64 * 1024, "{bytes}");

    // A second name for the big file adds no inode and no bytes (the
    // directory holding it may grow, so its size is taken again).
    let before_sub = fs::symlink_metadata(top.join("sub"))
        .expect("stat")
        .blocks()
        * 512;
    fs::hard_link(top.join("big"), top.join("sub/big-again")).expect("link");
    let after_sub = fs::symlink_metadata(top.join("sub"))
        .expect("stat")
        .blocks()
        * 512;
    let (bytes2, inodes2) = dir_usage(&top);
    assert_eq!(inodes2, 5);
    assert_eq!(bytes2, bytes - before_sub + after_sub);
}

#[test]
fn dir_usage_of_nothing_is_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(dir_usage(&dir.path().join("absent")), (0, 0));
    let (_, inodes) = dir_usage(dir.path());
    assert_eq!(inodes, 1);
}

/// A process in cgroups the test made, and those cgroups: both go when it
/// is dropped, also when an assertion fails.
struct LiveCgroup {
    child: Child,
    dirs: Vec<PathBuf>,
}

impl Drop for LiveCgroup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in &self.dirs {
            // The kernel may still be tearing the exited process out of
            // the cgroup for a moment; rmdir says EBUSY until it is done.
            for _ in 0..100 {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

#[test]
fn live_cgroup_of_a_real_process() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making cgroups needs root");
        return;
    }
    let name = format!("berth-stats-test-{}", std::process::id());
    let root = Path::new(ROOT);
    let dirs: Vec<PathBuf> = if cgroup_unified() {
        // The children of the root get memory and pids files only when
        // those controllers are enabled for them; a test should not change
        // that for the whole machine.
        let enabled = fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        if !enabled.contains(&"memory") || !enabled.contains(&"pids") {
            eprintln!("skipped: memory and pids are not enabled in {ROOT}");
            return;
        }
        vec![root.join(&name)]
    } else {
        let controllers = ["memory", "cpuacct", "pids"];
        if !controllers
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").exists())
        {
            eprintln!("skipped: the v1 memory, cpuacct and pids controllers are not all mounted");
            return;
        }
        controllers
            .iter()
            .map(|c| root.join(c).join(&name))
            .collect()
    };

    // The shell waits for a line before it execs sleep: memory is only
    // charged to the cgroup for pages allocated after the move, and the
    // exec (one process before and after) allocates some once it is in.
    let child = Command::new("sh")
        .args(["-c", "read go; exec sleep 30"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let mut live = LiveCgroup {
        child,
        dirs: Vec::new(),
    };
    for dir in &dirs {
        fs::create_dir(dir).expect("mkdir cgroup");
        live.dirs.push(dir.clone());
        fs::write(dir.join("cgroup.procs"), live.child.id().to_string()).expect("move the child");
    }
    let mut stdin = live.child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("release the child");
    drop(stdin);

    let cgroups_path = format!("/{name}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = read(&cgroups_path).expect("read the live cgroup");
        // Until the released child has run in the cgroup (and exec'd).
        let ran = s.memory_usage_bytes.is_some_and(|m| m > 0)
            && s.cpu_usage_core_nanos.is_some_and(|n| n > 0)
            && s.page_faults.is_some_and(|n| n > 0);
        if ran || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(s.memory_usage_bytes.is_some_and(|m| m > 0), "{s:?}");
    assert_eq!(s.pids, Some(1), "{s:?}");
    assert!(s.cpu_usage_core_nanos.is_some_and(|n| n > 0), "{s:?}");
    assert!(s.memory_working_set_bytes.is_some(), "{s:?}");
    assert!(s.memory_working_set_bytes <= s.memory_usage_bytes, "{s:?}");
    assert!(s.page_faults.is_some_and(|n| n > 0), "{s:?}");
    assert_eq!(s.oom_kills, Some(0), "{s:?}");
    assert!(!oom_killed(&cgroups_path));

    drop(live);
    for dir in &dirs {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
    assert!(matches!(read(&cgroups_path), Err(Error::NotFound(_))));
}

#[test]
fn net_dev_gives_each_interface_but_loopback() {
    let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
";
    assert_eq!(
        parse_net_dev(text),
        vec![InterfaceUsage {
            name: "eth0".into(),
            rx_bytes: 5000,
            rx_packets: 40,
            rx_errors: 1,
            rx_dropped: 2,
            tx_bytes: 3000,
            tx_packets: 30,
            tx_errors: 3,
            tx_dropped: 4,
        }]
    );
    assert!(parse_net_dev("garbage").is_empty());
}

#[test]
fn pressure_lines_read_as_the_kernel_writes_them() {
    // CPU on older kernels has no `full` line; unknown lines are skipped.
    let cpu = parse_pressure("some avg10=0.05 avg60=10.00 avg300=100.00 total=42\n").expect("psi");
    assert_eq!(
        cpu,
        Psi {
            some: PsiLine {
                total_micros: 42,
                avg10: 5,
                avg60: 1000,
                avg300: 10000,
            },
            full: None,
        }
    );
    assert_eq!(
        parse_pressure("full avg10=0.00 total=1\n"),
        None,
        "no some line"
    );
    assert_eq!(parse_pressure(""), None);
}

#[test]
fn unlimited_swap_has_no_room_reported() {
    let root = v1_tree();
    let memory = root.path().join("memory/berth/abc");
    put(
        &memory,
        "memory.memsw.limit_in_bytes",
        "9223372036854771712\n",
    );
    let s = read_at(root.path(), false, CG).expect("read");
    assert_eq!(
        (s.swap_usage_bytes, s.swap_available_bytes),
        (Some(1_048_576), None)
    );
    let v2 = v2_tree();
    put(&v2.path().join("berth/abc"), "memory.swap.max", "max\n");
    let s = read_at(v2.path(), true, CG).expect("read");
    assert_eq!(
        (s.swap_usage_bytes, s.swap_available_bytes),
        (Some(1_048_576), None)
    );
}
