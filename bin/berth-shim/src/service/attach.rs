//! Attaches to the container's own stdio, asked on the attach socket
//! (berth_protocol::shim::AttachRequest): the container's output also goes
//! to the attach's FIFOs, and what it writes on its stdin FIFO goes to the
//! container's stdin (or terminal). Several attaches may be made at once.

use super::*;
use crate::error::{Doing, Result as ShimResult};
use crate::io::Tap;
use berth_protocol::shim::{AttachRequest, ATTACH_OK};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// How long a connection may take to say what it wants.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// A pipe's room for an attach's output (raised from the default 64 KiB
/// where the kernel allows).
const TAP_PIPE_SIZE: i32 = 1 << 20;

impl Shared {
    /// Serves the attach socket on a thread of its own.
    pub fn serve_attach(self: &Arc<Self>, listener: UnixListener) -> ShimResult<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("attach".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => me.answer_attach(c),
                        Err(e) => log::warn!("attach socket: {e}"),
                    }
                }
            })
            .doing(|| "cannot start the attach thread".into())?;
        Ok(())
    }

    fn answer_attach(self: &Arc<Self>, mut conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(REQUEST_LIMIT));
        let mut line = String::new();
        let read = BufReader::new(&conn).take(4096).read_line(&mut line);
        let answer = match read {
            Ok(_) => AttachRequest::parse(&line).and_then(|req| self.attach(&req)),
            Err(e) => Err(format!("reading the request: {e}")),
        };
        let reply = match answer {
            Ok(()) => format!("{ATTACH_OK}\n"),
            Err(e) => {
                log::warn!("container {}: attach refused: {e}", self.id);
                format!("error: {e}\n")
            }
        };
        let _ = conn.write_all(reply.as_bytes());
    }

    fn attach(self: &Arc<Self>, req: &AttachRequest) -> std::result::Result<(), String> {
        // What stdin feeds: the terminal's master, or the stdin pipe.
        let (target, terminal) = {
            let tasks = self.tasks();
            let init = tasks
                .init
                .as_ref()
                .filter(|p| p.phase == Phase::Running)
                .ok_or_else(|| format!("container {} is not running", self.id))?;
            let target = match (&init.console, &init.stdin) {
                (Some(master), _) => Some(master.try_clone()),
                (None, Some(pipe)) => Some(pipe.try_clone()),
                (None, None) => None,
            };
            let target = target
                .transpose()
                .map_err(|e| format!("cannot duplicate the container's stdin: {e}"))?;
            (target, init.console.is_some())
        };
        let mut taps = Vec::new();
        for (path, tag) in [(&req.stdout, "stdout"), (&req.stderr, "stderr")] {
            if let Some(p) = path {
                let out = fifo::open(&p.to_string_lossy(), true).map_err(|e| e.to_string())?;
                nonblocking(&out).map_err(|e| format!("{}: {e}", p.display()))?;
                // SAFETY: F_SETPIPE_SZ takes an int; a refusal leaves the
                // default size.
                unsafe {
                    libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, TAP_PIPE_SIZE);
                }
                taps.push(Tap::new(tag, out));
            }
        }
        let stdin = match &req.stdin {
            Some(p) => Some(fifo::open(&p.to_string_lossy(), false).map_err(|e| e.to_string())?),
            None => None,
        };
        {
            let mut all = self.taps.lock().unwrap_or_else(|p| p.into_inner());
            for t in taps {
                // Output already over: the tap is dropped, its reader
                // sees the end.
                all.add(t);
            }
        }
        if let (Some(input), Some(target)) = (stdin, target) {
            let close = req.close_stdin && !terminal;
            let me = self.id.clone();
            let shared = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("attach-stdin".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    copy_stdin(input, target);
                    if close {
                        if let Some(s) = shared.upgrade() {
                            if let Some(init) = s.tasks().init.as_mut() {
                                init.stdin = None;
                            }
                        }
                        log::info!("container {me}: the attach's stdin ended; the container's stdin is closed (stdin_once)");
                    }
                })
                .map_err(|e| format!("cannot start the stdin copier: {e}"))?;
        }
        Ok(())
    }
}

fn nonblocking(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor this function borrows.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn copy_stdin(mut input: File, target: OwnedFd) {
    let mut to = File::from(target);
    let mut buf = [0u8; 32 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
