//! The container's stdout and stderr, copied into its CRI log.
//!
//! Each line becomes `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`: `F` for
//! a whole line, `P` for a piece (a line longer than [`LINE_MAX`] is cut
//! into pieces; output that ends without a newline is a piece). One thread
//! polls both pipes; every batch of lines is one `write` to an `O_APPEND`
//! file under the file's lock, so a reopen for log rotation (SIGUSR1) falls
//! between lines, never inside one.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use berth_protocol::crilog::LINE_MAX;
use berth_protocol::crilog::{format_line, take_lines};

/// A CRI log file that can be reopened at the same path.
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// The last write error, so a full disk is reported once, not per line.
    failing: bool,
}

pub type SharedLog = Arc<Mutex<LogFile>>;

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<SharedLog> {
        Ok(Arc::new(Mutex::new(LogFile {
            path: path.to_path_buf(),
            file: berth_protocol::crilog::open(path)?,
            failing: false,
        })))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts writing to a fresh file at the same path (the old one was
    /// renamed away by whoever rotates logs).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = berth_protocol::crilog::open(&self.path)?;
        self.failing = false;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.file.write_all(bytes) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    log::warn!("container log {}: lines lost: {e}", self.path.display());
                }
                self.failing = true;
            }
        }
    }
}

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, LogFile> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set once the copier has seen both pipes end.
#[derive(Default)]
pub struct Drained {
    done: Mutex<bool>,
    cond: Condvar,
}

impl Drained {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until the output is drained or `limit` passes; true if drained.
    pub fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = match self.cond.wait_timeout(done, deadline - now) {
                Ok((d, _)) => d,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// Where an attach takes a copy of the container's raw output: a FIFO
/// berthd reads, written without blocking. Output it has no room for is
/// dropped for it (never for the log): a slow client never stalls the
/// container.
pub struct Tap {
    pub tag: &'static str,
    pub out: File,
    /// Bytes dropped for lack of room, reported once.
    dropped: bool,
}

impl Tap {
    pub fn new(tag: &'static str, out: File) -> Tap {
        Tap {
            tag,
            out,
            dropped: false,
        }
    }
}

/// The attaches of a container, while its output lasts.
#[derive(Default)]
pub struct Taps {
    list: Vec<Tap>,
    /// The output ended: new taps are closed at once.
    ended: bool,
}

pub type SharedTaps = Arc<Mutex<Taps>>;

impl Taps {
    /// Adds `tap`; false (and the tap dropped, so its reader sees the end)
    /// when the output already ended.
    pub fn add(&mut self, tap: Tap) -> bool {
        if self.ended {
            return false;
        }
        self.list.push(tap);
        true
    }

    fn write(&mut self, tag: &str, bytes: &[u8]) {
        self.list.retain_mut(|t| {
            if t.tag != tag {
                return true;
            }
            match t.out.write(bytes) {
                Ok(n) if n == bytes.len() => true,
                Ok(_) => {
                    t.note_drop();
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    t.note_drop();
                    true
                }
                // The reader is gone: the attach ended.
                Err(_) => false,
            }
        });
    }

    fn end(&mut self) {
        self.ended = true;
        self.list.clear();
    }
}

impl Tap {
    fn note_drop(&mut self) {
        if !self.dropped {
            log::warn!("an attached client is not keeping up: some {} output skipped it (the log has it all)", self.tag);
        }
        self.dropped = true;
    }
}

fn lock_taps(taps: &SharedTaps) -> std::sync::MutexGuard<'_, Taps> {
    taps.lock().unwrap_or_else(|p| p.into_inner())
}

/// One of the container's output streams.
pub struct Stream {
    pub pipe: OwnedFd,
    pub log: SharedLog,
    pub tag: &'static str,
}

struct Open {
    pipe: File,
    log: SharedLog,
    tag: &'static str,
    buf: Vec<u8>,
}

/// Starts the thread that copies `streams` into their logs (and to the
/// attached `taps`) until every pipe is closed.
pub fn spawn_copier(streams: Vec<Stream>, taps: SharedTaps) -> std::io::Result<Arc<Drained>> {
    let drained = Arc::new(Drained::default());
    let done = drained.clone();
    let open: Vec<Open> = streams
        .into_iter()
        .map(|s| Open {
            pipe: File::from(s.pipe),
            log: s.log,
            tag: s.tag,
            buf: Vec::with_capacity(LINE_MAX),
        })
        .collect();
    std::thread::Builder::new()
        .name("log-copier".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            copy(open, &taps);
            lock_taps(&taps).end();
            done.set();
        })?;
    Ok(drained)
}

fn copy(mut open: Vec<Open>, taps: &SharedTaps) {
    let mut out = Vec::new();
    while !open.is_empty() {
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|o| PollFd::new(o.pipe.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("poll on the container's output: {e}; output is no longer logged");
                return;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut closed = Vec::new();
        for ((i, o), ready) in open.iter_mut().enumerate().zip(ready) {
            if !ready {
                continue;
            }
            // Read straight into the stream's buffer, after what it holds.
            // It always has room: take_lines never leaves it full.
            let held = o.buf.len();
            o.buf.resize(LINE_MAX, 0);
            let read = o.pipe.read(&mut o.buf[held..]);
            o.buf.truncate(held + read.as_ref().map_or(0, |n| *n));
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A terminal's master reads EIO once every slave is closed:
                // the end of its output.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
                Err(e) => {
                    log::warn!("reading the container's {}: {e}", o.tag);
                    0
                }
            };
            if n > 0 {
                lock_taps(taps).write(o.tag, &o.buf[held..held + n]);
            }
            out.clear();
            let now = SystemTime::now();
            if n == 0 {
                // End of output: what is left had no newline.
                if !o.buf.is_empty() {
                    format_line(&mut out, now, o.tag, false, &o.buf);
                    o.buf.clear();
                }
                closed.push(i);
            } else {
                take_lines(&mut o.buf, &mut out, now, o.tag);
            }
            if !out.is_empty() {
                lock(&o.log).write(&out);
            }
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copier_writes_both_streams_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).expect("open log");
        let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
        let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
        let drained = spawn_copier(
            vec![
                Stream {
                    pipe: out_r,
                    log: log.clone(),
                    tag: "stdout",
                },
                Stream {
                    pipe: err_r,
                    log: log.clone(),
                    tag: "stderr",
                },
            ],
            Default::default(),
        )
        .expect("copier");
        let mut out_w = File::from(out_w);
        let mut err_w = File::from(err_w);
        out_w.write_all(b"one\n").expect("write");
        err_w.write_all(b"two\n").expect("write");
        std::thread::sleep(Duration::from_millis(100));
        std::fs::rename(&path, dir.path().join("c.log.1")).expect("rotate");
        lock(&log).reopen().expect("reopen");
        out_w.write_all(b"three").expect("write");
        drop(out_w);
        drop(err_w);
        assert!(drained.wait(Duration::from_secs(5)));
        let old = std::fs::read_to_string(dir.path().join("c.log.1")).expect("old");
        let new = std::fs::read_to_string(&path).expect("new");
        assert!(old.contains(" stdout F one\n"), "{old}");
        assert!(old.contains(" stderr F two\n"), "{old}");
        assert!(new.ends_with(" stdout P three\n"), "{new}");
        assert_eq!(new.lines().count(), 1);
    }
}
