//! A mutational fuzzer that runs on stable Rust. Without compiler
//! coverage, it keeps an input when the target answers it in a way not
//! seen before (the target's *signature* of its answer: which error, or
//! which kind of success), so the corpus grows toward the parser's
//! different paths. A panic, or an input that takes longer than the
//! watchdog allows, is a crash: the input is written under
//! `crashes/<target>/` and the run fails.

use sha2::Digest;
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One parser of outside data, as the fuzzer drives it.
pub struct Target {
    pub name: &'static str,
    /// Feeds the input to the parser; answers the signature of what it
    /// did. Panics are findings.
    pub run: fn(&[u8]) -> String,
    /// Starting inputs, valid and nearly valid.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens spliced into inputs (keywords, separators, numbers).
    pub dictionary: &'static [&'static str],
    pub max_len: usize,
}

/// What one target's run found.
#[derive(Debug, Default)]
pub struct Report {
    pub executions: u64,
    pub corpus: usize,
    pub signatures: usize,
    pub crashes: Vec<PathBuf>,
}

/// xorshift64*: small, fast and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: [u8; 14] = [
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b'\t', b'/', b'.', b'"', b'{', b'}', b'\\',
];

/// One to four stacked mutations of `input`, splicing from `corpus`.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], t: &Target) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                out.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = out[at..at + n].to_vec();
                let to = rng.below(len + 1);
                out.splice(to..to, copy);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 | 8 if !t.dictionary.is_empty() => {
                let token = t.dictionary[rng.below(t.dictionary.len())].as_bytes();
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || len == 0 {
                    out.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    out.splice(at..end, token.iter().copied());
                }
            }
            9 if len > 0 => out.truncate(rng.below(len)),
            _ => {
                // Repeats a piece: long names, deep nesting.
                if len > 0 {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(16));
                    let piece = out[at..at + n].to_vec();
                    for _ in 0..rng.below(64) {
                        out.splice(at..at, piece.iter().copied());
                    }
                }
            }
        }
    }
    out.truncate(t.max_len);
    out
}

fn name_of(input: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(input)[..8])
}

/// The inputs in `dir` (none if it does not exist).
pub fn read_dir(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Where a run keeps things.
pub struct Dirs {
    pub corpus: PathBuf,
    pub crashes: PathBuf,
    /// Add inputs with new signatures to the corpus directory (at most
    /// this many new files per target).
    pub save: usize,
}

/// A panic's message, for the report.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// How long one input may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

/// Fuzzes `t` for `time`, starting from its seeds and its corpus.
pub fn run(t: &Target, time: Duration, seed: u64, dirs: &Dirs) -> Report {
    let corpus_dir = dirs.corpus.join(t.name);
    let crash_dir = dirs.crashes.join(t.name);
    let mut corpus: Vec<Vec<u8>> = (t.seeds)();
    corpus.extend(read_dir(&corpus_dir));
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    let mut saved = 0;
    let mut rng = Rng::new(seed ^ t.name.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);

    // The watchdog: an input running past HANG is written out and ends
    // the process, since it cannot be stopped from here.
    let current: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let crash_dir = crash_dir.clone();
        let name = t.name;
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let at = started.load(Ordering::Relaxed);
                if at != 0 && epoch.elapsed().as_millis() as u64 - at > HANG.as_millis() as u64 {
                    let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                    let _ = std::fs::create_dir_all(&crash_dir);
                    let path = crash_dir.join(format!("hang-{}", name_of(&input)));
                    let _ = std::fs::write(&path, &input);
                    eprintln!(
                        "{name}: an input ran longer than {HANG:?}: {}",
                        path.display()
                    );
                    std::process::exit(2);
                }
            }
        });
    }

    let exec = |input: &[u8], report: &mut Report| -> Option<String> {
        if let Ok(mut c) = current.lock() {
            c.clear();
            c.extend_from_slice(input);
        }
        started.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let got = catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
        started.store(0, Ordering::Relaxed);
        report.executions += 1;
        match got {
            Ok(sig) => Some(sig),
            Err(p) => {
                let _ = std::fs::create_dir_all(&crash_dir);
                let path = crash_dir.join(format!("crash-{}", name_of(input)));
                let _ = std::fs::write(&path, input);
                let why: String = panic_text(&*p).chars().take(300).collect();
                eprintln!("{}: crash ({why}): {}", t.name, path.display());
                report.crashes.push(path);
                None
            }
        }
    };

    // The corpus first: each input's signature.
    for input in corpus.clone() {
        if let Some(sig) = exec(&input, &mut report) {
            seen.insert(sig);
        }
    }
    let deadline = Instant::now() + time;
    while Instant::now() < deadline && report.crashes.is_empty() {
        let base = corpus[rng.below(corpus.len())].clone();
        let input = mutate(&mut rng, &base, &corpus, t);
        let Some(sig) = exec(&input, &mut report) else {
            break;
        };
        if seen.insert(sig) && corpus.len() < 4096 {
            if saved < dirs.save {
                let _ = std::fs::create_dir_all(&corpus_dir);
                let _ = std::fs::write(corpus_dir.join(name_of(&input)), &input);
                saved += 1;
            }
            corpus.push(input);
        }
    }
    done.store(true, Ordering::Relaxed);
    report.corpus = corpus.len();
    report.signatures = seen.len();
    report
}

/// A short signature of an error message: its words outside the quoted
/// part (which holds the input) and without numbers, so that the same
/// kind of refusal counts once.
pub fn signature(kind: &str, message: &str) -> String {
    let quote = |c: char| matches!(c, '"' | '`' | '\'');
    let message = message.lines().next().unwrap_or_default();
    let outside = match (message.find(quote), message.rfind(quote)) {
        (Some(first), Some(last)) if first < last => {
            format!("{}…{}", &message[..first], &message[last + 1..])
        }
        _ => message.to_string(),
    };
    let words: String = outside
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(72)
        .collect();
    format!("{kind}:{words}")
}
