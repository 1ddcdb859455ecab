//! berth-shim on its own, with real runc and busybox containers, driven
//! through berthd's client (`berth_actors::shim`). Needs root, `runc` and
//! `busybox-static` (bin/setup installs them).
//!
//! Each test has its own temporary directory (bundle, runc root, socket,
//! logs) and container id, so the tests run in parallel; a guard deletes
//! the container and kills the shim even when a test fails.

use berth_actors::shim::client::{CreateOpts, ExecOpts, ShimClient, TaskStatus};
use berth_actors::shim::launch::{self, LaunchOpts, ShimArgs};
use berth_actors::Error;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{create_events, events::task::TaskExit, ttrpc, Events};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

fn unique_id(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "shimtest-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox is missing: apt-get install busybox-static")
}

/// A bundle running `args` as the container's process. Without `pid_ns`
/// the container shares the host's pid namespace, so its process is not an
/// init that the kernel shields from signals it has no handler for.
fn make_bundle(bundle: &Path, args: &[&str], pid_ns: bool) {
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    std::fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
    for tool in [
        "sh", "echo", "sleep", "cat", "true", "false", "printf", "id", "grep", "tty", "env", "sort",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).expect("symlink");
    }
    let out = Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(bundle)
        .output()
        .expect("runc is missing: apt-get install runc");
    assert!(out.status.success(), "runc spec: {out:?}");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!("rootfs");
    spec["root"]["readonly"] = serde_json::json!(false);
    if !pid_ns {
        let namespaces = spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        namespaces.retain(|n| n["type"] != "pid");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");
}

/// One container's world: its directory, shim and client.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
    bundle: PathBuf,
    runc_root: PathBuf,
    socket: PathBuf,
    shim_pid: u32,
    client: ShimClient,
}

impl Fixture {
    async fn new(tag: &str, args: &[&str], pid_ns: bool) -> Fixture {
        Fixture::with_events(tag, args, pid_ns, None).await
    }

    async fn with_events(
        tag: &str,
        args: &[&str],
        pid_ns: bool,
        events: Option<PathBuf>,
    ) -> Fixture {
        Fixture::launch(tag, args, pid_ns, events, false).await
    }

    async fn launch(
        tag: &str,
        args: &[&str],
        pid_ns: bool,
        events: Option<PathBuf>,
        runtime_exec: bool,
    ) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = unique_id(tag);
        let bundle = dir.path().join("bundle");
        make_bundle(&bundle, args, pid_ns);
        let runc_root = dir.path().join("runc");
        let socket = dir.path().join("shim.sock");
        let launched = launch::launch(&LaunchOpts {
            shim_binary: SHIM.into(),
            args: ShimArgs {
                id: id.clone(),
                bundle: bundle.clone(),
                socket: socket.clone(),
                runtime: "runc".into(),
                runtime_root: runc_root.clone(),
                events,
                runtime_exec,
                runtime_timeout: None,
            },
            timeout: Duration::from_secs(20),
        })
        .await
        .expect("launch the shim");
        assert_eq!(launched.socket, socket);
        let client = ShimClient::connect(&id, &socket)
            .await
            .expect("connect to the shim");
        Fixture {
            dir,
            id,
            bundle,
            runc_root,
            socket,
            shim_pid: launched.pid,
            client,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("container.log")
    }

    async fn create_and_start(&self) -> u32 {
        let pid = self
            .client
            .create(&CreateOpts {
                bundle: self.bundle.clone(),
                stdout: Some(self.log_path()),
                stderr: None,
                stdin: false,
                ..Default::default()
            })
            .await
            .expect("create");
        // Defined: it runs at start (runc run --detach).
        assert_eq!(pid, 0);
        let state = self.client.state(None).await.expect("state");
        assert_eq!((state.status, state.pid), (TaskStatus::Created, 0));
        let pid = self.client.start(None).await.expect("start");
        assert!(pid > 0);
        pid
    }

