//! ExecSync: the container's own process spec (user, env, cwd,
//! capabilities) with the given arguments, run by the shim. Its output
//! comes through FIFOs in the bundle, read as it is written: the first
//! 16 MiB of each stream are kept and the rest read and dropped, so that
//! the command never blocks and nothing it prints reaches the disk. Once
//! it exits, what it left in the FIFOs is read and the call answers; a
//! child it left behind holding its output is read to nothing until it
//! lets go. At the deadline the process is killed and the call answers
//! DeadlineExceeded, as kubelet's probes expect.

use super::actor::Shims;
use super::client::{ExecOpts, ShimClient};
use super::messages::{ExecInTask, ExecOutput};
use super::plumbing::{mkfifo, open_reader};
use crate::kernel::Reply;
use crate::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// What ExecSync keeps of each stream at most.
const MAX_OUTPUT: usize = 16 << 20;

/// What the two streams together may hold: the answer must fit in the
/// 16 MiB messages kubelet's client takes, with room for the rest of it.
const MAX_ANSWER: usize = (16 << 20) - 4096;

/// Cuts `stdout` and `stderr` to fit [`MAX_ANSWER`] together; each keeps
/// at least half of it if it has that much.
fn fit(stdout: &mut Vec<u8>, stderr: &mut Vec<u8>) {
    let err = stderr
        .len()
        .min((MAX_ANSWER / 2).max(MAX_ANSWER.saturating_sub(stdout.len())));
    stderr.truncate(err);
    stdout.truncate(MAX_ANSWER - err);
}

/// Read size of the captures.
const CHUNK: usize = 64 * 1024;

/// One output stream of an ExecSync, read as the process writes it.
struct Capture {
    exited: oneshot::Sender<()>,
    kept: oneshot::Receiver<Vec<u8>>,
}

/// Keeps what fits under [`MAX_OUTPUT`] of `bytes`.
fn keep(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

impl Capture {
    /// Reads `from` until its end, or until told the process exited.
    fn spawn(mut from: pipe::Receiver) -> Capture {
        let (exited, mut exit) = oneshot::channel::<()>();
        let (give, kept) = oneshot::channel();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = vec![0u8; CHUNK];
            let mut ended = false;
            loop {
                tokio::select! {
                    r = from.read(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            ended = true;
                            break;
                        }
                        Ok(n) => keep(&mut kept, &buf[..n]),
                    },
                    _ = &mut exit => break,
                }
            }
            // The process is gone: everything it wrote is in the FIFO.
            while !ended {
                match from.try_read(&mut buf) {
                    Ok(0) => ended = true,
                    Ok(n) => keep(&mut kept, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => ended = true,
                }
            }
            let _ = give.send(kept);
            // A child it left holds the FIFO: read to nothing, so that it
            // never blocks, until it lets go.
            while !ended {
                ended = !matches!(from.read(&mut buf).await, Ok(n) if n > 0);
            }
        });
        Capture { exited, kept }
    }

    /// What the process wrote, once it exited.
    async fn finish(self) -> Vec<u8> {
        let _ = self.exited.send(());
        self.kept.await.unwrap_or_default()
    }
}

/// Makes a FIFO at `path` and opens berthd's end of it.
fn output_fifo(path: &Path) -> crate::Result<pipe::Receiver> {
    mkfifo(path)?;
    open_reader(path)
}

/// The longest an ExecSync waits for a turn.
const EXEC_TURN_WAIT: Duration = Duration::from_secs(10);

