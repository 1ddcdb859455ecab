//! Process file descriptors: a handle on one process that a later signal
//! cannot miss and cannot misdirect, even once its pid is reaped and
//! reused.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd for `pid` (close-on-exec, as every pidfd is).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just made by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process behind `fd`. ESRCH: it has been reaped.
pub fn signal(fd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_is_signalled_through_its_pidfd() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let fd = open(child.id()).expect("pidfd");
        signal(&fd, libc::SIGKILL).expect("signal");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd says so rather than reaching another process.
        let e = signal(&fd, libc::SIGTERM).expect_err("reaped");
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
