//! Runtime handlers beyond berth-shim: pods under containerd's runtime v2
//! shim (`containerd-shim-runc-v2`, Debian's containerd package), driven
//! through its task API, with berthd holding the containers' stdio.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_stream::client::{remote_command_spdy, CommandIo};
use berth_tests::eventually;
use berth_tests::node::{
    container_config, container_status, create_container, pod_config, remove_pod, sh,
    start_container, Node,
};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

const SHIM: &str = "containerd-shim-runc-v2";

/// The v2 shims serving this berthd's tasks: (pid, the `-id` they were
/// started for). They carry berthd's state directory as `-address`.
fn v2_shims(state: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with(SHIM))
            && args
                .windows(2)
                .any(|w| w[0] == "-address" && Path::new(&w[1]) == state);
        if !is_ours {
            continue;
        }
        if let Some(w) = args.windows(2).find(|w| w[0] == "-id") {
            found.push((pid, w[1].clone()));
        }
    }
    found
}

/// A pod under `handler`, which Status must announce (`from`: what sets
/// its runtime up).
async fn pod_under(rt: &mut Rt, n: &Node, handler: &str, from: &str) -> String {
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        status.runtime_handlers.iter().any(|h| h.name == handler),
        "{handler} is announced (is {from} installed?): {:?}",
        status.runtime_handlers
    );
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(pod_config(&format!("{handler}-pod"), &n.logs())),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox under {handler}: {e}"))
    .into_inner()
    .pod_sandbox_id
}

async fn exited(rt: &mut Rt, id: &str) -> ContainerStatus {
    eventually(Duration::from_secs(15), "the container to exit", || {
        let mut rt = rt.clone();
        let id = id.to_string();
        async move {
            let st = container_status(&mut rt, &id).await.ok()?;
            (st.state == ContainerState::ContainerExited as i32).then_some(st)
        }
    })
    .await
}

