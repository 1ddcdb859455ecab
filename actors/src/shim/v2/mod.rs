//! containerd runtime v2 shims (`containerd-shim-runc-v2` and the like):
//! started, cleaned up after and told which OCI runtime to drive the way
//! containerd does it.
//!
//! - `SHIM -namespace berth -address A -publish-binary B -id ID start`,
//!   run in the bundle with `TTRPC_ADDRESS` set to berthd's events socket,
//!   prints the address of the shim's ttrpc socket (`containerd.task.v2`).
//!   A shim that serves whole pods answers with the pod's shim for the
//!   pod's next containers (the `io.kubernetes.cri.sandbox-id`
//!   annotation groups them).
//! - The shim's own log is the FIFO `log` in the bundle, read by berthd
//!   into its log at debug.
//! - `SHIM ... -id ID delete`, in the bundle, cleans up after a shim that
//!   died: the runtime's container is deleted by force.
//! - The container's stdio are FIFOs in the bundle that berthd reads and
//!   writes (io.rs): the CRI log is berthd's to write.

pub(super) mod io;
pub(super) mod task;

use super::actor::Runtime;
use crate::{Error, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The stdio berthd holds for tasks under v2 shims, by task.
pub type IoTable =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<io::TaskIo>>>>;

/// The containerd namespace berth's tasks are in (the runtime's state
/// goes under `<root>/berth`).
pub const NAMESPACE: &str = "berth";

/// The annotation a pod-serving shim groups containers by.
pub const GROUP_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The shim's log FIFO, in the bundle (a fixed name in the shim).
const LOG_FIFO: &str = "log";

/// The type of the runc shims' options.
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// How one v2 shim is run.
#[derive(Debug, Clone)]
pub struct V2Shim {
    pub binary: PathBuf,
    /// The handler's OCI runtime and its root.
    pub runtime: Runtime,
    /// berthd's events socket: the shim publishes there.
    pub events: Option<PathBuf>,
    /// What the shims take as containerd's address: it names their sockets.
    pub address: PathBuf,
}

impl V2Shim {
    fn command(&self, id: &str, bundle: &Path, action: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("-namespace")
            .arg(NAMESPACE)
            .arg("-address")
            .arg(&self.address)
            .arg("-publish-binary")
            .arg(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berthd")))
            .arg("-id")
            .arg(id)
            .arg("-bundle")
            .arg(bundle)
            .arg(action)
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(events) = &self.events {
            cmd.env("TTRPC_ADDRESS", events);
        }
        cmd
    }

    /// Runs the shim's `start` in `bundle` (config.json written) and
    /// answers the socket it serves, and the reading of the shim's log
    /// (to be aborted when the task goes).
    pub async fn start(
        &self,
        id: &str,
        bundle: &Path,
        limit: Duration,
    ) -> Result<(PathBuf, tokio::task::AbortHandle)> {
        let log = follow_log(id, bundle)?;
        let output = match self.run(id, bundle, "start", limit).await {
            Ok(o) => o,
            Err(e) => {
                log.abort();
                return Err(e);
            }
        };
        let printed = String::from_utf8_lossy(&output).trim().to_string();
        let socket = printed.strip_prefix("unix://").unwrap_or(&printed);
        if socket.is_empty() || !socket.starts_with('/') {
            log.abort();
            return Err(Error::Internal(format!(
                "container {id}: {} start printed {printed:?}, not a socket",
                self.binary.display()
            )));
        }
        Ok((PathBuf::from(socket), log))
    }

    /// Runs the shim's `delete` in `bundle`: the runtime's container is
    /// deleted by force, after a shim that died.
    pub async fn cleanup(&self, id: &str, bundle: &Path, limit: Duration) -> Result<()> {
        self.run(id, bundle, "delete", limit).await.map(|_| ())
    }

    async fn run(&self, id: &str, bundle: &Path, action: &str, limit: Duration) -> Result<Vec<u8>> {
        let child = self.command(id, bundle, action).spawn().map_err(|e| {
            Error::FailedPrecondition(format!(
                "container {id}: cannot run the shim {}: {e}",
                self.binary.display()
            ))
        })?;
        let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(Error::Internal(format!(
                    "container {id}: waiting for the shim's {action}: {e}"
                )))
            }
            Err(_) => {
                return Err(Error::DeadlineExceeded(format!(
                    "container {id}: the shim's {action} took over {}s",
                    limit.as_secs_f64()
                )))
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why = stderr.trim().lines().last().unwrap_or("").to_string();
            return Err(Error::Internal(format!(
                "container {id}: {} {action} failed ({}): {why}",
                self.binary.display(),
                output.status
            )));
        }
        Ok(output.stdout)
    }

    /// The runc shims' options (type URL, encoding): the runtime binary
    /// and its root.
    pub fn options(&self) -> (String, Vec<u8>) {
        let mut value = Vec::new();
        put_string(&mut value, 6, self.runtime.binary.as_os_str().as_bytes());
        put_string(&mut value, 7, self.runtime.root.as_os_str().as_bytes());
        (RUNC_OPTIONS_TYPE_URL.to_string(), value)
    }
}

/// Appends a length-delimited protobuf field.
fn put_string(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Makes the shim's log FIFO in `bundle` (if it is not there) and copies
/// what the shim writes into berthd's log. The FIFO is opened read-write,
/// as containerd does: the shim's open never waits, and its writes find a
/// reader while berthd runs.
pub fn follow_log(id: &str, bundle: &Path) -> Result<tokio::task::AbortHandle> {
    let path = bundle.join(LOG_FIFO);
    match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(Error::Internal(format!("mkfifo {}: {e}", path.display()))),
    }
    let fifo = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
    let id = id.to_string();
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(fifo).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(task = %id, "shim: {line}");
        }
    });
    Ok(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_the_runtime_and_its_root() {
        let shim = V2Shim {
            binary: "containerd-shim-runc-v2".into(),
            runtime: Runtime {
                binary: "runc".into(),
                root: "/r".into(),
                native_exec: true,
                timeout: Duration::from_secs(1),
                v2_shim: None,
            },
            events: None,
            address: "/a".into(),
        };
        let (type_url, value) = shim.options();
        assert_eq!(type_url, "containerd.runc.v1.Options");
        // binary_name = 6, root = 7, both length-delimited.
        assert_eq!(value, b"\x32\x04runc\x3a\x02/r".to_vec());
        let mut long = Vec::new();
        put_varint(&mut long, 300);
        assert_eq!(long, vec![0xac, 0x02]);
    }
}
