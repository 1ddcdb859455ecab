//! Faults injected from outside berth: CNI plugins and an OCI runtime
//! that hang, crash or print garbage, a disk that fills up during a pull
//! or under the journal, and a wall clock that jumps. Each must end in a
//! clear error, with nothing left behind and berthd still serving.

use berth_protocol::cri::*;
use berth_tests::image::{Compression, ImageBuilder, LayerBuilder};
use berth_tests::node::{pod_config, run_pod, Node};
use berth_tests::registry::Registry;
use berth_tests::{processes_with, script, Daemon};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// Adds keys to the `[cni]` table of berthd's configuration.
fn cni_keys(d: &Daemon, keys: &str) {
    let text = std::fs::read_to_string(&d.config).expect("config");
    std::fs::write(
        &d.config,
        text.replacen("[cni]\n", &format!("[cni]\n{keys}\n"), 1),
    )
    .expect("config");
}

/// What berthd keeps under its state directory for pods.
fn state_left(d: &Daemon) -> Vec<String> {
    let state = d.dir.path().join("run");
    let mut left = Vec::new();
    for dir in ["netns", "shims", "sandboxes"] {
        for e in std::fs::read_dir(state.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    left
}

#[tokio::test]
async fn cni_plugins_that_hang_crash_or_print_garbage_fail_the_pod_cleanly() {
    let n = Node::new("fc", "");
    let bin = n.d.dir.path().join("fake-cni");
    std::fs::create_dir_all(&bin).expect("bin dir");
    // Each reads its config (as plugins do) and misbehaves.
    let marker = format!("berth-fake-cni-{}", std::process::id());
    script(
        &bin.join("hang"),
        &format!("cat >/dev/null; exec sleep 600 # {marker}"),
    );
    script(&bin.join("crash"), "cat >/dev/null; kill -SEGV $$");
    script(
        &bin.join("garbage"),
        "cat >/dev/null; printf '}{ not json \\001\\002'",
    );
    script(
        &bin.join("liar"),
        "cat >/dev/null; printf '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"999.1.1.1/99\"}]}'",
    );
    cni_keys(
        &n.d,
        &format!(
            "bin_dirs = [\"{}\", \"/usr/lib/cni\"]\nplugin_timeout_secs = 2",
            bin.display()
        ),
    );
    let working =
        std::fs::read_to_string(n.d.cni_dir().join("10-node.conflist")).expect("conflist");
    let mut d = n;
    d.d.spawn();
    let mut rt = d.d.runtime().await;
    for plugin in ["hang", "crash", "garbage", "liar"] {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "node",
            "plugins": [{"type": plugin}]
        });
        std::fs::write(d.d.cni_dir().join("10-node.conflist"), conf.to_string()).expect("conflist");
        let start = Instant::now();
        let err = run_pod(&mut rt, pod_config(&format!("fault-{plugin}"), &d.logs()))
            .await
            .expect_err(plugin);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{plugin}: took {:?}",
            start.elapsed()
        );
        assert!(
            matches!(
                err.code(),
                Code::FailedPrecondition | Code::DeadlineExceeded | Code::Unavailable
            ),
            "{plugin}: {err:?}"
        );
        assert!(
            err.message().contains(plugin),
            "{plugin}: the error names the plugin: {err:?}"
        );
        let pods = berth_tests::node::list_pods(&mut rt).await;
        assert!(pods.is_empty(), "{plugin}: {pods:?}");
        assert!(
            state_left(&d.d).is_empty(),
            "{plugin}: {:?}",
            state_left(&d.d)
        );
    }
    assert_eq!(processes_with(&marker), 0, "the hanging plugin was ended");
    // berthd still serves, and a pod runs once the network is good.
    d.d.images().await;
    std::fs::write(d.d.cni_dir().join("10-node.conflist"), working).expect("conflist");
    let id = run_pod(&mut rt, pod_config("fault-good", &d.logs()))
        .await
        .expect("a pod on a working network");
    berth_tests::node::remove_pod(&mut rt, &id)
        .await
        .expect("remove");
    d.assert_consistent();
}

