//! Exec with live stdio (CRI Exec's URL): the container's process spec
//! with the client's command, its stdio through FIFOs under
//! `<state>/io/<exec id>/` (the task API's contract), pumped to and from
//! the client's channels; a terminal and its resizes when asked for. The
//! answer is the exit status, once the process has exited and its output
//! is out. A client that goes away ends the process.

use super::actor::Shims;
use super::client::{ExecOpts, ShimClient};
use super::messages::ExecStream;
use crate::kernel::Reply;
use crate::{Error, Result};
use berth_stream::ProcessIo;
use bytes::{Bytes, BytesMut};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long output may still flow after the process exited (a child it
/// left may hold its stdout).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Read size of the output pumps.
const CHUNK: usize = 32 * 1024;

fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", path.display())))
}

/// Pumps a FIFO the process writes into the client's channel; ends at
/// the FIFO's end (every writer closed it).
fn pump_out(
    mut from: pipe::Receiver,
    to: tokio::sync::mpsc::Sender<Bytes>,
) -> tokio::task::JoinHandle<()> {
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

impl Shims {
    pub(super) fn exec_stream(&mut self, msg: ExecStream) -> Reply<Self, u32> {
        let Some((client, record)) = self.client(&msg.id) else {
            return Reply::Now(Err(Error::NotFound(format!(
                "container {} not found",
                msg.id
            ))));
        };
        if msg.args.is_empty() {
            return Reply::Now(Err(Error::InvalidArgument("exec: no command".into())));
        }
        let io_root = self.config.state.join("io");
        Reply::off(async move {
            let client = match client {
                Some(c) => c,
                None => ShimClient::connect(&msg.id, Path::new(&record.address)).await?,
            };
            let bundle = PathBuf::from(&record.bundle);
            let spec = tokio::task::spawn_blocking(move || {
                oci_spec::runtime::Spec::load(bundle.join(super::launch::SPEC_FILE))
            })
            .await
            .map_err(|e| Error::Internal(format!("spec task: {e}")))?
            .map_err(|e| Error::Internal(format!("container {} spec: {e}", msg.id)))?;
            let tty = msg.io.tty;
            let mut process = spec.process().clone().unwrap_or_default();
            process.set_args(Some(msg.args.clone()));
            process.set_terminal(Some(tty));
            if tty {
                let mut env = process.env().clone().unwrap_or_default();
                if !env.iter().any(|e| e.starts_with("TERM=")) {
                    env.push("TERM=xterm".to_string());
                }
                process.set_env(Some(env));
            }
            let process_json =
                serde_json::to_vec(&process).map_err(|e| Error::Internal(e.to_string()))?;
            let exec_id = format!("exec-{}", crate::ids::short_id()?);
            let dir = io_root.join(&exec_id);
            let outcome = run(&client, &exec_id, &dir, process_json, msg.io).await;
            let _ = client.delete(Some(&exec_id)).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            outcome
        })
    }
}

async fn run(
    client: &ShimClient,
    exec_id: &str,
    dir: &Path,
    process_json: Vec<u8>,
    io: ProcessIo,
) -> Result<u32> {
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
    let stdin_path = fifo("stdin", stdin.is_some())?;
    let stdout_path = fifo("stdout", stdout.is_some())?;
    let stderr_path = fifo("stderr", stderr.is_some() && !tty)?;
    let open_err =
        |p: &Path, e: std::io::Error| Error::Internal(format!("open {}: {e}", p.display()));
    // Read ends first, so the shim's opens for writing find a reader;
    // stdin's write end is opened read-write, so it needs no reader yet.
    let mut readers = Vec::new();
    for (path, to) in [(&stdout_path, stdout), (&stderr_path, stderr)] {
        if let (Some(p), Some(to)) = (path, to) {
            let r = pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| open_err(p, e))?;
            readers.push((r, to));
        }
    }
    let stdin_writer = match &stdin_path {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .map_err(|e| open_err(p, e))?,
        ),
        None => None,
    };
    let opts = ExecOpts {
        exec_id: exec_id.to_string(),
        process_json,
        stdout: stdout_path.clone(),
        stderr: stderr_path.clone(),
        stdin: stdin_path.clone(),
        terminal: tty,
    };
    client.exec(&opts).await?;
    client.start(Some(exec_id)).await?;
    // Started: the writers are open, so a reader's end of file from here
    // on is the process's.
    let pumps: Vec<_> = readers
        .into_iter()
        .map(|(from, to)| pump_out(from, to))
        .collect();
    let feeding = match (stdin, stdin_writer) {
        (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
            while let Some(b) = from.recv().await {
                if to.write_all(&b).await.is_err() {
                    break;
                }
            }
            // Dropping the only writer: the process reads its end.
        })),
        _ => None,
    };
    let resizing = resize.map(|mut sizes| {
        let client = client.clone();
        let exec_id = exec_id.to_string();
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let _ = client
                    .resize_pty(Some(&exec_id), size.width.into(), size.height.into())
                    .await;
            }
        })
    });
    let exit = tokio::select! {
        exit = client.wait(Some(exec_id), None) => exit,
        _ = gone => {
            tracing::debug!(exec = %exec_id, "the client went away: ending its process");
            let _ = client.kill(Some(exec_id), libc::SIGKILL as u32, false).await;
            client.wait(Some(exec_id), Some(Duration::from_secs(10))).await
        }
    };
    let drained = tokio::time::timeout(DRAIN_LIMIT, futures::future::join_all(pumps)).await;
    if drained.is_err() {
        tracing::debug!(exec = %exec_id, "output still open after the process exited: cut");
    }
    if let Some(f) = feeding {
        f.abort();
    }
    if let Some(r) = resizing {
        r.abort();
    }
    Ok(exit?.status)
}
