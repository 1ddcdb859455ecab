//! Attach (CRI Attach's URL): the client's streams joined to the
//! container's own stdio, which its shim holds. berthd makes FIFOs under
//! `<state>/io/<attach id>/` and asks the shim on its attach socket to
//! write the container's output into them (besides the log) and to feed
//! what comes on the stdin FIFO to the container. The attach ends when the
//! container's output ends (it exited) or the client goes.

use super::actor::Shims;
use super::messages::AttachStream;
use super::plumbing::Plumbing;
use crate::kernel::Reply;
use crate::{Error, Result};
use berth_protocol::shim::{attach_socket, AttachRequest, ATTACH_OK};
use berth_stream::ProcessIo;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long the shim may take to answer an attach.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

impl Shims {
    pub(super) fn attach_stream(&mut self, msg: AttachStream) -> Reply<Self, ()> {
        let Some((client, record)) = self.client(&msg.id) else {
            return Reply::Now(Err(Error::NotFound(format!(
                "container {} not found",
                msg.id
            ))));
        };
        if record.api == super::client::TaskApi::V2 {
            // berthd holds the stdio of a task under a v2 shim.
            let Some(io) = self.v2_io(&msg.id) else {
                return Reply::Now(Err(Error::FailedPrecondition(format!(
                    "container {}: its stdio are not held (berthd could not take them back)",
                    msg.id
                ))));
            };
            return Reply::off(async move {
                let client = record.client(client).await?;
                io.attach(&client, msg.io, msg.close_stdin).await
            });
        }
        let io_root = self.config.state.join("io");
        Reply::off(async move {
            let client = record.client(client).await?;
            let dir = io_root.join(format!("attach-{}", crate::ids::short_id()?));
            let socket = attach_socket(Path::new(&record.address));
            let outcome = run(&client, &socket, &dir, msg.io, msg.close_stdin).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            outcome
        })
    }
}

async fn run(
    client: &super::client::ShimClient,
    socket: &Path,
    dir: &Path,
    io: ProcessIo,
    close_stdin: bool,
) -> Result<()> {
    let (plumbing, gone) = Plumbing::make(dir, io).await?;
    let req = AttachRequest {
        stdin: plumbing.paths.stdin.clone(),
        stdout: plumbing.paths.stdout.clone(),
        stderr: plumbing.paths.stderr.clone(),
        close_stdin,
    };
    let line = req.to_line().map_err(Error::Internal)?;
    ask(socket, &line).await?;
    let mut pumps = plumbing.start(client, None);
    // The end: every output stream ended (the container exited), or with
    // no output asked for, the container's exit; or the client gone.
    let ended = async {
        if pumps.outputs.is_empty() {
            let _ = client.wait(None, None).await;
        } else {
            for p in pumps.outputs.iter_mut() {
                let _ = p.await;
            }
        }
    };
    tokio::select! {
        _ = ended => {}
        _ = gone => tracing::debug!("the attached client went away"),
    }
    pumps.stop();
    Ok(())
}

/// Sends the request line on the attach socket and reads the answer.
async fn ask(socket: &Path, line: &str) -> Result<()> {
    let talk = async {
        let mut conn = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            Error::Unavailable(format!(
                "the shim's attach socket {}: {e}",
                socket.display()
            ))
        })?;
        conn.write_all(line.as_bytes())
            .await
            .map_err(|e| Error::Unavailable(format!("attach request: {e}")))?;
        let mut answer = String::new();
        BufReader::new(conn)
            .read_line(&mut answer)
            .await
            .map_err(|e| Error::Unavailable(format!("attach answer: {e}")))?;
        Ok::<String, Error>(answer)
    };
    let answer = tokio::time::timeout(ANSWER_LIMIT, talk)
        .await
        .map_err(|_| Error::DeadlineExceeded("the shim did not answer the attach".into()))??;
    let answer = answer.trim_end();
    if answer == ATTACH_OK {
        return Ok(());
    }
    let why = answer.strip_prefix("error: ").unwrap_or(answer);
    Err(Error::FailedPrecondition(format!("attach: {why}")))
}
