//! The SandboxActor's orchestration with fakes in place of the network,
//! shim and image actors: no runc, CNI or shim runs. What each failure
//! undoes, in which order, and what a restart finds.

use super::messages::*;
use super::{SandboxConfig, SandboxDeps, Sandboxes};
use crate::image::messages::{EnsureSandboxImage, SandboxImage};
use crate::journal::{Journal, MemoryJournal};
use crate::kernel::{Fakes, Handle, Kernel, Link};
use crate::network::messages::{AttachPod, CreateNetns, DetachPod, RemovePodNetwork};
use crate::shim::exits::ExitsOf;
use crate::shim::messages::{CreateTask, DeleteTask, StartTask, StopTask};
use crate::Error;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Where a fake fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    None,
    Image,
    Netns,
    CreateTask,
    StartTask,
    Attach,
}

/// Fakes that answer as the real actors do when all goes well, but fail
/// at `step`.
fn fakes(step: Step) -> Arc<Fakes> {
    let f = Fakes::new();
    let fail = move |at: Step, what: &str| -> crate::Result<()> {
        if step == at {
            Err(Error::Internal(format!("{what} failed")))
        } else {
            Ok(())
        }
    };
    f.on(move |_: EnsureSandboxImage| {
        fail(Step::Image, "image")?;
        Ok(SandboxImage {
            id: "sha256:pause".into(),
            rootfs: "/nonexistent/pause-rootfs".into(),
        })
    });
    f.on(move |m: CreateNetns| {
        fail(Step::Netns, "netns")?;
        Ok(format!("/run/netns/{}", m.sandbox_id))
    });
    f.on(move |_: CreateTask| {
        fail(Step::CreateTask, "create")?;
        Ok(0u32)
    });
    f.on(move |_: StartTask| {
        fail(Step::StartTask, "start")?;
        Ok(4242u32)
    });
    f.on(move |_: AttachPod| {
        fail(Step::Attach, "CNI ADD")?;
        Ok(vec!["10.0.0.2".to_string()])
    });
    f.on(|_: DeleteTask| Ok(()));
    f.on(|_: StopTask| Ok(None::<crate::shim::messages::Exit>));
    f.on(|_: RemovePodNetwork| Ok(()));
    f.on(|_: DetachPod| Ok(()));
    f.on(|_: ExitsOf| Ok(BTreeMap::<String, crate::shim::messages::TaskExited>::new()));
    f
}

struct Rig {
    _dir: tempfile::TempDir,
    journal: Arc<dyn Journal>,
    state: std::path::PathBuf,
    sandbox: Handle<Sandboxes>,
    kernel: Kernel,
}

async fn rig(fakes: &Arc<Fakes>, journal: Arc<dyn Journal>) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let deps = SandboxDeps {
        network: Link::fake(fakes),
        shim: Link::fake(fakes),
        image: Link::fake(fakes),
        config: SandboxConfig {
            state: state.clone(),
            pause_binary: dir.path().join("berth-pause"),
            cgroup_parent: "/berth-unit".into(),
            runtime_handlers: Default::default(),
            unusable_handlers: Default::default(),
            user_namespaces: Default::default(),
        },
        events: Default::default(),
    };
    let (kernel, sandbox) = Kernel::start(journal.clone(), Duration::from_secs(10), move |s| {
        s.spawn::<Sandboxes>(deps)
    })
    .await
    .expect("kernel");
    Rig {
        _dir: dir,
        journal,
        state,
        sandbox,
        kernel,
    }
}

