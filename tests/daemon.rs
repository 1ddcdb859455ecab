//! berthd end to end: the CRI socket, the admin socket, actor supervision,
//! the journal across a crash, and shutdown.

use berth_protocol::admin::{
    ActorStatus, GetActorRequest, JournalStatsRequest, KillActorRequest, KillMode,
    ListActorsRequest, PingActorRequest,
};
use berth_protocol::cri::*;
use berth_tests::{eventually, Daemon};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;
use tonic::Code;

const ACTORS: [&str; 5] = ["network", "shim", "image", "sandbox", "container"];

fn condition<'a>(status: &'a StatusResponse, kind: &str) -> &'a RuntimeCondition {
    status
        .status
        .as_ref()
        .expect("runtime status")
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

#[tokio::test]
async fn version_status_and_runtime_config_over_the_cri_socket() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;

    let v = rt
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let s = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status);
    let net = condition(&s, "NetworkReady");
    assert!(!net.status, "no CNI config yet: {net:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains(&d.cni_dir().display().to_string()),
        "{net:?}"
    );
    assert!(s.info.is_empty(), "info only when verbose");

    // A CNI config that appears is seen without a restart.
    std::fs::write(
        d.cni_dir().join("10-pods.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"loopback"}]}"#,
    )
    .expect("write conflist");
    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    assert!(condition(&s, "NetworkReady").status, "{s:?}");
    let config: serde_json::Value =
        serde_json::from_str(&s.info["config"]).expect("config is JSON");
    assert_eq!(
        config["cri"]["socket"],
        d.cri_socket().display().to_string()
    );
    let actors: serde_json::Value = serde_json::from_str(&s.info["actors"]).expect("actors JSON");
    let names: Vec<_> = actors
        .as_array()
        .expect("array")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ACTORS);

    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        rc.linux.expect("linux").cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn socket_modes_and_a_stale_socket_is_replaced() {
    let mut d = Daemon::configure("");
    // A socket file left by a berthd that crashed: nobody listens on it.
    std::fs::create_dir_all(d.dir.path().join("run")).expect("run dir");
    drop(std::os::unix::net::UnixListener::bind(d.cri_socket()).expect("stale socket"));
    assert!(d.cri_socket().exists());
    d.spawn();
    let meta = std::fs::metadata(d.cri_socket()).expect("cri socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let meta = std::fs::metadata(d.admin_socket()).expect("admin socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("served on the replaced socket");
}

#[tokio::test]
async fn a_second_berthd_on_the_same_root_is_refused() {
    let d = Daemon::start();
    // Same root, other sockets: the root lock refuses it.
    let other = d.dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "root = \"{}\"\nstate = \"{}\"\n[cri]\nsocket = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            d.root().display(),
            d.dir.path().join("run2").display(),
            d.dir.path().join("run2/berth.sock").display(),
            d.dir.path().join("run2/admin.sock").display(),
        ),
    )
    .expect("write");
    let out = berth_tests::run_berthd_expecting_failure(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("another berthd") && stderr.contains(&d.pid().to_string()),
        "{stderr}"
    );
    // The first one still serves.
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("first berthd serves");
}

/// A lock whose berthd is gone but that something still holds for an
/// instant (a child between its fork and its exec when berthd was killed)
/// is waited for; one that stays held is a clear error naming its holder.
#[tokio::test]
async fn a_lock_left_held_after_its_berthd_ended_is_waited_for_then_named() {
    let mut d = Daemon::configure("");
    std::fs::create_dir_all(d.root()).expect("root");
    let lock = d.root().join("berthd.lock");
    let gone = std::process::Command::new("true").spawn().expect("true");
    let gone_pid = gone.id();
    let _ = gone.wait_with_output();
    std::fs::write(&lock, gone_pid.to_string()).expect("lock file");
    let hold = |secs: &str| {
        std::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", secs])
            .spawn()
            .expect("flock")
    };
    let mut brief = hold("1");
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    d.spawn();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "berthd waited for the holder"
    );
    let _ = brief.wait();
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("serving");
    let stopped_pid = d.pid();
    d.kill9();
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock").trim(),
        stopped_pid.to_string()
    );

    let mut stuck = hold("30");
    std::thread::sleep(Duration::from_millis(200));
    let out = berth_tests::run_berthd_expecting_failure(&d.config);
    let _ = stuck.kill();
    let _ = stuck.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("still held") && stderr.contains("flock"),
        "{stderr}"
    );
}

