use super::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Thing {
    id: String,
    size: u64,
}

impl Record for Thing {
    const KIND: Kind = Kind::Image;
    const VERSION: u32 = 2;
    fn key(&self) -> String {
        self.id.clone()
    }
    fn migrate(version: u32, data: serde_json::Value) -> Result<Self, String> {
        // Version 1 called the field "bytes".
        if version != 1 {
            return Err(format!("unknown version {version}"));
        }
        Ok(Thing {
            id: data["id"].as_str().ok_or("no id")?.to_string(),
            size: data["bytes"].as_u64().ok_or("no bytes")?,
        })
    }
}

fn journals() -> Vec<(Arc<dyn Journal>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledJournal::open(&dir.path().join("journal")).expect("open sled");
    vec![
        (Arc::new(MemoryJournal::new()), None),
        (Arc::new(sled), Some(dir)),
    ]
}

#[test]
fn typed_records_round_trip_and_count() {
    for (j, _dir) in journals() {
        let tree = Tree::<Thing>::open(j.clone(), "image").expect("owner");
        let a = Thing {
            id: "a".into(),
            size: 1,
        };
        tree.put(&a).expect("put");
        tree.put(&Thing {
            id: "b".into(),
            size: 2,
        })
        .expect("put");
        assert_eq!(tree.get("a").expect("get"), Some(a));
        assert_eq!(tree.load().expect("load").records.len(), 2);
        tree.remove("b").expect("remove");
        let stats = j.stats().expect("stats");
        assert!(stats.counts.contains(&(Kind::Image, 1)), "{stats:?}");
        assert!(stats.last_flush_unix_nanos > 0);
    }
}

#[test]
fn only_the_owner_opens_a_tree() {
    let j: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let err = Tree::<Thing>::open(j, "sandbox").err().expect("refused");
    assert!(
        err.to_string().contains("belong to the image actor"),
        "{err}"
    );
}

#[test]
fn old_versions_migrate_and_bad_records_do_not_stop_loading() {
    for (j, _dir) in journals() {
        let v1 = br#"{"v":1,"data":{"id":"old","bytes":7}}"#;
        j.put(Kind::Image, "old", v1).expect("put");
        j.put(Kind::Image, "junk", b"not json").expect("put");
        j.put(Kind::Image, "future", br#"{"v":9,"data":{}}"#)
            .expect("put");
        let tree = Tree::<Thing>::open(j, "image").expect("owner");
        let loaded = tree.load().expect("load");
        assert_eq!(
            loaded.records,
            vec![Thing {
                id: "old".into(),
                size: 7
            }]
        );
        assert_eq!(loaded.unreadable.len(), 2);
        assert!(loaded
            .unreadable
            .iter()
            .any(|e| e.to_string().contains("newer berthd")));
    }
}

/// Opens the journal at `path` again. Other tests of this process spawn
/// programs: a child between its fork and its exec holds a copy of every
/// descriptor for that instant, sled's lock included. This waits that out.
fn reopen(path: &std::path::Path) -> SledJournal {
    let mut reopened = SledJournal::open(path);
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        reopened = SledJournal::open(path);
    }
    reopened.expect("reopen")
}

#[test]
fn sled_records_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal");
    {
        let j: Arc<dyn Journal> = Arc::new(SledJournal::open(&path).expect("open"));
        let mut boots = BootLog::start(j.clone()).expect("boot");
        boots.mark_clean().expect("clean");
        BootLog::start(j).expect("second boot");
    }
    let j: Arc<dyn Journal> = Arc::new(reopen(&path));
    let log = BootLog::start(j).expect("third boot");
    let boots = log.all().expect("all");
    let seqs: Vec<_> = boots.iter().map(|b| (b.seq, b.clean_shutdown)).collect();
    assert_eq!(seqs, vec![(1, true), (2, false), (3, false)]);
}

#[test]
fn a_table_rewrites_old_records_and_quarantines_unreadable_ones() {
    for (j, _dir) in journals() {
        j.put(
            Kind::Image,
            "old",
            br#"{"v":1,"data":{"id":"old","bytes":7}}"#,
        )
        .expect("put");
        j.put(Kind::Image, "junk", b"not json").expect("put");
        j.put(
            Kind::Image,
            "good",
            br#"{"v":2,"data":{"id":"good","size":1}}"#,
        )
        .expect("put");
        let table =
            Table::load(Tree::<Thing>::open(j.clone(), "image").expect("owner")).expect("load");
        assert_eq!(table.len(), 2, "the rest loads");
        assert_eq!(table.get("old").map(|t| t.size), Some(7));
        // Migrated records are stored in the new version.
        let stored: Envelope =
            serde_json::from_slice(&j.get(Kind::Image, "old").expect("get").expect("there"))
                .expect("envelope");
        assert_eq!(stored.v, 2);
        assert_eq!(stored.data["size"], 7);
        // The unreadable one is out of the way, kept whole with why.
        assert_eq!(j.get(Kind::Image, "junk").expect("get"), None);
        let q = quarantined(j.as_ref()).expect("quarantine");
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].kind.as_str(), q[0].key.as_str()), ("image", "junk"));
        assert_eq!(q[0].raw, "not json");
        assert!(!q[0].reason.is_empty());
        // A second load finds nothing more to do.
        let again =
            Table::load(Tree::<Thing>::open(j.clone(), "image").expect("owner")).expect("load");
        assert_eq!(again.len(), 2);
        assert_eq!(quarantined(j.as_ref()).expect("quarantine").len(), 1);
    }
}

