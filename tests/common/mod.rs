//! Harness for the end-to-end tests: a real berthd on a temporary root,
//! state directory and sockets, and clients for its CRI and admin sockets.
//!
//! The binaries are taken from the cargo target directory this test runs
//! from (or `BERTH_BIN_DIR`); build them first with `cargo build --workspace`.

pub mod image;
pub mod node;
pub mod registry;

use berth_protocol::admin::admin_client::AdminClient;
use berth_protocol::cri::image_service_client::ImageServiceClient;
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Where berthd, berthctl and berth-shim were built.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A berthd under test. Killed (SIGKILL) when dropped if still running.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Environment variables berthd is started with, besides the tests'.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes a config under a fresh temporary directory; `extra` is appended
    /// to it (TOML).
    pub fn configure(extra: &str) -> Daemon {
        Self::configure_logging(extra, "debug")
    }

    /// As [`Daemon::configure`], with berthd's log level.
    pub fn configure_logging(extra: &str, level: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("cni")).expect("cni dir");
        let config = d.join("config.toml");
        let text = format!(
            "root = \"{root}\"\nstate = \"{state}\"\n{extra}\n[cri]\nsocket = \"{state}/berth.sock\"\n[admin]\nsocket = \"{state}/admin.sock\"\n[cni]\nconf_dir = \"{cni}\"\nmasquerade = []\n[log]\nlevel = \"{level}\"\n",
            root = d.join("root").display(),
            state = d.join("run").display(),
            cni = d.join("cni").display(),
        );
        std::fs::write(&config, text).expect("write config");
        Daemon {
            dir,
            config,
            env: Vec::new(),
            child: None,
        }
    }

    /// Configures and starts a berthd, waiting until both sockets serve.
    pub fn start() -> Daemon {
        let mut d = Daemon::configure("");
        d.spawn();
        d
    }

    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("run/berth.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("run/admin.sock")
    }

    /// Has berthd masquerade `subnets` (`[cni] masquerade`); its chain
    /// goes when the daemon is dropped.
    pub fn masquerade(&self, subnets: &[&str]) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let list: Vec<String> = subnets.iter().map(|s| format!("{s:?}")).collect();
        let text = text.replacen(
            "masquerade = []",
            &format!("masquerade = [{}]", list.join(", ")),
            1,
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    fn masquerading(&self) -> bool {
        std::fs::read_to_string(&self.config)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("masquerade = [\"")))
    }

    /// The iptables chain berthd keeps for masquerading.
    pub fn masquerade_chain(&self) -> String {
        berth_actors::network::masquerade::chain_name(&self.dir.path().join("run"))
    }

    pub fn cni_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd running").id()
    }

    /// Starts berthd (again) on the same directories and waits for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "berthd already running");
        // A socket left by the previous berthd is not this one's: ready
        // means each socket was bound anew (a process caught between fork
        // and exec as the old berthd died may still hold the old one).
        let inode = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            // Inode numbers are reused at once: the change time tells.
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
        };
        let sockets = [self.cri_socket(), self.admin_socket()];
        let stale: Vec<_> = sockets.iter().map(|s| inode(s)).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(bin("berthd"))
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berthd exited with {status} at start-up:\n{}", self.log());
            }
            let ready = sockets.iter().zip(&stale).all(|(s, old)| {
                let new = inode(s);
                new.is_some()
                    && (old.is_none() || new != *old)
                    && std::os::unix::net::UnixStream::connect(s).is_ok()
            });
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("berthd did not serve within 20 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("berthd running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("berthd running");
        let start = Instant::now();
        signal(child.id(), libc::SIGTERM);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berthd did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(connect(&self.cri_socket()).await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(connect(&self.cri_socket()).await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(connect(&self.admin_socket()).await)
    }

    /// Runs berthctl against this daemon's admin socket.
    pub fn berthctl(&self, args: &[&str]) -> Output {
        Command::new(bin("berthctl"))
            .arg("--socket")
            .arg(self.admin_socket())
            .args(args)
            .output()
            .expect("run berthctl")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: keep berthd's log for whoever looks into it.
            let name = self
                .dir
                .path()
                .file_name()
                .unwrap_or_default()
                .to_os_string();
            let kept = std::env::temp_dir().join(name).with_extension("log");
            if std::fs::copy(self.log_path(), &kept).is_ok() {
                eprintln!("berthd's log is kept in {}", kept.display());
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that failed half-way leaves shims (which ignore SIGTERM),
        // their containers and mounts behind: nothing of this daemon's may
        // outlive it.
        reap(self.dir.path());
        if self.masquerading() {
            berth_actors::network::masquerade::remove(&self.masquerade_chain());
        }
    }
}

/// Kills every process whose command line names `dir` (shims), and their
/// descendants (containers), then unmounts what is mounted below `dir`.
pub fn reap(dir: &Path) {
    let needle = dir.display().to_string();
    let mut parents: Vec<(i32, i32)> = Vec::new();
    let mut targets: Vec<i32> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            targets.push(pid);
        }
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_string()))
            .and_then(|rest| rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        parents.push((pid, ppid));
    }
    let mut i = 0;
    while i < targets.len() {
        let parent = targets[i];
        for (pid, ppid) in &parents {
            if *ppid == parent && !targets.contains(pid) {
                targets.push(*pid);
            }
        }
        i += 1;
    }
    for pid in targets {
        // SAFETY: kill(2) on pids that belong to this test's daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut points: Vec<PathBuf> = berth_actors::mounts::mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes an executable shell script doing `body`.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// How many processes have a command line holding `needle` (arguments
/// are separated by NUL bytes).
pub fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .count()
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test spawned; no memory is involved.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

pub async fn connect(socket: &Path) -> Channel {
    berth_protocol::uds::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()))
}

