//! The ContainerActor's orchestration with fakes in place of the sandbox,
//! image and shim actors: no runc, image or shim is needed. What each
//! failure undoes, how exits land, and what recovery decides.

use super::checkpoint::archive;
use super::checkpoint::criu::{Criu, CriuProbe};
use super::messages::*;
use super::store::{ContainerRecord, ContainerState};
use super::{ContainerDeps, Containers};
use crate::host::HostFacts;
use crate::image::messages::{ImageInfo, ImageStatus, PrepareRootfs, RemoveRootfs};
use crate::image::store::ImageRecord;
use crate::journal::{Journal, MemoryJournal};
use crate::kernel::{Fakes, Handle, Kernel, Link};
use crate::sandbox::messages::{PodConfig, PodSandboxStatus};
use crate::sandbox::store::{SandboxRecord, SandboxState};
use crate::shim::exits::ExitsOf;
use crate::shim::messages::{
    CheckpointTask, CreateTask, DeleteTask, Exit, StartTask, StopTask, TaskExited, TaskInfo,
    TaskState,
};
use crate::Error;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const POD: &str = "pod1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    None,
    Pod,
    Image,
    Rootfs,
    CreateTask,
}

/// The image "sha256:app", under the name it was asked by.
fn app_image(name: String) -> ImageInfo {
    ImageInfo {
        record: ImageRecord {
            id: "sha256:app".into(),
            repo_tags: vec![name],
            repo_digests: Vec::new(),
            size: 1,
            blobs: Vec::new(),
            chain_ids: Vec::new(),
            user: String::new(),
            pinned: false,
            created_unix_nanos: 1,
        },
        uid: None,
        username: String::new(),
        config: Some(serde_json::json!({"config": {"Cmd": ["sh"]}})),
    }
}