    /// The graceful end: kill, wait, delete, shutdown; then the shim is gone.
    async fn finish(&self) {
        if let Ok(state) = self.client.state(None).await {
            if state.status != TaskStatus::Stopped {
                self.client.kill(None, 9, true).await.expect("kill");
                let exit = self
                    .client
                    .wait(None, Some(Duration::from_secs(10)))
                    .await
                    .expect("wait");
                assert_eq!(exit.status, 137);
            }
            self.client.delete(None).await.expect("delete");
        }
        self.client.shutdown(false).await.expect("shutdown");
        wait_until("the shim exits", || !alive(self.shim_pid)).await;
        assert!(!self.socket.exists(), "the socket is removed");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // After a failed test: nothing may be left running.
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .output();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.shim_pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("berth-shim") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.shim_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only a live process counts.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn ppid(pid: u32) -> u32 {
    status_field(pid, "PPid").parse().expect("ppid")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `<RFC3339Nano> <stream> <F|P> <text>` with the text as given.
fn has_line(log: &str, stream: &str, tag: &str, text: &str) -> bool {
    log.lines().any(|line| {
        let Some((ts, rest)) = line.split_once(' ') else {
            return false;
        };
        rest == format!("{stream} {tag} {text}") && is_rfc3339_nano(ts)
    })
}

fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 30
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[29] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..29]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit))
}

/// Collects TaskExit events, as berthd's events socket would.
struct EventSink(Mutex<Vec<TaskExit>>);

impl Events for EventSink {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
        if let Some(any) = req.envelope.event.as_ref() {
            if any.type_url == "containerd.events.TaskExit" {
                if let Ok(exit) = TaskExit::parse_from_bytes(&any.value) {
                    self.0.lock().expect("lock").push(exit);
                }
            }
        }
        Ok(containerd_shim_protos::api::Empty::new())
    }
}

#[tokio::test]
async fn output_goes_to_the_cri_log_and_the_exit_code_is_kept() {
    let events_dir = tempfile::tempdir().expect("tempdir");
    let events_socket = events_dir.path().join("events.sock");
    let sink = Arc::new(EventSink(Mutex::default()));
    let mut events_server = ttrpc::Server::new()
        .bind(&format!("unix://{}", events_socket.display()))
        .expect("bind events")
        .register_service(create_events(sink.clone()));
    events_server.start().expect("events server");

    let script = "echo hello; printf no-newline; echo oops >&2; exit 3";
    let f = Fixture::with_events("output", &["sh", "-c", script], true, Some(events_socket)).await;
    let pid = f.create_and_start().await;
    let exit = f
        .client
        .wait(None, Some(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert_eq!(exit.status, 3);

    let log = read(&f.log_path());
    assert!(has_line(&log, "stdout", "F", "hello"), "{log}");
    assert!(has_line(&log, "stdout", "P", "no-newline"), "{log}");
    assert!(has_line(&log, "stderr", "F", "oops"), "{log}");
    assert_eq!(log.lines().count(), 3, "{log}");

    let on_disk = launch::read_exit(&f.bundle)
        .expect("exit file")
        .expect("exited");
    assert_eq!(on_disk.status, 3);
    assert_eq!(on_disk.exited_at, exit.exited_at);
    let raw = read(&f.bundle.join("exit"));
    assert!(raw.contains("\"status\": 3"), "{raw}");

    let state = f.client.state(None).await.expect("state");
    assert_eq!(state.status, TaskStatus::Stopped);
    assert_eq!(state.pid, pid);
    assert_eq!(state.exit.map(|e| e.status), Some(3));

    wait_until("the exit event arrives", || {
        !sink.0.lock().expect("lock").is_empty()
    })
    .await;
    let event = sink.0.lock().expect("lock")[0].clone();
    assert_eq!(
        (event.container_id.as_str(), event.id.as_str()),
        (f.id.as_str(), f.id.as_str())
    );
    assert_eq!((event.pid, event.exit_status), (pid, 3));

    f.finish().await;
    events_server.shutdown();
}

#[tokio::test]
async fn the_shim_is_the_parent_and_sigterm_gives_143() {
    let f = Fixture::new("sleep", &["sleep", "1000"], false).await;
    let pid = f.create_and_start().await;
    assert_eq!(ppid(pid), f.shim_pid, "the container's parent is its shim");

    // Detached: adopted by init or by the nearest subreaper above us.
    let shim_parent = ppid(f.shim_pid);
    let mut ancestors = vec![1];
    let mut p = std::process::id();
    while p > 1 {
        ancestors.push(p);
        p = ppid(p);
    }
    assert_ne!(shim_parent, std::process::id());
    assert!(
        shim_parent == 1 || ancestors.contains(&shim_parent),
        "the shim's parent {shim_parent} is neither init nor a subreaper above the test"
    );

    let state = f.client.state(None).await.expect("state");
    assert_eq!((state.status, state.pid), (TaskStatus::Running, pid));
    assert!(f.client.pids().await.expect("pids").contains(&pid));

    f.client.kill(None, 15, false).await.expect("SIGTERM");
    let exit = f
        .client
        .wait(None, Some(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert_eq!(exit.status, 143);

    let gone = f.client.kill(None, 15, false).await.expect_err("exited");
    assert!(matches!(gone, Error::NotFound(_)), "{gone:?}");

    let deleted = f.client.delete(None).await.expect("delete");
    assert_eq!((deleted.pid, deleted.exit.status), (pid, 143));
    let list = Command::new("runc")
        .arg("--root")
        .arg(&f.runc_root)
        .arg("list")
        .output()
        .expect("runc list");
    assert!(list.status.success());
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&f.id),
        "runc still lists the container"
    );
    let e = f.client.state(None).await.expect_err("deleted");
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains(&f.id)),
        "{e:?}"
    );
    f.finish().await;
}

