//! Exec with live stdio (CRI Exec's URL): the container's process spec
//! with the client's command, its stdio through FIFOs (the task API's
//! contract; see plumbing.rs), a terminal and its resizes when asked for.
//! The answer is the exit status, once the process has exited and its
//! output is out. A client that goes away ends the process.

use super::actor::Shims;
use super::client::{ExecOpts, ShimClient};
use super::messages::ExecStream;
use super::plumbing::Plumbing;
use crate::kernel::Reply;
use crate::{Error, Result};
use berth_stream::ProcessIo;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long output may still flow after the process exited (a child it
/// left may hold its stdout).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

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
            let client = record.client(client).await?;
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
    let tty = io.tty;
    let (plumbing, gone) = Plumbing::make(dir, io).await?;
    let opts = ExecOpts {
        exec_id: exec_id.to_string(),
        process_json,
        stdout: plumbing.paths.stdout.clone(),
        stderr: plumbing.paths.stderr.clone(),
        stdin: plumbing.paths.stdin.clone(),
        terminal: tty,
    };
    client.exec(&opts).await?;
    client.start(Some(exec_id)).await?;
    let mut pumps = plumbing.start(client, Some(exec_id.to_string()));
    let exit = tokio::select! {
        exit = client.wait(Some(exec_id), None) => exit,
        _ = gone => {
            tracing::debug!(exec = %exec_id, "the client went away: ending its process");
            let _ = client.kill(Some(exec_id), libc::SIGKILL as u32, false).await;
            client.wait(Some(exec_id), Some(Duration::from_secs(10))).await
        }
    };
    let outputs = std::mem::take(&mut pumps.outputs);
    let drained = tokio::time::timeout(DRAIN_LIMIT, futures::future::join_all(outputs)).await;
    if drained.is_err() {
        tracing::debug!(exec = %exec_id, "output still open after the process exited: cut");
    }
    pumps.stop();
    Ok(exit?.status)
}
