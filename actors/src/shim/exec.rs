//! ExecSync: the container's own process spec (user, env, cwd,
//! capabilities) with the given arguments, run by the shim; its output
//! goes to files in the bundle, read (capped) once it exits. At the
//! deadline the process is killed and the call answers DeadlineExceeded,
//! as kubelet's probes expect.

use super::actor::Shims;
use super::client::{ExecOpts, ShimClient};
use super::messages::{ExecInTask, ExecOutput};
use crate::kernel::Reply;
use crate::Error;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What ExecSync returns of each stream at most (as kubelet caps it).
const MAX_OUTPUT: u64 = 16 << 20;

fn read_capped(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_OUTPUT).read_to_end(&mut out);
    }
    out
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
            let client = match client {
                Some(c) => c,
                None => ShimClient::connect(&msg.id, Path::new(&record.address)).await?,
            };
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
            let opts = ExecOpts {
                exec_id: exec_id.clone(),
                process_json,
                stdout: Some(out.clone()),
                stderr: Some(err.clone()),
                ..Default::default()
            };
            client.exec(&opts).await?;
            let finished = async {
                client.start(Some(&exec_id)).await?;
                let limit = (!msg.timeout.is_zero()).then_some(msg.timeout);
                client.wait(Some(&exec_id), limit).await
            }
            .await;
            let result = match finished {
                Ok(exit) => Ok(ExecOutput {
                    stdout: read_capped(&out),
                    stderr: read_capped(&err),
                    exit_code: exit.status as i32,
                }),
                Err(Error::DeadlineExceeded(_)) => {
                    let _ = client
                        .kill(Some(&exec_id), libc::SIGKILL as u32, false)
                        .await;
                    let _ = client
                        .wait(Some(&exec_id), Some(Duration::from_secs(5)))
                        .await;
                    Err(Error::DeadlineExceeded(format!(
                        "command {:?} timed out after {}s",
                        msg.args,
                        msg.timeout.as_secs()
                    )))
                }
                Err(e) => Err(e),
            };
            let _ = client.delete(Some(&exec_id)).await;
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&err);
            result
        };
        Reply::off(work)
    }
}