/// Fakes that answer as the real actors do, but fail at `step`.
fn fakes(step: Step, dir: &std::path::Path) -> Arc<Fakes> {
    let f = Fakes::new();
    let fail = move |at: Step, what: &str| -> crate::Result<()> {
        if step == at {
            Err(Error::Internal(format!("{what} failed")))
        } else {
            Ok(())
        }
    };
    let logs = dir.join("logs");
    f.on(move |_: PodSandboxStatus| {
        fail(Step::Pod, "pod status")?;
        Ok(SandboxRecord {
            id: POD.into(),
            name: "web_unit_uid_0".into(),
            created_unix_nanos: 1,
            config: PodConfig {
                log_directory: logs.display().to_string(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            netns_path: "/run/netns/pod1".into(),
            ips: vec!["10.0.0.2".into()],
            pid: 4000,
            cgroups_path: "/berth-unit/pod1".into(),
        })
    });
    f.on(move |m: ImageStatus| {
        fail(Step::Image, "image status")?;
        Ok(Some(app_image(m.image)))
    });
    let rootfs = dir.join("rootfs");
    f.on(move |_: PrepareRootfs| {
        fail(Step::Rootfs, "rootfs")?;
        Ok(rootfs.clone())
    });
    f.on(move |_: CreateTask| {
        fail(Step::CreateTask, "create")?;
        Ok(0u32)
    });
    f.on(|_: StartTask| Ok(5000u32));
    f.on(|_: StopTask| {
        Ok(Some(Exit {
            status: 143,
            exited_unix_nanos: 7,
        }))
    });
    f.on(|_: DeleteTask| Ok(()));
    f.on(|_: RemoveRootfs| Ok(()));
    f.on(|_: ExitsOf| Ok(BTreeMap::<String, TaskExited>::new()));
    f.on(|_: TaskState| {
        Ok(TaskInfo {
            pid: 0,
            running: false,
            exit: None,
        })
    });
    f
}

struct Rig {
    dir: tempfile::TempDir,
    journal: Arc<dyn Journal>,
    containers: Handle<Containers>,
    kernel: Kernel,
}

/// CRIU as the fake says: usable, or not with this reason.
struct FakeCriu(std::result::Result<(), String>);

impl Criu for FakeCriu {
    fn check(&self) -> std::result::Result<(), String> {
        self.0.clone()
    }
}

async fn rig(step: Step, journal: Arc<dyn Journal>) -> (Rig, Arc<Fakes>) {
    rig_with(step, journal, Ok(())).await
}

async fn rig_with(
    step: Step,
    journal: Arc<dyn Journal>,
    criu: std::result::Result<(), String>,
) -> (Rig, Arc<Fakes>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = fakes(step, dir.path());
    let state = dir.path().join("state");
    // The pod's shared files, as the sandbox actor made them.
    let pod_files = state.join("sandboxes").join(POD);
    std::fs::create_dir_all(&pod_files).expect("pod files");
    std::fs::write(pod_files.join("hostname"), "web\n").expect("hostname");
    std::fs::create_dir_all(dir.path().join("rootfs")).expect("rootfs");
    let deps = ContainerDeps {
        sandbox: Link::fake(&fakes),
        image: Link::fake(&fakes),
        shim: Link::fake(&fakes),
        state,
        default_log_dir: dir.path().join("pods"),
        rootfs_dir: dir.path().join("rootfs-dir"),
        host: Arc::new(HostFacts::default()),
        events: Default::default(),
        criu: Arc::new(CriuProbe::new(Box::new(FakeCriu(criu)))),
    };
    let (kernel, containers) = Kernel::start(journal.clone(), Duration::from_secs(10), move |s| {
        s.spawn::<Containers>(deps)
    })
    .await
    .expect("kernel");
    (
        Rig {
            dir,
            journal,
            containers,
            kernel,
        },
        fakes,
    )
}

fn create(name: &str) -> CreateContainer {
    CreateContainer {
        pod_sandbox_id: POD.into(),
        config: ContainerConfig {
            name: name.into(),
            image: "app:1".into(),
            command: vec!["sleep".into(), "60".into()],
            log_path: format!("{name}/0.log"),
            ..Default::default()
        },
    }
}

async fn listed(c: &Handle<Containers>) -> Vec<ContainerRecord> {
    c.call(ListContainers::default()).await.expect("list")
}

#[actix::test]
async fn create_container_rolls_back_what_each_failed_step_left() {
    // (where it fails, whether the task and the rootfs must be undone)
    for (step, task, rootfs) in [
        (Step::Pod, false, false),
        (Step::Image, false, false),
        (Step::Rootfs, false, true),
        (Step::CreateTask, true, true),
    ] {
        let (r, fakes) = rig(step, Arc::new(MemoryJournal::new())).await;
        let err = r.containers.call(create("app")).await.expect_err("fails");
        assert!(matches!(err, Error::Internal(_)), "{step:?}: {err}");
        let log = fakes.log();
        assert_eq!(fakes.asked("DeleteTask") > 0, task, "{step:?}: {log:?}");
        assert_eq!(fakes.asked("RemoveRootfs") > 0, rootfs, "{step:?}: {log:?}");
        if task {
            assert!(
                fakes.before("DeleteTask", "RemoveRootfs"),
                "the task goes before its rootfs: {log:?}"
            );
        }
        assert!(listed(&r.containers).await.is_empty(), "{step:?}");
        r.kernel.shutdown().expect("shutdown");
    }
    // And the name is free again after a failure.
    let (r, fakes) = rig(Step::CreateTask, Arc::new(MemoryJournal::new())).await;
    r.containers.call(create("app")).await.expect_err("fails");
    fakes.on(|_: CreateTask| Ok(0u32));
    r.containers.call(create("app")).await.expect("the retry");
    let err = r.containers.call(create("app")).await.expect_err("taken");
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn exits_land_with_code_time_and_note_and_one_during_a_start_is_kept() {
    let (r, fakes) = rig(Step::None, Arc::new(MemoryJournal::new())).await;
    let c = &r.containers;
    let id = c.call(create("app")).await.expect("create");
    c.call(StartContainer { id: id.clone() })
        .await
        .expect("start");
    c.call(TaskExited {
        id: id.clone(),
        status: 255,
        exited_at_unix_nanos: 99,
        note: Some("the container's shim died".into()),
    })
    .await
    .expect("exit");
    let st = c
        .call(ContainerStatus { id: id.clone() })
        .await
        .expect("status");
    assert_eq!(st.state, ContainerState::Exited);
    assert_eq!((st.exit_code, st.finished_unix_nanos), (255, 99));
    assert_eq!(st.message, "the container's shim died");
    assert_eq!(st.reason, "Error");

    // An exit reported while the start is under way is kept for it.
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = gate.clone();
    fakes.on_async(move |_: StartTask| {
        let held = held.clone();
        Box::pin(async move {
            held.notified().await;
            Ok(5001u32)
        })
    });
    let second = c.call(create("second")).await.expect("create");
    let starting = tokio::spawn({
        let c = c.clone();
        let id = second.clone();
        async move { c.call(StartContainer { id }).await }
    });
    fakes.wait_asked("StartTask", 2).await;
    c.call(TaskExited {
        id: second.clone(),
        status: 0,
        exited_at_unix_nanos: 100,
        note: None,
    })
    .await
    .expect("exit");
    gate.notify_one();
    starting.await.expect("task").expect("started");
    let st = c
        .call(ContainerStatus { id: second })
        .await
        .expect("status");
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (ContainerState::Exited, 0, "Completed"),
        "the exit that came during the start was not lost"
    );
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn stop_records_how_it_ended_and_remove_takes_the_task_and_the_rootfs() {
    let (r, fakes) = rig(Step::None, Arc::new(MemoryJournal::new())).await;
    let c = &r.containers;
    let id = c.call(create("app")).await.expect("create");
    c.call(StartContainer { id: id.clone() })
        .await
        .expect("start");
    c.call(StopContainer {
        id: id.clone(),
        timeout: Duration::from_secs(1),
    })
    .await
    .expect("stop");
    let st = c
        .call(ContainerStatus { id: id.clone() })
        .await
        .expect("status");
    assert_eq!((st.state, st.exit_code), (ContainerState::Exited, 143));
    let before = fakes.log().len();
    c.call(RemoveContainer { id: id.clone() })
        .await
        .expect("remove");
    let removal = fakes.log()[before..].to_vec();
    assert!(removal.contains(&"DeleteTask".into()), "{removal:?}");
    assert!(removal.contains(&"RemoveRootfs".into()), "{removal:?}");
    assert!(listed(c).await.is_empty());
    // Unknown IDs are success, as kubelet retries them.
    c.call(StopContainer {
        id: id.clone(),
        timeout: Duration::ZERO,
    })
    .await
    .expect("stop again");
    c.call(RemoveContainer { id }).await.expect("remove again");
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn recovery_undoes_cut_short_containers_and_takes_exits_on_record() {
    use super::recover::RecoverContainers;
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let (r, _) = rig(Step::None, journal.clone()).await;
    let running = r.containers.call(create("running")).await.expect("create");
    let exited = r.containers.call(create("exited")).await.expect("create");
    // Started by a StartContainer the crash cut short: Created on record.
    let started = r.containers.call(create("started")).await.expect("create");
    let idle = r.containers.call(create("idle")).await.expect("create");
    for id in [&running, &exited] {
        r.containers
            .call(StartContainer { id: id.clone() })
            .await
            .expect("start");
    }
    r.kernel.shutdown().expect("shutdown");
    // One whose creation a crash cut short.
    let mut table =
        crate::journal::Table::<ContainerRecord>::open(&r.journal, "container").expect("table");
    let mut cut = table.get(&running).cloned().expect("record");
    cut.id = "cut".into();
    cut.name = "cut_pod1_0".into();
    cut.state = ContainerState::Creating;
    table.put(cut).expect("put");
    drop(r.dir);

    let (r, fakes) = rig(Step::None, journal).await;
    let dead = exited.clone();
    fakes.on(crate::shim::exits::exited_only(dead, 7, 42));
    let runs = started.clone();
    fakes.on(move |m: TaskState| {
        Ok(TaskInfo {
            pid: if m.id == runs { 6000 } else { 0 },
            running: m.id == runs,
            exit: None,
        })
    });
    let report = r.containers.call(RecoverContainers).await.expect("recover");
    let fixed = report.fixed.join("\n");
    assert!(fixed.contains("half-made, undone"), "{fixed}");
    assert!(fixed.contains("exited with 7, EXITED"), "{fixed}");
    assert!(fakes.asked("DeleteTask") > 0 && fakes.asked("RemoveRootfs") > 0);
    let ids: Vec<String> = listed(&r.containers)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(!ids.contains(&"cut".to_string()), "{ids:?}");
    let st = |id: String| {
        let c = r.containers.clone();
        async move { c.call(ContainerStatus { id }).await.expect("status") }
    };
    assert_eq!(st(running).await.state, ContainerState::Running);
    assert!(fixed.contains("RUNNING (pid 6000)"), "{fixed}");
    let s = st(started).await;
    assert_eq!((s.state, s.pid), (ContainerState::Running, 6000));
    assert_eq!(st(idle).await.state, ContainerState::Created);
    let e = st(exited).await;
    assert_eq!(
        (e.state, e.exit_code, e.finished_unix_nanos),
        (ContainerState::Exited, 7, 42)
    );
    r.kernel.shutdown().expect("shutdown");
}

/// A running container "app" with a writable layer that changed: a new
/// file, a deleted one (an overlay whiteout), an opaque directory; and a
/// bundle holding its spec. Answers its ID.
async fn running_with_changes(r: &Rig) -> String {
    let id = r.containers.call(create("app")).await.expect("create");
    r.containers
        .call(StartContainer { id: id.clone() })
        .await
        .expect("start");
    let upper = r.dir.path().join("rootfs-dir").join(&id).join("upper");
    std::fs::create_dir_all(upper.join("etc")).expect("mkdir");
    std::fs::write(upper.join("etc/new"), "written").expect("write");
    nix::sys::stat::mknod(
        &upper.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .expect("whiteout (needs root)");
    std::fs::create_dir_all(upper.join("cache")).expect("mkdir");
    xattr::set(
        upper.join("cache"),
        crate::image::unpack::OPAQUE_XATTR,
        b"y",
    )
    .expect("opaque");
    std::fs::write(upper.join("cache/fresh"), "f").expect("write");
    let bundle = crate::shim::bundle_dir(&r.dir.path().join("state"), &id);
    std::fs::create_dir_all(&bundle).expect("bundle");
    std::fs::write(bundle.join("config.json"), r#"{"ociVersion":"1.0.2"}"#).expect("spec");
    id
}

/// The names in a tar file, sorted.
fn tar_names(path: &std::path::Path) -> Vec<String> {
    let mut names = crate::image::unpack::tar_names(std::fs::File::open(path).expect("tar"));
    names.sort();
    names
}

#[actix::test]
async fn a_checkpoint_archive_holds_config_spec_rootfs_changes_and_crius_images() {
    let (r, fakes) = rig(Step::None, Arc::new(MemoryJournal::new())).await;
    let id = running_with_changes(&r).await;
    // The fake CRIU: what the runtime's checkpoint leaves in the images
    // directory.
    fakes.on(|m: CheckpointTask| {
        std::fs::write(m.images.join("inventory.img"), "fake criu")
            .map_err(|e| Error::Internal(e.to_string()))
    });
    let location = r.dir.path().join("checkpoints/app.tar");
    r.containers
        .call(CheckpointContainer {
            id: id[..12].to_string(),
            location: location.display().to_string(),
            timeout: 30,
        })
        .await
        .expect("checkpoint");
    // Read back as a restore reads it.
    let unpacked_dir = tempfile::tempdir().expect("tempdir");
    let read = archive::unpack(&location, unpacked_dir.path(), "image").expect("an archive");
    let config = &read.config;
    assert_eq!(
        (config.id.as_str(), config.name.as_str(), config.image()),
        (id.as_str(), "app", "sha256:app")
    );
    assert_eq!(config.rootfs_image_name, "app:1");
    assert!(config.checkpointed_time.ends_with('Z'), "{config:?}");
    let spec = std::fs::read(unpacked_dir.path().join(archive::SPEC_DUMP)).expect("spec.dump");
    assert_eq!(spec, br#"{"ociVersion":"1.0.2"}"#);
    let images = std::fs::read_to_string(read.images.join("inventory.img")).expect("images");
    assert_eq!(images, "fake criu");
    assert_eq!(read.diff.deleted, ["/etc/gone"]);
    let diff = tar_names(read.diff.tar.as_deref().expect("a diff"));
    assert_eq!(
        diff,
        [
            "cache",
            "cache/.wh..wh..opq",
            "cache/fresh",
            "etc",
            "etc/new"
        ],
        "a whiteout is a deletion, not a file"
    );
    // Nothing is left of the work: no scratch, no partial archive.
    let scratch = r.dir.path().join("state/checkpoints");
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert_eq!(
        std::fs::read_dir(location.parent().expect("dir"))
            .expect("dir")
            .count(),
        1
    );

    // Restore: a container created from the archive gets the checkpoint's
    // image, its root filesystem changes and CRIU's images.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let rootfs = r.dir.path().join("rootfs");
    fakes.on(move |m: ImageStatus| {
        s1.lock().expect("lock").push(format!("image {}", m.image));
        Ok(Some(app_image(m.image)))
    });
    fakes.on(move |m: PrepareRootfs| {
        let diff = m.diff.clone().unwrap_or_default();
        s2.lock().expect("lock").push(format!(
            "diff {:?} deleted {:?}",
            diff.tar.map(|t| tar_names(&t)),
            diff.deleted
        ));
        Ok(rootfs.clone())
    });
    fakes.on(move |m: CreateTask| {
        let images = m.checkpoint.expect("restored from images");
        s3.lock().expect("lock").push(format!(
            "criu images {}",
            std::fs::read_to_string(images.join("inventory.img")).expect("images")
        ));
        Ok(0u32)
    });
    let mut restore = create("restored");
    restore.config.image = location.display().to_string();
    let restored = r.containers.call(restore).await.expect("restore");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [
            "image sha256:app".to_string(),
            "diff Some([\"cache\", \"cache/.wh..wh..opq\", \"cache/fresh\", \"etc\", \"etc/new\"]) deleted [\"/etc/gone\"]".to_string(),
            "criu images fake criu".to_string(),
        ]
    );
    let status = r
        .containers
        .call(ContainerStatus { id: restored })
        .await
        .expect("status");
    assert_eq!(status.image_id, "sha256:app");
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0
    );
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn without_a_working_criu_checkpoint_and_restore_fail_first_and_make_nothing() {
    let reason = "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable";
    let (r, fakes) = rig_with(
        Step::None,
        Arc::new(MemoryJournal::new()),
        Err(reason.into()),
    )
    .await;
    let id = running_with_changes(&r).await;
    let location = r.dir.path().join("out.tar");
    let err = r
        .containers
        .call(CheckpointContainer {
            id,
            location: location.display().to_string(),
            timeout: 0,
        })
        .await
        .expect_err("no criu");
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains(reason)),
        "{err:?}"
    );
    assert_eq!(fakes.asked("CheckpointTask"), 0);
    assert!(!location.exists());
    // A restore is refused before its archive is even read.
    std::fs::write(&location, "not even a tar").expect("write");
    let before = fakes.asked("PrepareRootfs");
    let mut restore = create("restored");
    restore.config.image = location.display().to_string();
    let err = r.containers.call(restore).await.expect_err("no criu");
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains(reason) && m.contains("restor")),
        "{err:?}"
    );
    assert_eq!(fakes.asked("PrepareRootfs"), before);
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn bad_checkpoint_requests_and_archives_are_refused_by_field() {
    let (r, _fakes) = rig(Step::None, Arc::new(MemoryJournal::new())).await;
    let id = running_with_changes(&r).await;
    for (location, field) in [
        ("", "location"),
        ("relative.tar", "location"),
        ("/a/../b.tar", "location"),
    ] {
        let err = r
            .containers
            .call(CheckpointContainer {
                id: id.clone(),
                location: location.into(),
                timeout: 0,
            })
            .await
            .expect_err("bad location");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(field)),
            "{location:?}: {err:?}"
        );
    }
    let err = r
        .containers
        .call(CheckpointContainer {
            id: "nope".into(),
            location: "/tmp/x.tar".into(),
            timeout: 0,
        })
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    // A file that is not a checkpoint archive.
    let junk = r.dir.path().join("junk.tar");
    std::fs::write(&junk, "not a tar").expect("write");
    let mut restore = create("restored");
    restore.config.image = junk.display().to_string();
    let err = r.containers.call(restore).await.expect_err("junk");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.starts_with("image:") && m.contains("not a checkpoint archive")),
        "{err:?}"
    );
    r.kernel.shutdown().expect("shutdown");
}
