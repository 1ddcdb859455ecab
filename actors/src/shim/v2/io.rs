//! The stdio of a container under a v2 shim, held by berthd: FIFOs in the
//! bundle that the shim writes the container's output into and reads its
//! stdin from. berthd writes the output into the CRI log (the format
//! berth-shim writes), copies it to attached clients, and feeds what
//! they type into the stdin FIFO.
//!
//! berthd's reading ends are opened before the shim's create, so the
//! shim's opens find them; after a restart of berthd they are opened
//! again (output the pipe held meanwhile is still there). The output has
//! drained when every writer closed its FIFO: the container and all it
//! left behind have exited.

use super::super::client::ShimClient;
use super::super::plumbing::{mkfifo, open_reader};
use crate::{Error, Result};
use berth_protocol::crilog::{format_line, take_lines, LINE_MAX};
use berth_stream::ProcessIo;
use bytes::Bytes;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

const STDIN: &str = "stdin.fifo";
const STDOUT: &str = "stdout.fifo";
const STDERR: &str = "stderr.fifo";

/// What the container's stdio are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// A stdin berthd holds open for attaches.
    pub stdin: bool,
    /// A terminal: its output is all stdout.
    pub tty: bool,
}

/// The FIFO paths for the shim's create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

impl Paths {
    pub fn of(bundle: &Path, shape: Shape) -> Paths {
        Paths {
            stdin: shape.stdin.then(|| bundle.join(STDIN)),
            stdout: bundle.join(STDOUT),
            stderr: (!shape.tty).then(|| bundle.join(STDERR)),
        }
    }
}

/// The CRI log file, reopened at its path for rotation.
struct Log {
    path: PathBuf,
    file: Option<File>,
    failing: bool,
}

impl Log {
    fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(bytes) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(log = %self.path.display(), error = %e, "container log: lines lost");
                }
                self.failing = true;
            }
        }
    }
}