#[tokio::test]
async fn exec_runs_in_the_container_with_raw_output() {
    let f = Fixture::new("exec", &["sleep", "1000"], true).await;
    f.create_and_start().await;
    let out = f.dir.path().join("exec.out");
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "echo hi; echo err >&2; exit 0"],
        "env": ["PATH=/bin"],
        "cwd": "/",
    });
    f.client
        .exec(&ExecOpts {
            exec_id: "e1".into(),
            process_json: serde_json::to_vec(&process).expect("json"),
            stdout: Some(out.clone()),
            stderr: Some(out.clone()),
            ..Default::default()
        })
        .await
        .expect("exec");
    let created = f.client.state(Some("e1")).await.expect("state");
    assert_eq!((created.status, created.pid), (TaskStatus::Created, 0));
    let exec_pid = f.client.start(Some("e1")).await.expect("start exec");
    assert!(exec_pid > 0);
    let exit = f
        .client
        .wait(Some("e1"), Some(Duration::from_secs(10)))
        .await
        .expect("wait exec");
    assert_eq!(exit.status, 0);
    assert_eq!(read(&out), "hi\nerr\n");
    f.client.delete(Some("e1")).await.expect("delete exec");
    let e = f.client.state(Some("e1")).await.expect_err("deleted");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    // A failing exec reports its code too.
    let process = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/false"],
        "cwd": "/",
    });
    f.client
        .exec(&ExecOpts {
            exec_id: "e2".into(),
            process_json: serde_json::to_vec(&process).expect("json"),
            ..Default::default()
        })
        .await
        .expect("exec");
    f.client.start(Some("e2")).await.expect("start exec");
    let exit = f
        .client
        .wait(Some("e2"), Some(Duration::from_secs(10)))
        .await
        .expect("wait exec");
    assert_eq!(exit.status, 1);
    f.finish().await;
}

/// Runs `process` as exec `exec_id` to its end; its output.
async fn exec_output(f: &Fixture, exec_id: &str, process: &serde_json::Value, tty: bool) -> String {
    let out = f.dir.path().join(format!("{exec_id}.out"));
    f.client
        .exec(&ExecOpts {
            exec_id: exec_id.into(),
            process_json: serde_json::to_vec(process).expect("json"),
            stdout: Some(out.clone()),
            stderr: (!tty).then(|| out.clone()),
            terminal: tty,
            ..Default::default()
        })
        .await
        .expect("exec");
    f.client.start(Some(exec_id)).await.expect("start exec");
    let exit = f
        .client
        .wait(Some(exec_id), Some(Duration::from_secs(10)))
        .await
        .expect("wait exec");
    f.client.delete(Some(exec_id)).await.expect("delete exec");
    let text = read(&out);
    assert_eq!(exit.status, 0, "{exec_id}: {text}");
    text
}

/// An exec as a user with groups, capabilities, rlimits, a umask and an
/// oom_score_adj of its own, HOME from the container's /etc/passwd.
fn probe_process(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000, 20], "umask": 23},
        "args": args,
        "env": ["PATH=/bin", "GREETING=hi there"],
        "cwd": "/work",
        "capabilities": {
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
            "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
        "noNewPrivileges": true,
        "oomScoreAdj": 500
    })
}

/// What an exec sees of itself: first what runc 1.1 leaves out or gets
/// wrong at times (the process's umask and oomScoreAdj; its soft
/// RLIMIT_NOFILE, which Go raises), then, after `==`, what must be the
/// same whoever started it.
const PROBE: &str = "umask; ulimit -Sn; cat /proc/self/oom_score_adj; echo ==; \
    id; pwd; echo HOME=$HOME; ulimit -Hn; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; \
    env | grep -v -E '^(PWD|SHLVL|_)=' | sort; cat /proc/1/cmdline; echo";

