//! berth-fuzz: fuzzes berth's parsers of outside data for a bounded time.
//!
//! ```text
//! berth-fuzz [--seconds N] [--seed S] [--save K] [TARGET...]
//! ```
//!
//! Runs each target (all without names) for N seconds (default 10),
//! starting from its seeds and `fuzz/corpus/<target>/`. A crash is kept
//! in `fuzz/crashes/<target>/` and the exit status is 1. `--save K` adds
//! up to K inputs with new answers per target to the corpus.

use berth_fuzz::engine::{self, Dirs};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut seconds = 10u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut save = 0usize;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| {
                    eprintln!("berth-fuzz: {what} needs a number");
                    std::process::exit(2)
                })
        };
        match a.as_str() {
            "--seconds" => seconds = value("--seconds"),
            "--seed" => seed = value("--seed"),
            "--save" => save = value("--save") as usize,
            "-h" | "--help" => {
                println!("berth-fuzz [--seconds N] [--seed S] [--save K] [TARGET...]");
                return;
            }
            name => names.push(name.to_string()),
        }
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = Dirs {
        corpus: here.join("corpus"),
        crashes: here.join("crashes"),
        save,
    };
    let targets = berth_fuzz::targets::all();
    for n in &names {
        if !targets.iter().any(|t| t.name == n) {
            eprintln!("berth-fuzz: no target {n:?}");
            std::process::exit(2);
        }
    }
    // Crashes are reported by the engine, once each.
    std::panic::set_hook(Box::new(|_| {}));
    println!("seed {seed}; {seconds} s per target");
    println!(
        "{:<18} {:>12} {:>8} {:>10} {:>8}",
        "target", "executions", "corpus", "answers", "crashes"
    );
    let mut crashed = false;
    for t in targets
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
    {
        let r = engine::run(t, Duration::from_secs(seconds), seed, &dirs);
        println!(
            "{:<18} {:>12} {:>8} {:>10} {:>8}",
            t.name,
            r.executions,
            r.corpus,
            r.signatures,
            r.crashes.len()
        );
        crashed |= !r.crashes.is_empty();
    }
    if crashed {
        std::process::exit(1);
    }
}