/// A pod on its own network namespace, on the host's IPC (so that making
/// its files mounts nothing).
fn pod(name: &str) -> PodConfig {
    PodConfig {
        metadata: PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "unit".into(),
            attempt: 0,
        },
        hostname: "unit-host".into(),
        security: PodSecurity {
            namespaces: NamespaceOptions {
                network: NamespaceMode::Pod,
                pid: NamespaceMode::Container,
                ipc: NamespaceMode::Node,
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn run(name: &str) -> RunPodSandbox {
    RunPodSandbox {
        config: pod(name),
        runtime_handler: String::new(),
    }
}

async fn listed(sandbox: &Handle<Sandboxes>) -> Vec<String> {
    sandbox
        .call(ListPodSandbox::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn pod_dirs(state: &std::path::Path) -> usize {
    std::fs::read_dir(state.join("sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[actix::test]
async fn run_pod_sandbox_rolls_back_what_each_failed_step_left() {
    // (where it fails, the undo it must run: task, network)
    let cases = [
        (Step::Image, false, false),
        (Step::Netns, false, true),
        (Step::CreateTask, true, true),
        (Step::StartTask, true, true),
        (Step::Attach, true, true),
    ];
    for (step, task_undone, network_undone) in cases {
        let fakes = fakes(step);
        let r = rig(&fakes, Arc::new(MemoryJournal::new())).await;
        let err = r.sandbox.call(run("web")).await.expect_err("fails");
        assert!(matches!(err, Error::Internal(_)), "{step:?}: {err}");
        let log = fakes.log();
        assert_eq!(
            fakes.asked("DeleteTask") > 0,
            task_undone,
            "{step:?}: {log:?}"
        );
        assert_eq!(
            fakes.asked("RemovePodNetwork") > 0,
            network_undone,
            "{step:?}: {log:?}"
        );
        if task_undone && network_undone {
            assert!(
                fakes.before("DeleteTask", "RemovePodNetwork"),
                "the task goes before the network: {log:?}"
            );
        }
        assert!(listed(&r.sandbox).await.is_empty(), "{step:?}: no pod left");
        assert_eq!(pod_dirs(&r.state), 0, "{step:?}: no pod files left");
        r.kernel.shutdown().expect("shutdown");
    }
}

#[actix::test]
async fn a_failed_pod_leaves_its_name_free_for_the_retry() {
    let fakes = fakes(Step::Attach);
    let r = rig(&fakes, Arc::new(MemoryJournal::new())).await;
    r.sandbox.call(run("web")).await.expect_err("CNI ADD fails");
    // The same fakes, now answering well.
    fakes.on(|_: AttachPod| Ok(vec!["10.0.0.3".to_string()]));
    let id = r.sandbox.call(run("web")).await.expect("the retry");
    let status = r
        .sandbox
        .call(PodSandboxStatus { id: id.clone() })
        .await
        .expect("status");
    assert_eq!(status.ips, vec!["10.0.0.3".to_string()]);
    assert_eq!(status.pid, 4242);
    let err = r.sandbox.call(run("web")).await.expect_err("taken");
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn stop_kills_the_pause_and_detaches_and_remove_forgets_the_pod() {
    let fakes = fakes(Step::None);
    let r = rig(&fakes, Arc::new(MemoryJournal::new())).await;
    let id = r.sandbox.call(run("web")).await.expect("run");
    let before = fakes.log().len();
    r.sandbox
        .call(StopPodSandbox { id: id.clone() })
        .await
        .expect("stop");
    let stop: Vec<String> = fakes.log()[before..].to_vec();
    assert!(stop.contains(&"StopTask".to_string()), "{stop:?}");
    assert!(stop.contains(&"DetachPod".to_string()), "{stop:?}");
    assert!(!stop.contains(&"DeleteTask".to_string()), "{stop:?}");
    let status = r
        .sandbox
        .call(PodSandboxStatus { id: id.clone() })
        .await
        .expect("status");
    assert_eq!(status.state, super::store::SandboxState::NotReady);

    r.sandbox
        .call(RemovePodSandbox { id: id.clone() })
        .await
        .expect("remove");
    assert!(fakes.log().contains(&"DeleteTask".to_string()));
    assert!(listed(&r.sandbox).await.is_empty());
    assert_eq!(pod_dirs(&r.state), 0);
    // Idempotent, as kubelet expects.
    r.sandbox
        .call(StopPodSandbox { id: id.clone() })
        .await
        .expect("stop again");
    r.sandbox
        .call(RemovePodSandbox { id })
        .await
        .expect("remove again");
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn recovery_undoes_cut_short_pods_and_finds_exited_pauses() {
    use super::recover::RecoverSandboxes;
    use super::store::{SandboxRecord, SandboxState};
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let before = fakes(Step::None);
    let r = rig(&before, journal.clone()).await;
    let live = r.sandbox.call(run("live")).await.expect("run");
    let dead = r.sandbox.call(run("dead")).await.expect("run");
    r.kernel.shutdown().expect("shutdown");
    // A pod whose making a crash cut short: its intent is on record.
    let mut table = crate::journal::Table::<SandboxRecord>::open(&journal, "sandbox").expect("t");
    table
        .put(SandboxRecord {
            id: "cut".into(),
            name: "cut_unit_uid-cut_0".into(),
            created_unix_nanos: 1,
            config: pod("cut"),
            runtime_handler: String::new(),
            state: SandboxState::Creating,
            netns_path: String::new(),
            ips: Vec::new(),
            pid: 0,
            cgroups_path: "/berth-unit/cut".into(),
        })
        .expect("put");

    let after = fakes(Step::None);
    let exited = dead.clone();
    after.on(crate::shim::exits::exited_only(exited, 137, 5));
    let r = rig(&after, journal).await;
    let report = r.sandbox.call(RecoverSandboxes).await.expect("recover");
    let fixed = report.fixed.join("\n");
    assert!(fixed.contains("half-made, undone"), "{fixed}");
    assert!(fixed.contains("NOTREADY"), "{fixed}");
    for undo in ["DeleteTask", "RemovePodNetwork"] {
        assert!(after.asked(undo) > 0, "{undo}: {:?}", after.log());
    }
    let mut ids = listed(&r.sandbox).await;
    ids.sort();
    let mut want = vec![live.clone(), dead.clone()];
    want.sort();
    assert_eq!(ids, want, "the cut-short pod is gone");
    let state = |id: String| {
        let sandbox = r.sandbox.clone();
        async move {
            sandbox
                .call(PodSandboxStatus { id })
                .await
                .expect("status")
                .state
        }
    };
    assert_eq!(state(live).await, SandboxState::Ready);
    assert_eq!(state(dead).await, SandboxState::NotReady);
    r.kernel.shutdown().expect("shutdown");
}

#[actix::test]
async fn an_exit_during_the_making_of_a_pod_is_kept_for_it() {
    use crate::shim::messages::TaskExited;
    let fakes = fakes(Step::None);
    // The CNI ADD waits until the test lets it go.
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = gate.clone();
    fakes.on_async(move |_: AttachPod| {
        let held = held.clone();
        Box::pin(async move {
            held.notified().await;
            Ok(vec!["10.0.0.2".to_string()])
        })
    });
    let r = rig(&fakes, Arc::new(MemoryJournal::new())).await;
    let making = tokio::spawn({
        let sandbox = r.sandbox.clone();
        async move { sandbox.call(run("web")).await }
    });
    // The pause container dies while the pod is still being made.
    for _ in 0..400 {
        if fakes.log().contains(&"AttachPod".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        fakes.log().contains(&"AttachPod".to_string()),
        "the CNI ADD was reached"
    );
    // The pod's intent is on record while it is made.
    let pod_id = crate::journal::Table::<super::store::SandboxRecord>::open(&r.journal, "sandbox")
        .expect("table")
        .iter()
        .next()
        .map(|r| r.id.clone())
        .expect("the pod's intent is on record");
    r.sandbox
        .call(TaskExited {
            id: pod_id.clone(),
            status: 1,
            exited_at_unix_nanos: 0,
            note: None,
        })
        .await
        .expect("exit");
    gate.notify_one();
    let made = making.await.expect("task").expect("made");
    assert_eq!(made, pod_id);
    let status = r
        .sandbox
        .call(PodSandboxStatus { id: made })
        .await
        .expect("status");
    assert_eq!(
        status.state,
        super::store::SandboxState::NotReady,
        "the exit that came while it was made was not lost"
    );
    // Exits of tasks that are no pod's are no news.
    r.sandbox
        .call(TaskExited {
            id: "not-a-pod".into(),
            status: 0,
            exited_at_unix_nanos: 0,
            note: None,
        })
        .await
        .expect("ignored");
    r.kernel.shutdown().expect("shutdown");
}