/// A container whose execs are started by the shim, or by runc.
async fn probe_fixture(tag: &str, runtime_exec: bool) -> Fixture {
    let f = Fixture::launch(tag, &["sleep", "1000"], true, None, runtime_exec).await;
    let rootfs = f.bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("etc");
    std::fs::create_dir_all(rootfs.join("work")).expect("work");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n",
    )
    .expect("passwd");
    f.create_and_start().await;
    f
}

#[tokio::test]
async fn execs_started_by_the_shim_match_runcs() {
    let native = probe_fixture("native", false).await;
    let runc = probe_fixture("runc", true).await;
    let probe = probe_process(&["sh", "-c", PROBE]);
    let seen = exec_output(&native, "p1", &probe, false).await;
    let expected = exec_output(&runc, "p1", &probe, false).await;
    let same = |text: &str| text.split_once("==\n").map(|(_, s)| s.to_string());
    assert_eq!(same(&seen), same(&expected));
    for want in [
        "0027\n256\n500\n==\n",
        "uid=1000(u) gid=1000 groups=20,1000\n/work\nHOME=/home/u\n512\n",
        "CapEff:\t0000000000000400",
        "CapBnd:\t0000000000000421",
        "CapAmb:\t0000000000000400",
        "NoNewPrivs:\t1",
        "GREETING=hi there",
        "sleep\u{0}1000\u{0}",
    ] {
        assert!(seen.contains(want), "{want:?} in {seen}");
    }
    // A terminal of the container's own devpts, as its controlling one.
    let mut tty = probe_process(&["sh", "-c", "tty; [ -t 0 ] && echo interactive"]);
    tty["terminal"] = serde_json::json!(true);
    let seen = exec_output(&native, "t1", &tty, true).await;
    assert_eq!(seen, exec_output(&runc, "t1", &tty, true).await);
    assert!(seen.contains("/dev/pts/0\r\ninteractive"), "{seen:?}");

    // Same namespaces and cgroups as the init, seen from the node.
    let init = native.client.state(None).await.expect("state").pid;
    let mut sleeper = probe_process(&["sleep", "30"]);
    sleeper["user"] = serde_json::json!({"uid": 0, "gid": 0});
    native
        .client
        .exec(&ExecOpts {
            exec_id: "s1".into(),
            process_json: serde_json::to_vec(&sleeper).expect("json"),
            ..Default::default()
        })
        .await
        .expect("exec");
    let pid = native.client.start(Some("s1")).await.expect("start");
    for ns in ["ipc", "uts", "net", "pid", "mnt", "cgroup"] {
        let link = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).expect("ns");
        assert_eq!(link(pid), link(init), "{ns}");
    }
    let cgroup = |p: u32| read(Path::new(&format!("/proc/{p}/cgroup")));
    assert_eq!(cgroup(pid), cgroup(init));
    assert_eq!(ppid(pid), native.shim_pid);
    native
        .client
        .kill(Some("s1"), 9, false)
        .await
        .expect("kill");
    let exit = native
        .client
        .wait(Some("s1"), Some(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert_eq!(exit.status, 137);

    // What cannot start is an error at start, and leaves no process.
    for (id, args, cwd, says) in [
        (
            "m1",
            ["no-such-tool"],
            "/",
            "executable file not found in $PATH",
        ),
        ("m2", ["true"], "/no/such/dir", "chdir to cwd"),
    ] {
        let mut p = probe_process(&args);
        p["cwd"] = serde_json::json!(cwd);
        native
            .client
            .exec(&ExecOpts {
                exec_id: id.into(),
                process_json: serde_json::to_vec(&p).expect("json"),
                ..Default::default()
            })
            .await
            .expect("exec");
        let e = native.client.start(Some(id)).await.expect_err(id);
        assert!(e.to_string().contains(says), "{id}: {e}");
    }
    let log = read(&native.bundle.join("shim.log"));
    assert!(log.contains("execs start in the shim"), "{log}");
    let log = read(&runc.bundle.join("shim.log"));
    assert!(!log.contains("execs start in the shim"), "{log}");
    native.finish().await;
    runc.finish().await;
}

#[tokio::test]
async fn the_shim_stays_small() {
    let f = Fixture::new("rss", &["sleep", "1000"], true).await;
    let idle = status_field(f.shim_pid, "VmRSS");
    f.create_and_start().await;
    f.client.state(None).await.expect("state");
    let serving = status_field(f.shim_pid, "VmRSS");
    let threads = status_field(f.shim_pid, "Threads");
    println!("berth-shim RSS: {idle} idle, {serving} with a running container ({threads} threads)");
    let kib: u64 = serving
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS in kB");
    assert!(kib < 8 * 1024, "the shim uses {kib} KiB");
    f.finish().await;
}

#[tokio::test]
async fn sigusr1_reopens_the_log() {
    let script = "echo one; while [ ! -e /go ]; do sleep 0.05; done; echo two; sleep 1000";
    let f = Fixture::new("rotate", &["sh", "-c", script], true).await;
    f.create_and_start().await;
    let log = f.log_path();
    wait_until("the first line is logged", || read(&log).contains("one")).await;
    let rotated = f.dir.path().join("container.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(f.shim_pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
    wait_until("the log is reopened", || log.exists()).await;
    std::fs::write(f.bundle.join("rootfs/go"), "").expect("go");
    wait_until("the second line is logged", || read(&log).contains("two")).await;
    let (old, new) = (read(&rotated), read(&log));
    assert!(has_line(&old, "stdout", "F", "one"), "{old}");
    assert!(!old.contains("two"), "{old}");
    assert!(has_line(&new, "stdout", "F", "two"), "{new}");
    assert!(!new.contains("one"), "{new}");
    f.finish().await;
}

#[tokio::test]
async fn the_container_outlives_its_client() {
    let mut f = Fixture::new("orphan", &["sleep", "1000"], true).await;
    let pid = f.create_and_start().await;
    // A wait in flight when the connection drops must not matter either.
    let waiter = f.client.clone();
    let pending = tokio::spawn(async move { waiter.wait(None, None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pending.abort();
    let _ = pending.await;
    // Replacing the only client drops its connection.
    f.client = ShimClient::connect(&f.id, &f.socket)
        .await
        .expect("reconnect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid), "the container survives its client");
    assert!(alive(f.shim_pid));
    let state = f.client.state(None).await.expect("state");
    assert_eq!((state.status, state.pid), (TaskStatus::Running, pid));
    let info = f.client.connect_info().await.expect("connect");
    assert_eq!((info.shim_pid, info.task_pid), (f.shim_pid, pid));
    f.finish().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let f = Fixture::new("errors", &["sleep", "1000"], true).await;
    let other = ShimClient::connect("someone-else", &f.socket)
        .await
        .expect("connect");
    let e = other.state(None).await.expect_err("wrong id");
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("someone-else")),
        "{e:?}"
    );

    let e = f
        .client
        .create(&CreateOpts {
            bundle: f.bundle.clone(),
            stdout: Some("relative.log".into()),
            stderr: None,
            stdin: false,
            ..Default::default()
        })
        .await
        .expect_err("relative log path");
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains(&f.id)),
        "{e:?}"
    );
    let e = f
        .client
        .create(&CreateOpts {
            bundle: f.bundle.clone(),
            checkpoint: Some(f.bundle.join("no-such-images")),
            ..Default::default()
        })
        .await
        .expect_err("no checkpoint to restore");
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("checkpoint")),
        "{e:?}"
    );
    let e = f
        .client
        .checkpoint(&f.bundle.join("images"))
        .await
        .expect_err("nothing to checkpoint");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    let e = f.client.start(None).await.expect_err("nothing created");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    f.create_and_start().await;
    let e = f
        .client
        .create(&CreateOpts {
            bundle: f.bundle.clone(),
            ..Default::default()
        })
        .await
        .expect_err("twice");
    assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
    let e = f.client.delete(None).await.expect_err("running");
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    let e = f.client.shutdown(false).await.expect_err("running");
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    let e = f
        .client
        .wait(Some("nope"), None)
        .await
        .expect_err("no exec");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let e = f
        .client
        .wait(None, Some(Duration::from_millis(200)))
        .await
        .expect_err("still running");
    assert!(matches!(e, Error::DeadlineExceeded(_)), "{e:?}");
    f.finish().await;
}

#[tokio::test]
async fn a_shim_that_cannot_start_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LaunchOpts {
        shim_binary: SHIM.into(),
        args: ShimArgs {
            id: unique_id("nobundle"),
            bundle: dir.path().join("missing"),
            socket: dir.path().join("s.sock"),
            runtime: "runc".into(),
            runtime_root: dir.path().join("runc"),
            events: None,
            runtime_exec: false,
            runtime_timeout: None,
        },
        timeout: Duration::from_secs(10),
    };
    let e = launch::launch(&opts).await.expect_err("no bundle");
    assert!(
        matches!(&e, Error::Internal(m) if m.contains("not a directory") && m.contains(&opts.args.id)),
        "{e:?}"
    );
}