#[tokio::test]
async fn every_actor_killed_through_berthctl_is_restarted_and_answers() {
    let d = Daemon::start();
    let mut admin = d.admin().await;
    for name in ACTORS {
        let out = d.berthctl(&["kill-actor", name]);
        assert!(out.status.success(), "{out:?}");
        let info = eventually(Duration::from_secs(5), "restart", || {
            let mut admin = admin.clone();
            async move {
                let a = admin
                    .get_actor(GetActorRequest { name: name.into() })
                    .await
                    .ok()?
                    .into_inner();
                (a.restarts == 1 && a.status == ActorStatus::Running as i32).then_some(a)
            }
        })
        .await;
        assert_eq!(info.last_error, "killed by an operator");
        let ping = admin
            .ping_actor(PingActorRequest { name: name.into() })
            .await
            .expect("answers after restart")
            .into_inner();
        assert_eq!(ping.generation, 2, "state rebuilt once more");
    }
    let table = d.berthctl(&["actors"]);
    let table = String::from_utf8_lossy(&table.stdout);
    for name in ACTORS {
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in\n{table}"));
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(cols[1], "running", "{row}");
        assert_eq!(cols[5], "1", "restarts column: {row}");
    }
}

#[tokio::test]
async fn a_panic_in_a_handler_fails_that_call_as_unavailable_and_restarts_the_actor() {
    let d = Daemon::start();
    let mut admin = d.admin().await;
    for name in ACTORS {
        let err = admin
            .kill_actor(KillActorRequest {
                name: name.into(),
                mode: KillMode::Panic as i32,
            })
            .await
            .expect_err("the panicking call fails");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("panic injected"), "{err:?}");
        let ping = admin
            .ping_actor(PingActorRequest { name: name.into() })
            .await
            .expect("answers again")
            .into_inner();
        assert_eq!(ping.generation, 2);
        let info = admin
            .get_actor(GetActorRequest { name: name.into() })
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.restarts, 1);
        assert_eq!(info.failed, 1);
        assert!(info.last_error.starts_with("panic:"), "{info:?}");
    }
    // The CRI keeps answering through it all, and the network actor that
    // Status asks is back.
    let mut rt = d.runtime().await;
    let s = rt
        .status(StatusRequest::default())
        .await
        .expect("Status")
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status, "{s:?}");
    let all = admin
        .list_actors(ListActorsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(
        all.actors.iter().all(|a| a.restarts == 1 && a.mailbox == 0),
        "{all:?}"
    );
}

async fn boots(d: &Daemon) -> berth_protocol::admin::JournalStatsResponse {
    d.admin()
        .await
        .journal_stats(JournalStatsRequest {})
        .await
        .expect("journal stats")
        .into_inner()
}

