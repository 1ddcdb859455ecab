//! berth's fuzzing: [`engine`] (a mutational fuzzer on stable Rust) and
//! [`targets`] (every parser of outside data). `berth-fuzz` runs them
//! for a bounded time; `tests/replay.rs` replays the kept corpus and
//! every crash reproducer on each test run.

pub mod engine;
pub mod targets;