/// A pod under runtime handler `handler`, a script doing `body` (with
/// `keys` in its table): its error, once it came within 30 s with a
/// clear code.
async fn pod_under_fake_runtime(
    n: &mut Node,
    handler: &str,
    body: &str,
    keys: &str,
) -> tonic::Status {
    let fake = n.d.dir.path().join(format!("fake-{handler}"));
    script(&fake, body);
    let text = std::fs::read_to_string(&n.d.config).expect("config");
    std::fs::write(
        &n.d.config,
        format!(
            "{text}\n[runtimes.{handler}]\nbinary = \"{}\"\n{keys}",
            fake.display()
        ),
    )
    .expect("config");
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let start = Instant::now();
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(&format!("fault-{handler}"), &n.logs())),
            runtime_handler: handler.into(),
        })
        .await
        .expect_err("a faulty runtime");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(
        !matches!(err.code(), Code::Ok | Code::Unknown),
        "a clear code: {err:?}"
    );
    err
}

/// Nothing of the failed pod is left, and runc still runs a pod.
async fn nothing_left_and_runc_still_works(n: &Node) {
    let mut rt = n.d.runtime().await;
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(state_left(&n.d).is_empty(), "{:?}", state_left(&n.d));
    let id = run_pod(&mut rt, pod_config("fault-after", &n.logs()))
        .await
        .expect("a pod under runc");
    berth_tests::node::remove_pod(&mut rt, &id)
        .await
        .expect("remove");
    n.assert_consistent();
}

#[tokio::test]
async fn a_runtime_that_fails_with_garbage_fails_the_pod_cleanly() {
    let mut n = Node::new("fr", "");
    let body = "printf '\\377\\376 not json {{{{ \\n' >&2; printf 'garbage'; exit 3";
    let err = pod_under_fake_runtime(&mut n, "broken", body, "").await;
    assert!(
        err.message().contains("runc") || err.message().contains("runtime"),
        "{err:?}"
    );
    nothing_left_and_runc_still_works(&n).await;
}

#[tokio::test]
async fn a_runtime_that_hangs_is_killed_at_its_timeout_and_the_pod_fails_cleanly() {
    let mut n = Node::new("fh", "");
    // It answers nothing, holds its output open through a child, and
    // never ends; only `features` (asked at start-up) gets a quick no.
    let body = "case \"$*\" in *features*) exit 1;; esac\nsleep 98765";
    let err = pod_under_fake_runtime(&mut n, "hangs", body, "timeout_secs = 2\n").await;
    assert!(err.message().contains("did not finish in 2s"), "{err:?}");
    // Killed with everything it started.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with("sleep\u{0}98765") > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes_with("sleep\u{0}98765"), 0);
    nothing_left_and_runc_still_works(&n).await;
}

/// Mounts a tmpfs of `mib` MiB on `dir`; unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_during_a_pull_fails_it_cleanly_and_berthd_goes_on() {
    let reg = Registry::start();
    let big = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 48 << 20, 3)
                .build(Compression::Gzip),
        )
        .build();
    reg.push_image("big", Some("v1"), &big);
    let small = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("marker", "x", 0o644)
                .build(Compression::Gzip),
        )
        .build();
    reg.push_image("small", Some("v1"), &small);
    let mut d = Daemon::configure(&format!(
        "[registries.\"{}\"]\ninsecure = true\n",
        reg.host()
    ));
    // berth's root (journal, content, snapshots) on a 40 MiB disk.
    let disk = SmallDisk::mount(&d.root(), 40);
    d.spawn();
    let free = || {
        let s = nix::sys::statvfs::statvfs(&d.root()).expect("statvfs");
        s.blocks_available() * s.fragment_size()
    };
    // berth's own sandbox image is there from the start.
    let free_before = free();
    let mut images = d.images().await;
    let err = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reg.image_ref("big", "v1"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("48 MiB do not fit on 40");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("No space left"), "{err:?}");
    // Nothing of it stays to fill the disk for the next pull.
    let after = free();
    assert!(
        after + (1 << 20) >= free_before,
        "{} bytes free before the pull, {after} after",
        free_before
    );
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reg.image_ref("small", "v1"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a small image still fits");
    let listed = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(
        listed
            .iter()
            .all(|i| !i.repo_tags.iter().any(|t| t.contains("big"))),
        "{listed:?}"
    );
    drop(images);
    d.terminate(Duration::from_secs(10));
    drop(disk);
}

/// Fills the file system holding `dir` with a file in it, to the last
/// block; returns the file.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0xa5u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let mut byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {
        byte[0] ^= 1;
    }
    let _ = f.sync_all();
    path
}