/// Attached clients' copies of the output. One that cannot keep up
/// loses output (the log has it all); the container never waits for it.
#[derive(Default)]
struct Taps {
    list: Vec<(u64, &'static str, mpsc::Sender<Bytes>)>,
    next: u64,
    ended: bool,
}

impl Taps {
    fn send(&mut self, tag: &str, bytes: &[u8]) {
        let chunk = Bytes::copy_from_slice(bytes);
        self.list.retain(|(_, t, to)| {
            *t != tag
                || !matches!(
                    to.try_send(chunk.clone()),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// berthd's reading ends, open, before the shim's create.
pub struct Opened {
    paths: Paths,
    shape: Shape,
    stdout: pipe::Receiver,
    stderr: Option<pipe::Receiver>,
}

/// Makes the FIFOs (fresh task) and opens berthd's reading ends.
pub fn open(bundle: &Path, shape: Shape, fresh: bool) -> Result<Opened> {
    let paths = Paths::of(bundle, shape);
    if fresh {
        for p in [
            Some(&paths.stdout),
            paths.stderr.as_ref(),
            paths.stdin.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            mkfifo(p)?;
        }
    }
    Ok(Opened {
        stdout: open_reader(&paths.stdout)?,
        stderr: paths.stderr.as_deref().map(open_reader).transpose()?,
        paths,
        shape,
    })
}

impl Opened {
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Starts copying (the shim holds its ends now) into the CRI log at
    /// `log` (none: the output is read and dropped).
    pub fn start(self, log: Option<&Path>) -> Result<TaskIo> {
        let file = log
            .map(|p| {
                berth_protocol::crilog::open(p)
                    .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))
            })
            .transpose()?;
        let log = Arc::new(Mutex::new(Log {
            path: log.map(Path::to_path_buf).unwrap_or_default(),
            file,
            failing: false,
        }));
        let stdin = match &self.paths.stdin {
            // Read-write: it opens without waiting, and the container's
            // stdin ends when berthd drops it.
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let taps = Arc::new(Mutex::new(Taps::default()));
        let (done_tx, done) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let mut pumps = vec![tokio::spawn(pump(
            self.stdout,
            "stdout",
            log.clone(),
            taps.clone(),
            exited.clone(),
        ))];
        if let Some(err) = self.stderr {
            pumps.push(tokio::spawn(pump(
                err,
                "stderr",
                log.clone(),
                taps.clone(),
                exited,
            )));
        }
        let ends = pumps.iter().map(|p| p.abort_handle()).collect::<Vec<_>>();
        let end_taps = taps.clone();
        let watcher = tokio::spawn(async move {
            for p in pumps {
                let _ = p.await;
            }
            let mut t = lock(&end_taps);
            t.ended = true;
            t.list.clear();
            drop(t);
            let _ = done_tx.send(true);
        });
        let mut tasks = ends;
        tasks.push(watcher.abort_handle());
        Ok(TaskIo {
            shape: self.shape,
            log,
            taps,
            stdin: tokio::sync::Mutex::new(stdin),
            done,
            exited: exited_tx,
            tasks: Mutex::new(tasks),
        })
    }
}

/// A container's stdio at work.
pub struct TaskIo {
    shape: Shape,
    log: Arc<Mutex<Log>>,
    taps: Arc<Mutex<Taps>>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    done: watch::Receiver<bool>,
    /// Set when the task exited: the pumps look for the end once more.
    exited: watch::Sender<bool>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for TaskIo {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TaskIo {
    /// Ties another task's life to this one (the shim's log reader).
    pub fn hold(&self, task: AbortHandle) {
        lock(&self.tasks).push(task);
    }

    /// Stops copying (the task is being deleted).
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Waits until the output has drained, for at most `limit`; true if
    /// it has. Called once the task has exited.
    pub async fn drained(&self, limit: Duration) -> bool {
        self.exited.send_replace(true);
        let mut done = self.done.clone();
        tokio::time::timeout(limit, done.wait_for(|d| *d))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts writing a fresh file at the log's path (the old one was
    /// renamed away).
    pub fn reopen_log(&self) -> Result<()> {
        let mut log = lock(&self.log);
        if log.file.is_none() {
            return Ok(());
        }
        let file = berth_protocol::crilog::open(&log.path)
            .map_err(|e| Error::Internal(format!("reopen {}: {e}", log.path.display())))?;
        log.file = Some(file);
        log.failing = false;
        Ok(())
    }

    /// Joins a client to the container's stdio until the container's
    /// output ends or the client goes. With `close_stdin`, the
    /// container's stdin is closed when this client's ends.
    pub async fn attach(
        &self,
        client: &ShimClient,
        io: ProcessIo,
        close_stdin: bool,
    ) -> Result<()> {
        let ProcessIo {
            stdin,
            stdout,
            stderr,
            resize,
            gone,
            ..
        } = io;
        if stdin.is_some() && !self.shape.stdin {
            return Err(Error::FailedPrecondition(
                "attach: the container was not created with stdin".into(),
            ));
        }
        let ids = {
            let mut taps = lock(&self.taps);
            let mut ids = Vec::new();
            let wanted = [
                ("stdout", stdout),
                ("stderr", stderr.filter(|_| !self.shape.tty)),
            ];
            for (tag, to) in wanted {
                if let Some(to) = to {
                    if taps.ended {
                        // Dropped: the client sees the end at once.
                        continue;
                    }
                    let id = taps.next;
                    taps.next += 1;
                    taps.list.push((id, tag, to));
                    ids.push(id);
                }
            }
            ids
        };
        let typing = async {
            if let Some(mut from) = stdin {
                while let Some(b) = from.recv().await {
                    let mut held = self.stdin.lock().await;
                    let Some(to) = held.as_mut() else { break };
                    if to.write_all(&b).await.is_err() {
                        break;
                    }
                }
                if close_stdin {
                    // The shim holds a writer of its own: it closes the
                    // container's stdin when asked.
                    self.stdin.lock().await.take();
                    let _ = client.close_io(None).await;
                }
            }
            std::future::pending::<()>().await
        };
        let sizes = async {
            if let Some(mut sizes) = resize {
                while let Some(size) = sizes.recv().await {
                    let _ = client
                        .resize_pty(None, size.width.into(), size.height.into())
                        .await;
                }
            }
            std::future::pending::<()>().await
        };
        let mut done = self.done.clone();
        tokio::select! {
            _ = done.wait_for(|d| *d) => {}
            _ = gone => tracing::debug!("the attached client went away"),
            _ = typing => {}
            _ = sizes => {}
        }
        lock(&self.taps).list.retain(|(id, _, _)| !ids.contains(id));
        Ok(())
    }
}

/// One read(2) of the FIFO, whatever tokio thinks of its readiness.
fn raw_read(from: &pipe::Receiver, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for as long as `from` lives, and `buf` is
    // valid for writes of its length.
    let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // A terminal's end reads EIO once every slave is closed.
        if e.raw_os_error() == Some(libc::EIO) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Copies one output FIFO into the log and the taps until every writer
/// closed it.
async fn pump(
    from: pipe::Receiver,
    tag: &'static str,
    log: Arc<Mutex<Log>>,
    taps: Arc<Mutex<Taps>>,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(LINE_MAX);
    let mut out = Vec::new();
    loop {
        // take_lines never leaves the buffer full: there is always room.
        let held = buf.len();
        buf.resize(LINE_MAX, 0);
        // Read first, wait after: a reader that opened its FIFO while the
        // writers were already there (or gone: berthd restarted) is never
        // told of their end by poll, so the end is looked for again once
        // the task has exited.
        let read = loop {
            match raw_read(&from, &mut buf[held..]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
            tokio::select! {
                ready = from.readable() => {
                    if ready.is_err() {
                        break Ok(0);
                    }
                    // Readiness is cleared here; the read above decides.
                    let _ = from.try_io(|| {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                }
                _ = exited.changed() => {}
            }
        };
        let n = read.unwrap_or(0);
        buf.truncate(held + n);
        if n > 0 {
            lock(&taps).send(tag, &buf[held..]);
        }
        out.clear();
        let now = SystemTime::now();
        if n == 0 {
            if !buf.is_empty() {
                format_line(&mut out, now, tag, false, &buf);
            }
        } else {
            take_lines(&mut buf, &mut out, now, tag);
        }
        if !out.is_empty() {
            lock(&log).write(&out);
        }
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_becomes_cri_lines_until_every_writer_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shape = Shape {
            stdin: false,
            tty: false,
        };
        let opened = open(dir.path(), shape, true).expect("open");
        let paths = opened.paths().clone();
        assert!(paths.stdin.is_none());
        // The shim's ends, before berthd starts copying.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths.stdout)
            .expect("stdout");
        let mut err = std::fs::OpenOptions::new()
            .write(true)
            .open(paths.stderr.as_ref().expect("stderr"))
            .expect("stderr");
        let log = dir.path().join("c.log");
        let io = opened.start(Some(&log)).expect("start");
        out.write_all(b"one\ntw").expect("write");
        err.write_all(b"oops\n").expect("write");
        assert!(!io.drained(Duration::from_millis(200)).await);
        std::fs::rename(&log, dir.path().join("c.log.1")).expect("rotate");
        io.reopen_log().expect("reopen");
        out.write_all(b"o").expect("write");
        drop(out);
        drop(err);
        assert!(io.drained(Duration::from_secs(5)).await);
        let old = std::fs::read_to_string(dir.path().join("c.log.1")).expect("old");
        let new = std::fs::read_to_string(&log).expect("new");
        assert!(old.contains(" stdout F one\n"), "{old}");
        assert!(old.contains(" stderr F oops\n"), "{old}");
        assert!(new.ends_with(" stdout P two\n"), "{new}");
    }
}
