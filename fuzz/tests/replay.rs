//! Replays every kept corpus input and every crash reproducer through
//! its target: a crash found once stays fixed.

use berth_fuzz::engine::read_dir;
use std::path::Path;

#[test]
fn the_corpus_and_every_crash_reproducer_run_clean() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for t in berth_fuzz::targets::all() {
        for dir in ["corpus", "crashes"] {
            for input in read_dir(&here.join(dir).join(t.name)) {
                (t.run)(&input);
                ran += 1;
            }
        }
        for seed in (t.seeds)() {
            (t.run)(&seed);
            ran += 1;
        }
    }
    assert!(ran > 0);
}