#[tokio::test]
async fn a_journal_on_a_full_disk_takes_pods_down_but_makes_none_and_recovers_with_space() {
    let mut n = Node::new("fj", "");
    let disk = SmallDisk::mount(&n.d.root(), 64);
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let config = |name: &str| pod_config(name, &n.logs());
    let first = run_pod(&mut rt, config("full-first"))
        .await
        .expect("a pod before the disk fills");
    let second = run_pod(&mut rt, config("full-second"))
        .await
        .expect("a pod before the disk fills");
    let filler = fill(&n.d.root());

    // Nothing new is made: refused before anything of it exists.
    let err = run_pod(&mut rt, config("full-refused"))
        .await
        .expect_err("no pod on a full disk");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("no space left"), "{err:?}");
    let names = |pods: &[PodSandbox]| -> Vec<String> {
        pods.iter()
            .filter_map(|p| p.metadata.as_ref().map(|m| m.name.clone()))
            .collect()
    };
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert_eq!(names(&pods).len(), 2, "{pods:?}");

    // What frees a disk still works: kubelet's eviction stops and removes
    // pods (the journal's reserve, given back, holds their records).
    berth_tests::node::remove_pod(&mut rt, &first)
        .await
        .expect("a pod removed on a full disk");

    // Space returns: new pods are made again, and nothing was lost or
    // leaked on the way.
    std::fs::remove_file(&filler).expect("free the disk");
    berth_tests::node::remove_pod(&mut rt, &second)
        .await
        .expect("remove");
    let third = run_pod(&mut rt, config("full-third"))
        .await
        .expect("a pod once the disk has room");
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert_eq!(names(&pods), ["full-third"], "{pods:?}");
    berth_tests::node::remove_pod(&mut rt, &third)
        .await
        .expect("remove");
    n.assert_consistent();
    assert!(
        n.d.root().join("journal.reserve").exists(),
        "the reserve taken back"
    );
    n.d.terminate(Duration::from_secs(10));
    drop(disk);
}

/// libfaketime, which moves the wall clock of the programs it is loaded
/// into (Debian's libfaketime package).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Unix time now, in seconds, by the test's own (true) clock.
fn true_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn wall_clock_jumps_change_no_timeout_and_lose_nothing() {
    assert!(Path::new(FAKETIME).exists(), "{FAKETIME} (libfaketime)");
    let mut n = Node::new("fc", "");
    // berthd's wall clock (CLOCK_REALTIME) follows the offset in `clock`,
    // read anew at every call; its monotonic clock is the machine's.
    let clock = n.d.dir.path().join("clock");
    let jump = |offset: &str| std::fs::write(&clock, offset).expect("clock");
    jump("+0");
    n.d.env = vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            clock.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let stubborn = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"];
    let pod = run_pod(&mut rt, pod_config("clock-a", &n.logs()))
        .await
        .expect("pod");
    let ctr = berth_tests::node::create_container(
        &mut rt,
        &pod,
        berth_tests::node::container_config("stubborn", &n.image, &stubborn),
    )
    .await
    .expect("create");
    berth_tests::node::start_container(&mut rt, &ctr)
        .await
        .expect("start");

    for (offset, seconds) in [("-1d", -86_400), ("+365d", 365 * 86_400)] {
        jump(offset);
        // The jump took: a new pod is stamped by the moved clock.
        let name = format!("clock{seconds}");
        let other = run_pod(&mut rt, pod_config(&name, &n.logs()))
            .await
            .expect("a pod after the jump");
        let stamped = berth_tests::node::pod_status(&mut rt, &other)
            .await
            .expect("status")
            .created_at
            / 1_000_000_000;
        assert!(
            (stamped - (true_now() + seconds)).abs() < 120,
            "created at {stamped}, the true time is {}",
            true_now()
        );
        // Timeouts are kept by the monotonic clock: neither cut short nor
        // stretched by the jump.
        let start = Instant::now();
        let err = rt
            .exec_sync(ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["sleep".into(), "20".into()],
                timeout: 1,
            })
            .await
            .expect_err("a timeout");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "{took:?}"
        );
        let out = rt
            .exec_sync(ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["echo".into(), "on time".into()],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        assert_eq!(out.stdout, b"on time\n");
        berth_tests::node::remove_pod(&mut rt, &other)
            .await
            .expect("remove");
    }

    // A stop's grace period is kept too: the container ignores SIGTERM and
    // is killed after 2 s, not at once and not after a year.
    let start = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // berthd restarts with the clock set back a year: what it kept is
    // all there, and goes cleanly.
    n.d.terminate(Duration::from_secs(10));
    jump("+0");
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let s = berth_tests::node::container_status(&mut rt, &ctr)
        .await
        .expect("status");
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    berth_tests::node::remove_pod(&mut rt, &pod)
        .await
        .expect("remove");
    n.assert_consistent();
    assert!(!n.d.log().contains("panicked"), "{}", n.d.log());
}
