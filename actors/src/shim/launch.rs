//! Starting a berth-shim for a container, and reading the files a shim
//! leaves in the bundle (`shim.pid`, `exit`) for when it cannot be asked.
//!
//! [`launch`] runs `berth-shim start ...`, which returns once the detached
//! shim serves its socket; the shim is then no child of berthd and
//! outlives it.

use super::client::ExitInfo;
use crate::{Error, Result};
use berth_protocol::shim::ExitRecord;
pub use berth_protocol::shim::{ShimArgs, EXIT_FILE, SHIM_PID_FILE, SPEC_FILE};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

/// How to start one shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOpts {
    /// The `berth-shim` binary.
    pub shim_binary: PathBuf,
    /// What the shim is told (the contract both sides share).
    pub args: ShimArgs,
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
    let id = &opts.args.id;
    let mut cmd = tokio::process::Command::new(&opts.shim_binary);
    cmd.args(opts.args.to_argv());
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
            super::host::Processes::kill_shim_of(&super::host::Os, &opts.args.bundle, id);
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
    let pid = read_shim_pid(&opts.args.bundle)?;
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

/// The container's exit from `BUNDLE/exit`, if it has exited.
pub fn read_exit(bundle: &Path) -> Result<Option<ExitInfo>> {
    let record = ExitRecord::read_from(bundle).map_err(|e| {
        Error::Internal(format!(
            "cannot read {}: {e}",
            bundle.join(EXIT_FILE).display()
        ))
    })?;
    Ok(record.map(|r| {
        let nanos = r.exited_at_unix_nanos;
        ExitInfo {
            status: r.status,
            exited_at: UNIX_EPOCH
                + Duration::new(
                    (nanos / 1_000_000_000) as u64,
                    (nanos % 1_000_000_000) as u32,
                ),
        }
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
            args: ShimArgs {
                id: "c7".into(),
                bundle: dir.path().to_path_buf(),
                socket: dir.path().join("s.sock"),
                runtime: "runc".into(),
                runtime_root: dir.path().join("runc"),
                events: None,
                runtime_exec: false,
                runtime_timeout: None,
            },
            timeout: Duration::from_secs(5),
        };
        let e = launch(&opts).await.expect_err("no binary");
        assert!(
            matches!(&e, Error::Internal(m) if m.contains("c7")),
            "{e:?}"
        );
    }
}