#[tokio::test]
async fn the_journal_survives_kill_9_and_sigterm_exits_cleanly_within_two_seconds() {
    let mut d = Daemon::start();
    let first = boots(&d).await;
    assert_eq!(first.boots.len(), 1);
    let first_pid = d.pid();
    assert_eq!(first.boots[0].pid, first_pid);
    // The boot record was written just before berthd started serving; kill
    // it at once, as a crash would.
    d.kill9();
    d.spawn();
    let second = boots(&d).await;
    let seen: Vec<_> = second
        .boots
        .iter()
        .map(|b| (b.seq, b.pid, b.clean_shutdown))
        .collect();
    assert_eq!(seen, vec![(1, first_pid, false), (2, d.pid(), false)]);
    assert!(second
        .kinds
        .iter()
        .any(|k| k.kind == "meta" && k.count == 2));

    let (status, took) = d.terminate(Duration::from_secs(5));
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    for socket in [
        d.cri_socket(),
        d.admin_socket(),
        d.dir.path().join("run/events.sock"),
    ] {
        assert!(
            !socket.exists(),
            "{} removed on the way out",
            socket.display()
        );
    }
    assert!(d.log().contains("journal flushed"));

    d.spawn();
    let third = boots(&d).await;
    let clean: Vec<_> = third.boots.iter().map(|b| b.clean_shutdown).collect();
    assert_eq!(clean, vec![false, true, false]);
    let out = d.berthctl(&["journal", "stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("boots: 3") && text.contains("clean shutdown"),
        "{text}"
    );
}

#[tokio::test]
async fn cri_calls_are_logged_with_entry_and_outcome() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    rt.version(VersionRequest::default())
        .await
        .expect("Version");
    let _ = rt
        .checkpoint_container(CheckpointContainerRequest::default())
        .await;
    let log = eventually(Duration::from_secs(2), "log lines", || {
        let log = d.log();
        async move { log.contains("rpc=\"CheckpointContainer\"").then_some(log) }
    })
    .await;
    let version: Vec<_> = log
        .lines()
        .filter(|l| l.contains("rpc=\"Version\""))
        .collect();
    assert!(
        version.iter().any(|l| l.contains(": call rpc=")),
        "{version:?}"
    );
    assert!(
        version.iter().any(|l| l.contains(": ok rpc=")),
        "{version:?}"
    );
    // A refused call is logged with its code and why.
    assert!(
        log.lines()
            .any(|l| l.contains("rpc=\"CheckpointContainer\"")
                && l.contains("failed")
                && l.contains("InvalidArgument")
                && l.contains("location")),
        "{log}"
    );
}

#[tokio::test]
async fn json_logging_writes_one_object_per_line() {
    let mut d = Daemon::configure("");
    let text = std::fs::read_to_string(&d.config).expect("config");
    std::fs::write(&d.config, text.replace("[log]\n", "[log]\njson = true\n")).expect("write");
    d.spawn();
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("Version");
    let log = eventually(Duration::from_secs(2), "a Version log line", || {
        let log = d.log();
        async move { log.contains("\"rpc\":\"Version\"").then_some(log) }
    })
    .await;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// The descriptors `pid` holds that name something of the daemon under
/// `dir` (its lock, journal, sockets' directory, logs) or any socket.
fn daemon_fds(pid: u32, dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.starts_with(&dir.display().to_string()) || t.starts_with("socket:"))
        .collect()
}