/// A tmpfs of `mib` MiB on a fresh directory, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs (the tests run as root)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Writes a file on `dir`'s disk until it is full.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    while f.write_all(&[0x5a; 4096]).is_ok() {}
    while f.write_all(&[0x5a]).is_ok() {}
    path
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_the_journal_reopens_when_it_has_room() {
    let disk = SmallDisk::mount(32);
    let path = disk.0.path().join("journal");
    let j = SledJournal::open(&path).expect("open");
    assert!(!j.frugal());
    assert!(disk.0.path().join("journal.reserve").exists());
    let filler = fill(disk.0.path());

    // A new pod's record is refused before anything is written; the
    // reserve is given back.
    let err = j.put(Kind::Sandbox, "pod", b"{}").expect_err("a full disk");
    assert_eq!(
        err,
        JournalError::Full {
            detail: err
                .to_string()
                .replace("no space left on the journal's disk: ", ""),
            written: false
        }
    );
    assert!(!err.uncertain());
    assert!(j.frugal());
    assert!(!disk.0.path().join("journal.reserve").exists());

    // Writes that make nothing new go on, into the reserve, until even
    // that is nearly gone: then nothing is written, before sled meets the
    // full disk.
    let value = vec![7u8; 4 << 10];
    let (stored, refusal) = put_until_refused(&j, &value);
    assert!(
        matches!(refusal, JournalError::Full { written: false, .. }),
        "{refusal:?}"
    );
    assert!(
        stored.len() > 500,
        "the reserve held {} writes",
        stored.len()
    );
    let err = j.remove(Kind::Meta, "boot-0").expect_err("nothing written");
    assert!(!err.uncertain(), "{err:?}");

    // Room again: the journal holds every write it reported durable,
    // takes its reserve back and makes new records.
    std::fs::remove_file(filler).expect("free the disk");
    j.put(Kind::Sandbox, "pod", b"{}")
        .expect("a new record once there is room");
    assert!(!j.frugal());
    assert!(disk.0.path().join("journal.reserve").exists());
    for key in &stored {
        assert_eq!(
            j.get(Kind::Meta, key).expect("get").as_deref(),
            Some(&value[..]),
            "{key}"
        );
    }
    drop(j);
    let reopened = reopen(&path);
    assert_eq!(
        reopened.get(Kind::Sandbox, "pod").expect("get").as_deref(),
        Some(&b"{}"[..])
    );
}

#[test]
fn a_write_that_sled_fails_for_want_of_space_is_reported_and_the_journal_reopens() {
    let disk = SmallDisk::mount(32);
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = restarted.clone();
    let j = SledJournal::open(&disk.0.path().join("journal"))
        .expect("open")
        .without_floor()
        .when_stuck(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let filler = fill(disk.0.path());
    j.put(Kind::Sandbox, "pod", b"{}")
        .expect_err("the reserve given back");
    let value = vec![7u8; 64 << 10];
    let (stored, failure) = put_until_refused(&j, &value);
    assert!(
        matches!(failure, JournalError::Full { written: true, .. }),
        "{failure:?}"
    );
    assert!(failure.uncertain());
    assert!(!stored.is_empty());
    // While the disk is full, a call finds the journal reopened, or fails
    // saying the disk is full (the failed database may not close before
    // the disk has room).
    match j.get(Kind::Meta, &stored[0]) {
        Ok(v) => assert_eq!(v.as_deref(), Some(&value[..])),
        Err(e) => assert!(matches!(e, JournalError::Full { .. }), "{e:?}"),
    }

    // Room again: the journal reopens, or (its failed database stuck)
    // has berthd restarted, which reopens it.
    std::fs::remove_file(filler).expect("free the disk");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while let Err(e) = j.put(Kind::Sandbox, "pod", b"{}") {
        if restarted.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                matches!(e, JournalError::Full { written: false, .. }),
                "{e:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reopened: {e:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let j = if restarted.load(std::sync::atomic::Ordering::SeqCst) {
        // As a new berthd would: the stuck database is left behind (its
        // lock released with the process, here by hand).
        release_lock(&disk.0.path().join("journal/db"));
        reopen(&disk.0.path().join("journal"))
    } else {
        j
    };
    for key in &stored {
        assert_eq!(
            j.get(Kind::Meta, key).expect("get").as_deref(),
            Some(&value[..]),
            "{key}"
        );
    }
}

/// Unlocks `path` where this process holds it open locked, as the end of
/// the process would.
fn release_lock(path: &std::path::Path) {
    for e in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|p| p == path) {
            if let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() {
                // SAFETY: flock on a descriptor this process holds.
                unsafe { libc::flock(fd, libc::LOCK_UN) };
            }
        }
    }
}

/// Boot records of `value` put into `j` until one fails: the keys stored,
/// and the failure.
fn put_until_refused(j: &SledJournal, value: &[u8]) -> (Vec<String>, JournalError) {
    let mut stored = Vec::new();
    for i in 0..100_000 {
        let key = format!("boot-{i}");
        match j.put(Kind::Meta, &key, value) {
            Ok(()) => stored.push(key),
            Err(e) => return (stored, e),
        }
    }
    panic!("the disk never filled up");
}
