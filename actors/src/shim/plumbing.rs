//! A streaming client's stdio joined to a process through FIFOs: made
//! under a directory of their own, berthd's ends opened first (so the
//! shim's opens never wait), then pumped: output FIFOs to the client,
//! the client's stdin into its FIFO (ended when the client ends it), and
//! terminal sizes to the shim. Shared by Exec and Attach.

use super::client::ShimClient;
use crate::{Error, Result};
use berth_stream::{ProcessIo, TermSize};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Read size of the output pumps.
const CHUNK: usize = 32 * 1024;

/// The FIFOs' paths, for the shim.
#[derive(Debug, Clone, Default)]
pub(super) struct FifoPaths {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// The FIFOs made and berthd's ends open, not yet pumping.
pub(super) struct Plumbing {
    pub paths: FifoPaths,
    readers: Vec<(pipe::Receiver, mpsc::Sender<Bytes>)>,
    stdin: Option<(mpsc::Receiver<Bytes>, pipe::Sender)>,
    resize: Option<mpsc::Receiver<TermSize>>,
}

/// The pumps at work.
pub(super) struct Pumps {
    /// Output pumps: each ends at its FIFO's end.
    pub outputs: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

pub(super) type Gone = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(super) fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", path.display())))
}

fn open_err(p: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("open {}: {e}", p.display()))
}

/// Opens berthd's reading end of the FIFO at `path` (without waiting for
/// a writer).
pub(super) fn open_reader(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| open_err(path, e))
}

impl Plumbing {
    /// Makes FIFOs in `dir` for the streams `io` has (no stderr beside a
    /// terminal) and opens berthd's ends. Answers `io`'s `gone`.
    pub async fn make(dir: &Path, io: ProcessIo) -> Result<(Plumbing, Gone)> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
        let ProcessIo {
            tty,
            stdin,
            stdout,
            stderr,
            resize,
            gone,
        } = io;
        let fifo = |name: &str, wanted: bool| -> Result<Option<PathBuf>> {
            if !wanted {
                return Ok(None);
            }
            let p = dir.join(name);
            mkfifo(&p)?;
            Ok(Some(p))
        };
        let paths = FifoPaths {
            stdin: fifo("stdin", stdin.is_some())?,
            stdout: fifo("stdout", stdout.is_some())?,
            stderr: fifo("stderr", stderr.is_some() && !tty)?,
        };
        // Read ends first, so the shim's opens for writing find a reader;
        // stdin's write end is opened read-write, so it needs no reader.
        let mut readers = Vec::new();
        for (path, to) in [(&paths.stdout, stdout), (&paths.stderr, stderr)] {
            if let (Some(p), Some(to)) = (path, to) {
                readers.push((open_reader(p)?, to));
            }
        }
        let stdin = match (&paths.stdin, stdin) {
            (Some(p), Some(from)) => {
                let w = pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(|e| open_err(p, e))?;
                Some((from, w))
            }
            _ => None,
        };
        Ok((
            Plumbing {
                paths,
                readers,
                stdin,
                resize,
            },
            gone,
        ))
    }

    /// Starts pumping, once the shim holds its ends (a reader's end of file
    /// is then the process's). Sizes go to the terminal of `exec_id`
    /// (`None`: the container's own).
    pub fn start(self, client: &ShimClient, exec_id: Option<String>) -> Pumps {
        let outputs = self
            .readers
            .into_iter()
            .map(|(from, to)| pump_out(from, to))
            .collect();
        let mut others = Vec::new();
        if let Some((mut from, mut to)) = self.stdin {
            let (client, exec_id) = (client.clone(), exec_id.clone());
            others.push(tokio::spawn(async move {
                while let Some(b) = from.recv().await {
                    if to.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // Dropping berthd's writer: under berth-shim the process
                // reads its end. A v2 shim holds a writer of its own and
                // closes the process's stdin when asked.
                drop(to);
                if let Some(exec_id) = exec_id {
                    let _ = client.close_io(Some(&exec_id)).await;
                }
            }));
        }
        if let Some(mut sizes) = self.resize {
            let client = client.clone();
            others.push(tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let _ = client
                        .resize_pty(exec_id.as_deref(), size.width.into(), size.height.into())
                        .await;
                }
            }));
        }
        Pumps { outputs, others }
    }
}

impl Pumps {
    /// Stops whatever still pumps.
    pub fn stop(self) {
        for t in self.outputs.into_iter().chain(self.others) {
            t.abort();
        }
    }
}

/// Pumps a FIFO the process writes into the client's channel; ends at
/// the FIFO's end (every writer closed it).
fn pump_out(mut from: pipe::Receiver, to: mpsc::Sender<Bytes>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut client = true;
        loop {
            buf.reserve(CHUNK);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    // A client gone: output is read and dropped, so the
                    // process never blocks on a full FIFO.
                    client = client && to.send(chunk).await.is_ok();
                }
            }
        }
    })
}
