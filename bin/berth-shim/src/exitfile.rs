//! `BUNDLE/exit`: the container's exit, kept on disk so that berthd learns
//! it even when it was down at the time, or the shim is gone since.
//!
//! The file is written to a temporary name and renamed into place, so a
//! reader sees either no file or a whole one:
//! `{"status": <code or 128+signal>, "exited_at_unix_nanos": <u128>}`.

use crate::reaper::Exit;
use crate::timefmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;

pub const FILE: &str = "exit";

pub fn write(bundle: &Path, exit: &Exit) -> std::io::Result<()> {
    let tmp = bundle.join(".exit.tmp");
    let body = format!(
        "{{\"status\": {}, \"exited_at_unix_nanos\": {}}}\n",
        exit.status,
        timefmt::unix_nanos(exit.at)
    );
    let mut file = File::create(&tmp)?;
    file.write_all(body.as_bytes())?;
    // Durable before it is visible: a reader never finds an empty file
    // after a crash of the node.
    file.sync_all()?;
    std::fs::rename(&tmp, bundle.join(FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exit = Exit {
            status: 143,
            at: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001),
        };
        write(dir.path(), &exit).expect("write");
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert_eq!(
            text,
            "{\"status\": 143, \"exited_at_unix_nanos\": 1700000000000000001}\n"
        );
        assert!(!dir.path().join(".exit.tmp").exists());
    }
}