fn log_lines(n: &Node, name: &str) -> Vec<String> {
    std::fs::read_to_string(n.logs().join(name).join("0.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_pod_under_containerds_runc_v2_shim_logs_execs_attaches_and_survives_a_kill() {
    let mut n = Node::running("v2", "").await;
    let state = n.d.dir.path().join("run");
    let mut rt = n.d.runtime().await;
    let pod = pod_under(&mut rt, &n, "runc-v2", "the containerd package").await;
    let starter = rt.clone();
    let start = |name: &str, edit: &dyn Fn(&mut ContainerConfig)| {
        let mut c = container_config(name, &n.image, &["sleep", "3600"]);
        edit(&mut c);
        let (mut rt, pod) = (starter.clone(), pod.clone());
        async move {
            let id = create_container(&mut rt, &pod, c).await.expect("create");
            start_container(&mut rt, &id).await.expect("start");
            id
        }
    };
    let ticker = start("ticker", &|c| {
        c.command = ["sh", "-c", "trap 'echo term; exit 0' TERM; echo err >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
            .map(String::from)
            .to_vec();
    })
    .await;
    let short = start("short", &|c| {
        c.command = ["sh", "-c", "echo bye; sleep 2; exit 7"]
            .map(String::from)
            .to_vec();
    })
    .await;
    let shell = start("shell", &|c| {
        c.command = vec!["sh".into()];
        c.stdin = true;
        c.stdin_once = true;
    })
    .await;

    // One shim serves the whole pod, started for its sandbox, also for a
    // container made after another was removed.
    let gone = start("gone", &|c| c.command = vec!["true".into()]).await;
    exited(&mut rt, &gone).await;
    rt.remove_container(RemoveContainerRequest {
        container_id: gone.clone(),
    })
    .await
    .expect("remove");
    let later = start("later", &|_| {}).await;
    let shims = v2_shims(&state);
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(shims[0].1, pod);

    // berthd writes the CRI log from the shim's FIFOs.
    eventually(Duration::from_secs(5), "the ticker's log", || async {
        let lines = log_lines(&n, "ticker");
        (lines.iter().any(|l| l.ends_with(" stderr F err"))
            && lines.iter().any(|l| l.ends_with(" stdout F tick 2")))
        .then_some(())
    })
    .await;

    // ExecSync through the shim's exec.
    assert_eq!(
        sh(&mut rt, &ticker, "echo $((6 * 7))").await,
        ("42".into(), 0)
    );
    assert_eq!(sh(&mut rt, &ticker, "exit 3").await.1, 3);

    // Attach to the shell's stdin and output.
    let url = rt
        .attach(AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let io = CommandIo {
        stdin: Some(b"echo attached; echo oops >&2; exit 4\n".to_vec()),
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let (_, out) = remote_command_spdy(&url, io).await.expect("attach");
    assert_eq!(out.stdout, b"attached\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(exited(&mut rt, &shell).await.exit_code, 4);
    assert!(
        log_lines(&n, "shell")
            .iter()
            .any(|l| l.ends_with(" stdout F attached")),
        "{:?}",
        log_lines(&n, "shell")
    );

    // berthd killed: `short` exits meanwhile, the ticker runs on.
    let ticker_pid = berth_tests::node::container_pid(&mut rt, &ticker).await;
    n.d.kill9();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let st = exited(&mut rt, &short).await;
    assert_eq!(st.exit_code, 7, "{st:?}");
    assert!(log_lines(&n, "short")
        .iter()
        .any(|l| l.ends_with(" stdout F bye")));
    assert_eq!(
        berth_tests::node::container_pid(&mut rt, &ticker).await,
        ticker_pid,
        "the ticker ran on under its shim"
    );
    // Its output is logged again.
    let before = log_lines(&n, "ticker").len();
    eventually(Duration::from_secs(5), "more ticks in the log", || async {
        (log_lines(&n, "ticker").len() > before + 2).then_some(())
    })
    .await;
    assert_eq!(
        sh(&mut rt, &ticker, "echo again").await,
        ("again".into(), 0)
    );
    assert_eq!(
        sh(&mut rt, &later, "echo later").await,
        ("later".into(), 0),
        "the pod's shim is reached again after the restart"
    );

    // Stop and remove: nothing is left, the shim included.
    rt.stop_container(StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    assert_eq!(
        exited(&mut rt, &ticker).await.exit_code,
        0,
        "the ticker ended at its SIGTERM"
    );
    assert!(log_lines(&n, "ticker")
        .iter()
        .any(|l| l.ends_with(" stdout F term")));
    remove_pod(&mut rt, &pod).await.expect("remove the pod");
    eventually(Duration::from_secs(5), "the pod's shim to end", || async {
        v2_shims(&state).is_empty().then_some(())
    })
    .await;
    let runc_state = state.join("runc-v2").join("berth");
    let left: Vec<_> = std::fs::read_dir(&runc_state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "runc still holds {left:?}");
    n.assert_consistent();
}

#[tokio::test]
async fn youki_runs_pods_under_berth_shim() {
    let n = Node::running("yk", "").await;
    let mut rt = n.d.runtime().await;
    let pod = pod_under(&mut rt, &n, "youki", "bin/setup's youki").await;
    let c = create_container(
        &mut rt,
        &pod,
        container_config(
            "app",
            &n.image,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; echo from-youki; while true; do sleep 0.2; done",
            ],
        ),
    )
    .await
    .expect("create");
    start_container(&mut rt, &c).await.expect("start");
    let youki_root = n.d.dir.path().join("run/youki");
    assert!(youki_root.join(&c).is_dir(), "youki holds the container");
    assert_eq!(sh(&mut rt, &c, "echo $((6 * 7))").await, ("42".into(), 0));
    // No signal is blocked in the container (the shim blocks the ones it
    // waits for; youki, unlike runc, would pass its mask on).
    let sigs = sh(&mut rt, &c, "grep '^SigBlk:' /proc/1/status").await.0;
    assert_eq!(sigs, "SigBlk:\t0000000000000000");
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 5,
    })
    .await
    .expect("stop");
    assert_eq!(exited(&mut rt, &c).await.exit_code, 0);
    assert!(log_lines(&n, "app")
        .iter()
        .any(|l| l.ends_with(" stdout F from-youki")));
    remove_pod(&mut rt, &pod).await.expect("remove the pod");
    assert!(!youki_root.join(&c).exists(), "youki forgot the container");
    n.assert_consistent();
}
