//! An exec's stdio as the task API gives it: paths of FIFOs the caller
//! made and holds open (stdin for writing, stdout and stderr for
//! reading). Without a terminal the process gets the FIFOs themselves;
//! with one, the shim copies between the FIFOs and the terminal's master.
//! FIFOs are opened without blocking: a caller that is not there is an
//! error, never a shim stuck in `open`.

use crate::error::{Doing, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading (`write` false) or writing, without waiting
/// for the other end, then makes it blocking again. A regular file is
/// opened (and for writing, created) as a file.
pub(super) fn open(path: &str, write: bool) -> Result<File> {
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut opts = OpenOptions::new();
    if write {
        opts.write(true);
        if !is_fifo {
            opts.create(true).append(true).mode(0o600);
        }
    } else {
        opts.read(true);
    }
    if is_fifo {
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts
        .open(Path::new(path))
        .doing(|| format!("cannot open {path}"))?;
    if is_fifo {
        let flags =
            fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).doing(|| format!("{path}: flags"))?;
        let blocking = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
        fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(blocking)).doing(|| format!("{path}: flags"))?;
    }
    Ok(file)
}

/// Copies between a terminal's master and the exec's FIFOs, on two
/// threads: stdin into the master until stdin ends, the master into
/// stdout until the terminal closes (every process holding it exited).
/// Output a gone reader cannot take is read and dropped, so the process
/// never blocks on a full terminal.
pub(super) fn copy_terminal(
    name: &str,
    master: &OwnedFd,
    stdin: Option<File>,
    stdout: Option<File>,
) -> Result<()> {
    if let Some(mut input) = stdin {
        let mut to_master = File::from(master.try_clone().doing(|| "dup the terminal".into())?);
        std::thread::Builder::new()
            .name(format!("{name}-stdin"))
            .spawn(move || {
                let mut buf = [0u8; 32 * 1024];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_master.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .doing(|| "cannot start a terminal copier".into())?;
    }
    let mut from_master = File::from(master.try_clone().doing(|| "dup the terminal".into())?);
    std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            let mut out = stdout;
            let mut buf = [0u8; 32 * 1024];
            loop {
                match from_master.read(&mut buf) {
                    // EIO: the last process holding the terminal is gone.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Some(o) = out.as_mut() {
                            if o.write_all(&buf[..n]).is_err() {
                                out = None;
                            }
                        }
                    }
                }
            }
        })
        .doing(|| "cannot start a terminal copier".into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_open_without_waiting_and_a_missing_reader_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let path = fifo.to_string_lossy().to_string();
        // Nobody reads: an error at once, not a hang.
        assert!(open(&path, true).is_err());
        // With a reader, it opens, and what is written arrives.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("reader");
        let mut w = open(&path, true).expect("writer");
        w.write_all(b"hi").expect("write");
        drop(w);
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hi");
        // A regular path is a file, created.
        let file = dir.path().join("file").to_string_lossy().to_string();
        open(&file, true)
            .expect("file")
            .write_all(b"x")
            .expect("write");
        assert_eq!(std::fs::read(&file).expect("read"), b"x");
    }
}