impl Shims {
    pub(super) fn exec_in_task(&mut self, msg: ExecInTask) -> Reply<Self, ExecOutput> {
        let Some(record) = self.records.get(&msg.id).cloned() else {
            return Reply::Now(Err(Error::NotFound(format!(
                "container {} not found",
                msg.id
            ))));
        };
        if msg.args.is_empty() {
            return Reply::Now(Err(Error::InvalidArgument("exec: no command".into())));
        }
        let client = self.clients.get(&msg.id).cloned();
        let turns = self.exec_turns.clone();
        let work = async move {
            // A turn is waited for at most as long as the command may run.
            let wait = if msg.timeout.is_zero() {
                EXEC_TURN_WAIT
            } else {
                msg.timeout.min(EXEC_TURN_WAIT)
            };
            let _turn = match tokio::time::timeout(wait, turns.acquire_owned()).await {
                Ok(Ok(turn)) => turn,
                Ok(Err(_)) => return Err(Error::Unavailable("shutting down".into())),
                Err(_) => {
                    return Err(Error::ResourceExhausted(format!(
                        "ExecSync in container {}: the node's ExecSync calls (daemon.max_exec_sync) stayed busy for {}s",
                        msg.id,
                        wait.as_secs_f32()
                    )))
                }
            };
            let bundle = PathBuf::from(&record.bundle);
            let client = record.client(client).await?;
            let spec = oci_spec::runtime::Spec::load(bundle.join(super::launch::SPEC_FILE))
                .map_err(|e| Error::Internal(format!("container {} spec: {e}", msg.id)))?;
            let mut process = spec.process().clone().unwrap_or_default();
            process.set_args(Some(msg.args.clone()));
            process.set_terminal(Some(false));
            let process_json =
                serde_json::to_vec(&process).map_err(|e| Error::Internal(e.to_string()))?;
            let exec_id = format!("exec-{}", crate::ids::short_id()?);
            let (out, err) = (
                bundle.join(format!("{exec_id}.out")),
                bundle.join(format!("{exec_id}.err")),
            );
            let result = async {
                // berthd's ends first: the shim's opens find a reader.
                let readers = (output_fifo(&out)?, output_fifo(&err)?);
                let opts = ExecOpts {
                    exec_id: exec_id.clone(),
                    process_json,
                    stdout: Some(out.clone()),
                    stderr: Some(err.clone()),
                    ..Default::default()
                };
                client.exec(&opts).await?;
                let result = run_exec(&client, &exec_id, &msg, readers).await;
                let _ = client.delete(Some(&exec_id)).await;
                result
            }
            .await;
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&err);
            result
        };
        Reply::off(work)
    }
}

/// Starts the exec `exec_id` and waits for it (killing it at the
/// deadline), reading its output from `readers` meanwhile.
async fn run_exec(
    client: &ShimClient,
    exec_id: &str,
    msg: &ExecInTask,
    readers: (pipe::Receiver, pipe::Receiver),
) -> crate::Result<ExecOutput> {
    client.start(Some(exec_id)).await?;
    // The process holds the FIFOs' other ends now: their end is its.
    let (stdout, stderr) = (Capture::spawn(readers.0), Capture::spawn(readers.1));
    let limit = (!msg.timeout.is_zero()).then_some(msg.timeout);
    match client.wait(Some(exec_id), limit).await {
        Ok(exit) => {
            let (mut stdout, mut stderr) = (stdout.finish().await, stderr.finish().await);
            fit(&mut stdout, &mut stderr);
            Ok(ExecOutput {
                stdout,
                stderr,
                exit_code: exit.status as i32,
            })
        }
        Err(Error::DeadlineExceeded(_)) => {
            let _ = client
                .kill(Some(exec_id), libc::SIGKILL as u32, false)
                .await;
            let _ = client
                .wait(Some(exec_id), Some(Duration::from_secs(5)))
                .await;
            Err(Error::DeadlineExceeded(format!(
                "command {:?} timed out after {}s",
                msg.args,
                msg.timeout.as_secs()
            )))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_streams_fit_one_answer() {
        let fitted = |out: usize, err: usize| {
            let (mut o, mut e) = (vec![1u8; out], vec![2u8; err]);
            fit(&mut o, &mut e);
            (o.len(), e.len())
        };
        assert_eq!(fitted(10, 20), (10, 20));
        assert_eq!(fitted(MAX_OUTPUT, 5), (MAX_ANSWER - 5, 5));
        assert_eq!(fitted(5, MAX_OUTPUT), (5, MAX_ANSWER - 5));
        assert_eq!(
            fitted(MAX_OUTPUT, MAX_OUTPUT),
            (MAX_ANSWER - MAX_ANSWER / 2, MAX_ANSWER / 2)
        );
        assert_eq!(fitted(MAX_ANSWER, 0), (MAX_ANSWER, 0));
    }
}
