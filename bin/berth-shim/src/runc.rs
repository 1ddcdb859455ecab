//! Running the OCI runtime (runc or a runtime with the same command line).
//!
//! Every run goes through the [`Reaper`], never `Child::wait`, because the
//! reaper's `waitpid(-1)` would otherwise race `wait` for the same child.
//! Each run has a deadline (`--runtime-timeout`): a runtime that has not
//! finished by then is killed with everything in its process group, even
//! while it or a child of its still holds its output open.
//! runc is told to log as JSON to `BUNDLE/runc.log`: for `create` and `exec`
//! its stderr is the container's, so its own error is read back from there.

use crate::error::ShimError;
use crate::reaper::{Exit, Reaper};
use crossbeam_channel::RecvTimeoutError;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A runc command that never returns is killed after this long, unless
/// the shim is told otherwise.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Output kept of runc's stdout and stderr; runc's answers are small.
const OUTPUT_MAX: usize = 1 << 20;

pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    reaper: Arc<Reaper>,
    timeout: Duration,
}

/// Why a runc command failed, in runc's own words where it gave any.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RuncError {
    pub message: String,
}

/// Where a runc command's stdio goes.
pub enum Io {
    /// stdout and stderr captured (stdin optionally fed).
    Capture { stdin: Option<Vec<u8>> },
    /// Handed over, for `create` and `exec`: the container inherits them.
    Pass {
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    },
}

impl Runc {
    pub fn new(
        binary: PathBuf,
        root: PathBuf,
        log: PathBuf,
        reaper: Arc<Reaper>,
        timeout: Duration,
    ) -> Runc {
        Runc {
            binary,
            root,
            log,
            reaper,
            timeout,
        }
    }

    /// Runs `runc --root ROOT --log LOG --log-format json ARGS...` and
    /// returns its stdout (empty when not captured).
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S], io: Io) -> Result<Vec<u8>, RuncError> {
        let what = args
            .first()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(Stdio::null())
            // Its own process group, so that a timeout ends whatever it
            // started too (a container's init makes a session of its own).
            .process_group(0);
        // The runtime, and the container it starts, get signals as a new
        // process has them, not the shim's blocked and ignored ones (runc
        // resets them in the container; youki passes them on).
        // SAFETY: reset_signals only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(|| {
                crate::native::child::reset_signals();
                Ok(())
            });
        }
        let mut feed = None;
        match io {
            Io::Capture { stdin } => {
                if stdin.is_some() {
                    cmd.stdin(Stdio::piped());
                }
                feed = stdin;
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Io::Pass {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
        }
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let deadline = std::time::Instant::now() + self.timeout;
        let (tx, rx) = crossbeam_channel::bounded::<Exit>(1);
        let mut child = self
            .reaper
            .spawn(
                &mut cmd,
                Box::new(move |exit| {
                    let _ = tx.send(exit);
                }),
            )
            .map_err(|e| RuncError {
                message: format!("cannot run {}: {e}", self.binary.display()),
            })?;
        // The pipe ends the child got must close here, so that our reads see
        // end-of-file when runc and everything that inherited them is gone.
        drop(cmd);
        if let Some(input) = feed {
            if let Some(mut stdin) = child.stdin.take() {
                if let Err(e) = stdin.write_all(&input) {
                    log::warn!("runc {what}: writing its stdin: {e}");
                }
            }
        }
        let (stdout, stderr) = read_outputs(&mut child, deadline);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let exit = match rx.recv_timeout(left) {
            Ok(exit) => exit,
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                // SAFETY: a signal to the process group the child leads.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                // Reaped by the reaper; waited for a moment so that the
                // caller's next step does not meet it half-dead.
                let _ = rx.recv_timeout(Duration::from_secs(1));
                return Err(RuncError {
                    message: format!(
                        "runc {what} did not finish in {}s and was killed",
                        self.timeout.as_secs()
                    ),
                });
            }
        };
        if exit.status == 0 {
            return Ok(stdout);
        }
        let from_log = last_error(&self.log, log_start);
        let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        let detail = from_log
            .or((!stderr.is_empty()).then_some(stderr))
            .unwrap_or_else(|| "no message".to_string());
        Err(RuncError {
            message: format!("runc {what} failed (exit status {}): {detail}", exit.status),
        })
    }
}

