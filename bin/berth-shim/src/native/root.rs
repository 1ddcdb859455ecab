//! The container's root file system seen from the shim: files opened
//! through `/proc/<init>/root` with `openat2(RESOLVE_IN_ROOT)`, so that
//! symbolic links and `..` inside the container resolve inside it and
//! never reach the node's files.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// The most of `/etc/passwd` read to find a home directory.
const PASSWD_MAX: u64 = 1 << 20;

/// Where a program is looked for when the process has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Root(OwnedFd);

impl Root {
    /// The root directory of process `pid`.
    pub fn of(pid: u32) -> io::Result<Root> {
        let path = CString::new(format!("/proc/{pid}/root")).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated path and flags; a new fd or -1.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just made, owned by nobody else.
        Ok(Root(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Opens `path` (absolute or not, inside the container) with `flags`.
    pub fn open(&self, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
        let relative = path.trim_start_matches('/');
        let c_path = CString::new(if relative.is_empty() { "." } else { relative })
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: a directory fd, a NUL-terminated path, an open_how and
        // its size; a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.0.as_raw_fd(),
                c_path.as_ptr(),
                &how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just made, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    /// The program `name` as `execve` in the container must be given it:
    /// as is when it holds a `/`, else the first executable regular file
    /// named so in `PATH`, as runc looks it up.
    pub fn find_program(&self, name: &str, path_env: Option<&str>, cwd: &str) -> Option<String> {
        if name.contains('/') {
            return Some(name.to_string());
        }
        for dir in path_env.unwrap_or(DEFAULT_PATH).split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = format!("{dir}/{name}");
            let inside = if candidate.starts_with('/') {
                candidate.clone()
            } else {
                format!("{}/{candidate}", cwd.trim_end_matches('/'))
            };
            let Ok(fd) = self.open(&inside, libc::O_PATH) else {
                continue;
            };
            let Ok(meta) = std::fs::File::from(fd).metadata() else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
        None
    }

    /// The home directory of `uid` in the container's `/etc/passwd`, or
    /// `/`, for a process whose environment has no `HOME` (as runc sets it).
    pub fn home_of(&self, uid: u32) -> String {
        let mut text = Vec::new();
        if let Ok(fd) = self.open("/etc/passwd", libc::O_RDONLY | libc::O_NONBLOCK) {
            let file = std::fs::File::from(fd);
            let regular = file.metadata().is_ok_and(|m| m.is_file());
            if regular {
                let _ = file.take(PASSWD_MAX).read_to_end(&mut text);
            }
        }
        home_in(&String::from_utf8_lossy(&text), uid).unwrap_or_else(|| "/".to_string())
    }

    /// A new terminal from the container's own `devpts`: its master and
    /// its slave (unlocked, sized as asked).
    pub fn terminal(&self, size: Option<(u16, u16)>) -> io::Result<(OwnedFd, OwnedFd)> {
        let flags = libc::O_RDWR | libc::O_NOCTTY;
        let master = self
            .open("/dev/pts/ptmx", flags)
            .or_else(|_| self.open("/dev/ptmx", flags))?;
        let meta = std::fs::File::from(master.try_clone()?).metadata()?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let rdev = meta.rdev();
        if !meta.file_type().is_char_device() || libc::major(rdev) != 5 || libc::minor(rdev) != 2 {
            return Err(io::Error::other("the container's /dev/ptmx is not a ptmx"));
        }
        let unlock: libc::c_int = 0;
        // SAFETY: the ioctls a ptmx takes, with the arguments they expect.
        unsafe {
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
                return Err(io::Error::last_os_error());
            }
            let slave = libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if slave < 0 {
                return Err(io::Error::last_os_error());
            }
            let slave = OwnedFd::from_raw_fd(slave);
            if let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                if libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok((master, slave))
        }
    }
}

/// A path as `execve` and `chdir` take it.
pub fn c_path(path: &str) -> io::Result<CString> {
    CString::new(std::ffi::OsStr::new(path).as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn home_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(id), Some(home)) = (fields.get(2), fields.get(5)) else {
            return None;
        };
        (id.parse::<u32>().ok() == Some(uid) && !home.is_empty()).then(|| home.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbroken\nwww:x:33:33::/var/www:/sbin/nologin\nnohome:x:5:5:::\n";
        assert_eq!(home_in(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(passwd, 33).as_deref(), Some("/var/www"));
        assert_eq!(home_in(passwd, 5), None);
        assert_eq!(home_in(passwd, 7), None);
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        let exe = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(root.join("usr/bin/tool"), exe).expect("chmod");
        std::fs::write(root.join("usr/bin/data"), "").expect("write");
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("link");
        // An absolute link would leave the root if it were followed from
        // the node; inside the root it names the container's /etc.
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).expect("link");
        std::fs::create_dir(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/passwd"), "me:x:7:7::/home/me:/bin/sh\n").expect("w");
        let cpath = c_path(&root.display().to_string()).expect("path");
        // SAFETY: a path and flags; the fd is owned below.
        let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: just made.
        let r = Root(unsafe { OwnedFd::from_raw_fd(fd) });
        assert_eq!(
            r.find_program("tool", Some("/bin"), "/").as_deref(),
            Some("/bin/tool")
        );
        assert_eq!(r.find_program("data", Some("/bin"), "/"), None);
        assert_eq!(
            r.find_program("tool", Some("/nope:bin"), "/").as_deref(),
            Some("bin/tool")
        );
        assert_eq!(r.find_program("./x", None, "/").as_deref(), Some("./x"));
        assert_eq!(r.home_of(7), "/home/me");
        assert_eq!(r.home_of(8), "/");
        let mut text = String::new();
        std::fs::File::from(r.open("/escape", libc::O_RDONLY).expect("open"))
            .read_to_string(&mut text)
            .expect("read");
        assert!(text.starts_with("me:"), "{text}");
        assert!(r.open("../../../etc/hostname", libc::O_RDONLY).is_err());
    }
}
