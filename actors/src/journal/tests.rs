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
    // Other tests of this process spawn programs: a child between its fork
    // and its exec holds a copy of every descriptor for that instant,
    // sled's lock included. Reopening waits that out.
    let mut reopened = SledJournal::open(&path);
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        reopened = SledJournal::open(&path);
    }
    let j: Arc<dyn Journal> = Arc::new(reopened.expect("reopen"));
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
