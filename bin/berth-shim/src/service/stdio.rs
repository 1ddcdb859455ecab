//! The processes' stdio: the container's output into its CRI log (or the
//! terminal runc hands over on the console socket), an exec's into files.

use super::*;
use crate::error::{Doing, Result, ShimError};

pub(super) struct ContainerStdio {
    pub(super) stdout: Stdio,
    pub(super) stderr: Stdio,
    pub(super) streams: Vec<Stream>,
    pub(super) logs: Vec<SharedLog>,
}

impl Shared {
    /// Opens the container's log files and the pipes its stdout and stderr
    /// write to. An empty stderr path means the stdout path; an empty path
    /// for both means the output is not logged (attaches still see it).
    pub(super) fn container_stdio(&self, stdout: &str, stderr: &str) -> TResult<ContainerStdio> {
        let stdout = if stdout.is_empty() {
            "/dev/null"
        } else {
            stdout
        };
        let stderr = if stderr.is_empty() { stdout } else { stderr };
        let mut got = ContainerStdio {
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            streams: Vec::new(),
            logs: Vec::new(),
        };
        let mut paths: Vec<&str> = Vec::new();
        for (path, tag) in [(stdout, "stdout"), (stderr, "stderr")] {
            if path.is_empty() {
                continue;
            }
            if !Path::new(path).is_absolute() {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "container {}: the log path {path:?} must be absolute",
                        self.id
                    ),
                ));
            }
            let log = match paths.iter().position(|p| *p == path) {
                Some(i) => got.logs[i].clone(),
                None => {
                    let log = LogFile::open(Path::new(path)).map_err(|e| {
                        status(
                            Code::FAILED_PRECONDITION,
                            format!("container {}: cannot open the log {path}: {e}", self.id),
                        )
                    })?;
                    paths.push(path);
                    got.logs.push(log.clone());
                    log
                }
            };
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| status(Code::INTERNAL, format!("cannot make a pipe: {e}")))?;
            got.streams.push(Stream {
                pipe: read,
                log,
                tag,
            });
            if tag == "stdout" {
                got.stdout = Stdio::from(write);
            } else {
                got.stderr = Stdio::from(write);
            }
        }
        Ok(got)
    }

    /// Opens the files an exec's output goes to, raw.
    /// An exec's stdout and stderr files (the same file twice when both
    /// name one path); None where it has none.
    pub(super) fn exec_files(
        &self,
        exec_id: &str,
        stdout: &str,
        stderr: &str,
    ) -> TResult<(Option<File>, Option<File>)> {
        let open = |path: &str| -> TResult<Option<File>> {
            if path.is_empty() {
                return Ok(None);
            }
            super::fifo::open(path, true).map(Some).map_err(|e| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("{}: {e}", self.name(exec_id)),
                )
            })
        };
        let out = open(stdout)?;
        let err = if stderr == stdout {
            match &out {
                Some(f) => Some(f.try_clone().map_err(|e| {
                    status(Code::INTERNAL, format!("cannot duplicate a file: {e}"))
                })?),
                None => None,
            }
        } else {
            open(stderr)?
        };
        Ok((out, err))
    }
}

/// The console socket runc sends the terminal's master to, in the bundle
/// (the shim's working directory): relative, so a long bundle path cannot
/// exceed a socket address.
pub(super) const CONSOLE_SOCKET: &str = "console.sock";

/// How long runc's connection to the console socket is waited for after
/// `runc run --detach` returned.
pub(super) const CONSOLE_LIMIT: Duration = Duration::from_secs(5);

impl Shared {
    /// Whether the bundle's config.json asks for a terminal
    /// (`process.terminal`), read without a JSON parser: the key only
    /// appears as `"terminal":true` outside of strings.
    pub(super) fn spec_wants_terminal(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.bundle.join(SPEC_FILE)) else {
            return false;
        };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains("\"terminal\":true")
    }
}

/// Takes the terminal master runc sent over the console socket, and gives
/// it a window size.
pub(super) fn receive_console(listener: &UnixListener) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let limit = std::time::Instant::now() + CONSOLE_LIMIT;
    listener
        .set_nonblocking(true)
        .doing(|| "console socket".to_string())?;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= limit {
                    return Err(ShimError::NoTerminal);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).doing(|| "console socket".to_string()),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(CONSOLE_LIMIT)))
        .doing(|| "console socket".to_string())?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .doing(|| "receiving the terminal".to_string())?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().doing(|| "receiving the terminal".to_string())? {
        if let ControlMessageOwned::ScmRights(got) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process; nothing else owns them.
            fds.extend(
                got.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let master = fds.into_iter().next().ok_or(ShimError::NoTerminal)?;
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        log::warn!(
            "cannot set the terminal's window size: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(master)
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}