/// kill -9 and an immediate restart, 50 times in a row, each time while a
/// child of berthd (a CNI plugin in the middle of an ADD) outlives it: the
/// child holds nothing of berthd (every descriptor berthd has is
/// close-on-exec), so the lock and the sockets are free the moment berthd
/// is gone, every restart succeeds at once and its first calls answer.
#[tokio::test]
async fn restarts_after_kill_9_succeed_every_time_while_a_child_outlives_berthd() {
    let parent = format!("/berth-e2e-restarts-{}", std::process::id());
    let plugins = tempfile::tempdir().expect("plugin dir");
    let adds = plugins.path().join("adds");
    std::fs::write(
        plugins.path().join("slow"),
        format!(
            "#!/bin/sh\ncase \"$CNI_COMMAND\" in\nADD) echo $$ >> {}; exec sleep 600;;\nVERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}';;\nesac\nexit 0\n",
            adds.display()
        ),
    )
    .expect("plugin");
    std::fs::set_permissions(
        plugins.path().join("slow"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let mut d = Daemon::configure(&format!("[sandbox]\ncgroup_parent = \"{parent}\"\n"));
    // The plugin's directory, beside the harness's CNI configuration.
    let config = std::fs::read_to_string(&d.config).expect("config");
    let config = config.replace(
        "[cni]\n",
        &format!("[cni]\nbin_dirs = [\"{}\"]\n", plugins.path().display()),
    );
    std::fs::write(&d.config, config).expect("config");
    std::fs::write(
        d.cni_dir().join("10-slow.conflist"),
        r#"{"cniVersion":"1.0.0","name":"slow","plugins":[{"type":"slow"}]}"#,
    )
    .expect("conflist");
    let children = || -> Vec<u32> {
        std::fs::read_to_string(&adds)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };

    for round in 0..50 {
        d.spawn();
        // The first call of each incarnation answers (no stale listener).
        let mut admin = d.admin().await;
        admin
            .list_actors(ListActorsRequest {})
            .await
            .unwrap_or_else(|e| panic!("round {round}: first admin call: {e:?}"));
        let socket = d.cri_socket();
        let name = format!("round-{round}");
        tokio::spawn(async move {
            let mut rt = berth_protocol::cri::runtime_service_client::RuntimeServiceClient::new(
                berth_tests::connect(&socket).await,
            );
            let _ = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(berth_tests::node::pod_config(
                        &name,
                        std::path::Path::new(""),
                    )),
                    runtime_handler: String::new(),
                })
                .await;
        });
        let child = eventually(Duration::from_secs(30), "the plugin's ADD", || async {
            children().get(round).copied()
        })
        .await;
        let held = daemon_fds(child, d.dir.path());
        assert!(held.is_empty(), "round {round}: the child holds {held:?}");
        d.kill9();
        assert!(
            std::path::Path::new(&format!("/proc/{child}")).exists(),
            "round {round}: the child outlives berthd"
        );
    }
    d.spawn();
    let mut rt = d.runtime().await;
    rt.version(VersionRequest::default())
        .await
        .expect("serving");
    for pid in children() {
        berth_tests::signal(pid, libc::SIGKILL);
    }
    // Every half-made pod was undone at the next start.
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    drop(d);
    berth_tests::node::remove_cgroups(&parent);
}

/// A GET of `path` on `addr`, HTTP/1.1: the whole answer.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    answer
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_and_shows_every_actor() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::configure(&format!("[metrics]\naddress = \"{addr}\"\n"));
    d.spawn();
    let mut rt = d.runtime().await;
    for _ in 0..3 {
        rt.version(VersionRequest::default())
            .await
            .expect("Version");
    }
    let err = rt
        .container_status(ContainerStatusRequest {
            container_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), Code::NotFound);

    let answer = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
        .await
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let value = |line_start: &str| -> Option<f64> {
        answer
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value("berth_cri_calls_total{rpc=\"Version\",code=\"Ok\"}"),
        Some(3.0),
        "{answer}"
    );
    assert_eq!(
        value("berth_cri_calls_total{rpc=\"ContainerStatus\",code=\"NotFound\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("berth_cri_call_seconds_count{rpc=\"Version\"}"),
        Some(3.0)
    );
    for actor in ["image", "sandbox", "container", "network", "shim"] {
        assert_eq!(
            value(&format!("berth_actor_up{{actor=\"{actor}\"}}")),
            Some(1.0),
            "{actor}"
        );
    }
    // berthd journals its boot, and pins its sandbox image at start.
    assert!(value("berth_journal_writes_total").is_some_and(|v| v >= 1.0));
    assert!(value("berth_journal_flush_seconds_count").is_some_and(|v| v >= 1.0));
    assert_eq!(value("berth_shims_alive"), Some(0.0));
    assert_eq!(value("berth_stream_sessions"), Some(0.0));
    assert!(answer.trim_end().ends_with("# EOF"), "{answer}");
    let port = port.to_string();
    let other = tokio::task::spawn_blocking(move || http_get(&format!("127.0.0.1:{port}"), "/"))
        .await
        .expect("join");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}
