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
    let j: Arc<dyn Journal> = Arc::new(SledJournal::open(&path).expect("reopen"));
    let log = BootLog::start(j).expect("third boot");
    let boots = log.all().expect("all");
    let seqs: Vec<_> = boots.iter().map(|b| (b.seq, b.clean_shutdown)).collect();
    assert_eq!(seqs, vec![(1, true), (2, false), (3, false)]);
}