/// Reads the child's captured stdout and stderr to their ends (or until
/// `deadline`), both at once so that a full pipe on one cannot stall the
/// other.
fn read_outputs(child: &mut Child, deadline: std::time::Instant) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    // As plain files, so both pipes are handled alike.
    let mut stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let mut stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    let mut buf = [0u8; 4096];
    while stdout.is_some() || stderr.is_some() {
        let mut fds = Vec::with_capacity(2);
        if let Some(s) = &stdout {
            fds.push(nix::poll::PollFd::new(
                s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        if let Some(s) = &stderr {
            fds.push(nix::poll::PollFd::new(
                s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let wait = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, wait) {
            // Out of time: the caller kills it.
            Ok(0) => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("poll on runc's output: {e}");
                break;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut i = 0;
        for (pipe, sink) in [(&mut stdout, &mut out), (&mut stderr, &mut err)] {
            let Some(p) = pipe else { continue };
            let is_ready = ready.get(i).copied().unwrap_or(false);
            i += 1;
            if !is_ready {
                continue;
            }
            match p.read(&mut buf) {
                Ok(0) => *pipe = None,
                Ok(n) => {
                    if sink.len() < OUTPUT_MAX {
                        sink.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => *pipe = None,
            }
        }
    }
    (out, err)
}

/// The message of the last error runc logged past `from` in its JSON log.
fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    file.take(OUTPUT_MAX as u64)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .rev()
        .filter(|l| l.contains("\"level\":\"error\"") || l.contains("\"level\":\"fatal\""))
        .find_map(|l| json_string_field(l, "msg"))
}

/// The value of the string field `key` in one flat JSON object: enough for
/// runc's log lines without a JSON parser in the shim.
pub fn json_string_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Parses `runc ps --format json`: a JSON array of pids (or `null`).
pub fn parse_pids(out: &[u8]) -> Result<Vec<u32>, ShimError> {
    let text = String::from_utf8_lossy(out);
    let text = text.trim();
    if text == "null" || text.is_empty() {
        return Ok(Vec::new());
    }
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| {
            ShimError::RuntimeOutput(format!("runc ps printed {text:?}, not a JSON array"))
        })?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                ShimError::RuntimeOutput(format!("runc ps printed {s:?} among the pids"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_runc_log_lines() {
        let line = r#"{"level":"error","msg":"container \"x\" does not exist\n","time":"t"}"#;
        assert_eq!(
            json_string_field(line, "msg").as_deref(),
            Some("container \"x\" does not exist\n")
        );
        assert_eq!(
            json_string_field(r#"{"msg":"caf\u00e9"}"#, "msg").as_deref(),
            Some("café")
        );
        assert_eq!(json_string_field(r#"{"level":"info"}"#, "msg"), None);
        assert_eq!(json_string_field(r#"{"msg":"cut"#, "msg"), None);
    }

    #[test]
    fn pids_from_runc_ps() {
        assert_eq!(parse_pids(b"[12,345]\n").ok(), Some(vec![12, 345]));
        assert_eq!(parse_pids(b"[]").ok(), Some(vec![]));
        assert_eq!(parse_pids(b"null\n").ok(), Some(vec![]));
        assert!(parse_pids(b"[1,x]").is_err());
        assert!(parse_pids(b"oops").is_err());
    }

    #[test]
    fn last_error_reads_only_new_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("runc.log");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"old\"}\n").expect("write");
        let from = std::fs::metadata(&log).expect("meta").len();
        assert_eq!(last_error(&log, from), None);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        writeln!(f, "{{\"level\":\"error\",\"msg\":\"new\"}}").expect("append");
        writeln!(f, "{{\"level\":\"info\",\"msg\":\"after\"}}").expect("append");
        assert_eq!(last_error(&log, from).as_deref(), Some("new"));
    }
}
