//! Starting a berth-shim for a container, and reading the files a shim
//! leaves in the bundle (`shim.pid`, `exit`) for when it cannot be asked.
//!
//! [`launch`] runs `berth-shim start ...`, which returns once the detached
//! shim serves its socket; the shim is then no child of berthd and
//! outlives it.

use super::client::ExitInfo;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

/// The shim's pid, written by the shim once it serves.
pub const SHIM_PID_FILE: &str = "shim.pid";
/// The container's exit, written by the shim before it reports it.
pub const EXIT_FILE: &str = "exit";

/// How to start one shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOpts {
    /// The `berth-shim` binary.
    pub shim_binary: PathBuf,
    /// The container id.
    pub id: String,
    /// The OCI bundle (absolute); the shim keeps its files there.
    pub bundle: PathBuf,
    /// The socket the shim is to serve (absolute, under 108 bytes).
    pub socket: PathBuf,
    /// The OCI runtime binary (`runc`, or a path).
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// berthd's ttrpc events socket, if it takes TaskExit events.
    pub events: Option<PathBuf>,
    /// How long start-up may take.
    pub timeout: Duration,
}

/// A shim that serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub pid: u32,
    pub socket: PathBuf,
}

/// Starts a shim for `opts.id` and returns once it serves its socket.
pub async fn launch(opts: &LaunchOpts) -> Result<Launched> {
    let id = &opts.id;
    let mut cmd = tokio::process::Command::new(&opts.shim_binary);
    cmd.arg("start")
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(&opts.bundle)
        .arg("--socket")
        .arg(&opts.socket)
        .arg("--runtime")
        .arg(&opts.runtime)
        .arg("--runtime-root")
        .arg(&opts.runtime_root);
    if let Some(events) = &opts.events {
        cmd.arg("--events").arg(events);
    }
    // Only the short-lived `start` process is ours; killing it on a
    // timeout leaves no half-started caller behind.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        Error::Internal(format!(
            "container {id}: cannot run {}: {e}",
            opts.shim_binary.display()
        ))
    })?;
    let output = match tokio::time::timeout(opts.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(Error::Internal(format!(
                "container {id}: waiting for berth-shim start: {e}"
            )))
        }
        Err(_) => {
            // A shim that came up after all would serve nobody.
            super::recover::kill_shim_of(&opts.bundle, id);
            return Err(Error::DeadlineExceeded(format!(
                "container {id}: the shim did not start in {}s",
                opts.timeout.as_secs_f64()
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().last().unwrap_or("").trim();
        let why = why.strip_prefix("berth-shim: ").unwrap_or(why);
        return Err(Error::Internal(format!(
            "container {id}: the shim did not start ({}): {why}",
            output.status
        )));
    }
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if printed.is_empty() {
        return Err(Error::Internal(format!(
            "container {id}: berth-shim start printed no socket"
        )));
    }
    let pid = read_shim_pid(&opts.bundle)?;
    Ok(Launched {
        pid,
        socket: PathBuf::from(printed),
    })
}

/// The pid in `BUNDLE/shim.pid`.
pub fn read_shim_pid(bundle: &Path) -> Result<u32> {
    let path = bundle.join(SHIM_PID_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::NotFound(format!("no shim pid in {}: {e}", path.display())))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Internal(format!("{} holds {text:?}", path.display())))
}

#[derive(Deserialize)]
struct ExitRecord {
    status: u32,
    exited_at_unix_nanos: u128,
}

/// The container's exit from `BUNDLE/exit`, if it has exited.
pub fn read_exit(bundle: &Path) -> Result<Option<ExitInfo>> {
    let path = bundle.join(EXIT_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let record: ExitRecord = serde_json::from_slice(&text)
        .map_err(|e| Error::Internal(format!("{} is not an exit record: {e}", path.display())))?;
    let nanos = record.exited_at_unix_nanos;
    let at = UNIX_EPOCH
        + Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        );
    Ok(Some(ExitInfo {
        status: record.status,
        exited_at: at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_file_and_shim_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_exit(dir.path()), Ok(None));
        std::fs::write(
            dir.path().join(EXIT_FILE),
            "{\"status\": 137, \"exited_at_unix_nanos\": 1700000000000000009}\n",
        )
        .expect("write");
        let exit = read_exit(dir.path()).expect("read").expect("exited");
        assert_eq!(exit.status, 137);
        assert_eq!(exit.exited_at, UNIX_EPOCH + Duration::new(1_700_000_000, 9));
        std::fs::write(dir.path().join(EXIT_FILE), "garbage").expect("write");
        assert!(matches!(read_exit(dir.path()), Err(Error::Internal(_))));

        assert!(matches!(read_shim_pid(dir.path()), Err(Error::NotFound(_))));
        std::fs::write(dir.path().join(SHIM_PID_FILE), "4242\n").expect("write");
        assert_eq!(read_shim_pid(dir.path()), Ok(4242));
    }

    #[tokio::test]
    async fn a_missing_binary_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = LaunchOpts {
            shim_binary: dir.path().join("no-such-shim"),
            id: "c7".into(),
            bundle: dir.path().to_path_buf(),
            socket: dir.path().join("s.sock"),
            runtime: "runc".into(),
            runtime_root: dir.path().join("runc"),
            events: None,
            timeout: Duration::from_secs(5),
        };
        let e = launch(&opts).await.expect_err("no binary");
        assert!(
            matches!(&e, Error::Internal(m) if m.contains("c7")),
            "{e:?}"
        );
    }
}
