//! The shim's own log: plain lines appended to `BUNDLE/shim.log`, never to
//! the container's log. The `log` facade is used so that ttrpc's warnings
//! land here too.

use berth_protocol::timefmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

struct ShimLog {
    file: OnceLock<File>,
}

static LOG: ShimLog = ShimLog {
    file: OnceLock::new(),
};

/// Opens the log file and routes the `log` macros to it: our own messages
/// from `info` up, other crates' (ttrpc) from `warn` up.
pub fn init(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let _ = LOG.file.set(file);
    // A second init (there is none) would keep the first logger.
    let _ = log::set_logger(&LOG);
    log::set_max_level(log::LevelFilter::Info);
    Ok(())
}

impl log::Log for ShimLog {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        if meta.target().starts_with("berth_shim") {
            meta.level() <= log::Level::Info
        } else {
            meta.level() <= log::Level::Warn
        }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(mut file) = self.file.get() else {
            return;
        };
        let mut line = Vec::with_capacity(128);
        timefmt::write_rfc3339_nano(&mut line, SystemTime::now());
        let _ = writeln!(
            line,
            " {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
        // One write per line on an O_APPEND file keeps lines from threads
        // whole without a lock. Nowhere is left to report a failure to.
        let _ = file.write_all(&line);
    }

    fn flush(&self) {}
}
