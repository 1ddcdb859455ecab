//! Journal: durable record writes (each flushed before it returns), one
//! writer and several at once, beside the floor: a record-sized write plus
//! fdatasync on a plain file, the least a durable write can cost here.
//!
//!   cargo bench -p berth-bench --bench journal

use berth_actors::journal::{Journal, Kind, SledJournal};
use berth_bench::{table, Samples};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 2000;
const WRITERS: usize = 8;

fn record(i: usize) -> Vec<u8> {
    // About the size of a sandbox record.
    format!(
        "{{\"v\":1,\"data\":{{\"id\":\"{i:064}\",\"name\":\"pod-{i}_default_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0_0\",\"created_unix_nanos\":1700000000000000000}}}}"
    )
    .into_bytes()
}

fn floor(dir: &std::path::Path) -> Samples {
    let mut f = std::fs::File::create(dir.join("floor")).expect("floor file");
    let rec = record(0);
    // Preallocated and synced first, as the journal's segments are, so that
    // each fdatasync below carries data only.
    f.write_all(&vec![0u8; N * rec.len()]).expect("preallocate");
    f.sync_all().expect("sync");
    let mut lat = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        f.write_all_at(&rec, (i * rec.len()) as u64).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    f.flush().expect("flush");
    Samples::new("floor: write + fdatasync", lat, start.elapsed())
}

fn serial(j: &Arc<dyn Journal>) -> Samples {
    let mut lat = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        j.put(Kind::Sandbox, &format!("s{i}"), &record(i))
            .expect("put");
        lat.push(t.elapsed());
    }
    Samples::new("journal put, 1 writer", lat, start.elapsed())
}

fn concurrent(j: &Arc<dyn Journal>) -> Samples {
    let start = Instant::now();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(N / WRITERS);
                for i in 0..N / WRITERS {
                    let t = Instant::now();
                    j.put(Kind::Container, &format!("c{w}-{i}"), &record(i))
                        .expect("put");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect();
    Samples::new(
        format!("journal put, {WRITERS} writers"),
        lat,
        start.elapsed(),
    )
}

fn main() {
    // Measure on the disk the journal really uses (/var/lib), not tmpfs.
    let base = std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-journal-")
        .tempdir_in(base)
        .expect("tempdir");
    let floor = floor(dir.path());
    let j: Arc<dyn Journal> =
        Arc::new(SledJournal::open(&dir.path().join("journal")).expect("open journal"));
    let one = serial(&j);
    let many = concurrent(&j);
    table(
        "journal: durable writes (each flushed)",
        &[&floor, &one, &many],
        &[&floor],
    );
}