/// Runs berthd with `config` until it exits (it is expected to fail fast).
pub fn run_berthd_expecting_failure(config: &Path) -> Output {
    let mut child = Command::new(bin("berthd"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berthd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berthd kept running with a bad configuration");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Polls `f` until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The names (hex digests) of berth's own sandbox image's files under
/// `root`, which berthd makes at start-up: its snapshot (the one with
/// `/pause` at its root), its layer blob of the same name, and the config
/// and manifest blobs that name that layer. Image tests leave them out of
/// what they count.
pub fn sandbox_image_files(root: &Path) -> std::collections::BTreeSet<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let snapshots = root.join("snapshots");
    let blobs = root.join("content/blobs/sha256");
    let mut out = std::collections::BTreeSet::new();
    for layer in names(&snapshots) {
        if !snapshots.join(&layer).join("pause").is_file() {
            continue;
        }
        let named = format!("sha256:{layer}");
        for blob in names(&blobs) {
            let path = blobs.join(&blob);
            let small = path.metadata().is_ok_and(|m| m.len() < 4096);
            if blob == layer
                || (small && std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&named)))
            {
                out.insert(blob);
            }
        }
        out.insert(layer);
    }
    out
}

/// CRI image calls the tests share.
pub mod cri {
    use berth_protocol::cri::image_service_client::ImageServiceClient;
    use berth_protocol::cri::*;
    use tonic::transport::Channel;

    pub fn spec(image: &str) -> Option<ImageSpec> {
        Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        })
    }

    /// ImageStatus, which must answer; None for an image that is not there.
    pub async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> Option<Image> {
        c.image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
    }

    /// Every image but berth's own sandbox image (made at start-up).
    pub async fn list(c: &mut ImageServiceClient<Channel>) -> Vec<Image> {
        c.list_images(ListImagesRequest { filter: None })
            .await
            .expect("ListImages")
            .into_inner()
            .images
            .into_iter()
            .filter(|i| {
                !i.repo_tags
                    .iter()
                    .any(|t| t.starts_with("berth.local/pause:"))
            })
            .collect()
    }
}
