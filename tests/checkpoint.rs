//! CheckpointContainer and restore against a real berthd. This machine's
//! CRIU cannot work (`criu check` fails on its kernel), and berth says so
//! with CRIU's reason; everything around CRIU (the archive, the root
//! filesystem's changes, restore through the shim and the runtime) runs
//! with a fake CRIU: a `criu` whose check passes and a runtime handler
//! whose `checkpoint` writes a stand-in image and whose `restore` runs
//! the container afresh once it finds that image.

use berth_protocol::cri::*;
use berth_tests::node::{container_config, create_container, pod_config, sh, Node};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tonic::Code;

fn executable(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// runc, but `checkpoint` writes `inventory.img` naming the container's
/// pid into `--image-path`, and `restore` insists on finding it there and
/// then runs the container as `run` would.
const FAKE_CRIU_RUNTIME: &str = r#"#!/bin/bash
argv=("$@"); pre=(); i=0; verb=
while [ $i -lt ${#argv[@]} ]; do
  case ${argv[$i]} in
    checkpoint|restore) verb=${argv[$i]}; i=$((i+1)); break ;;
    --root|--log|--log-format|--criu) pre+=("${argv[$i]}" "${argv[$((i+1))]}"); i=$((i+2)) ;;
    *) pre+=("${argv[$i]}"); i=$((i+1)) ;;
  esac
done
[ -n "$verb" ] || exec runc "$@"
rest=("${argv[@]:$i}"); out=(); img=; j=0
while [ $j -lt ${#rest[@]} ]; do
  case ${rest[$j]} in
    --image-path) img=${rest[$((j+1))]}; j=$((j+2)) ;;
    --work-path) j=$((j+2)) ;;
    --leave-running) j=$((j+1)) ;;
    *) out+=("${rest[$j]}"); j=$((j+1)) ;;
  esac
done
if [ "$verb" = checkpoint ]; then
  id=${out[-1]}
  pid=$(runc "${pre[@]}" state "$id" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
  echo "fake criu dump of pid $pid" >"$img/inventory.img"
  echo "checkpoint $id" >>"$(dirname "$0")/calls"
  exit 0
fi
[ -f "$img/inventory.img" ] || { echo "restore: no CRIU images in $img" >&2; exit 1; }
echo "restore ${out[-1]}" >>"$(dirname "$0")/calls"
exec runc "${pre[@]}" run "${out[@]}"
"#;

fn tar_entries(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).expect("read");
        out.insert(name.trim_start_matches("./").to_string(), data);
    }
    out
}

async fn checkpoint(
    rt: &mut runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    location: &Path,
) -> Result<(), tonic::Status> {
    rt.checkpoint_container(CheckpointContainerRequest {
        container_id: id.into(),
        location: location.display().to_string(),
        timeout: 60,
    })
    .await
    .map(|_| ())
}

async fn start(
    rt: &mut runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

/// `sleep 1000` running as "app" in `pod`; answers its ID.
async fn running_app(
    rt: &mut runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    image: &str,
) -> String {
    let app = create_container(rt, pod, container_config("app", image, &["sleep", "1000"]))
        .await
        .expect("create");
    start(rt, &app).await;
    app
}

#[tokio::test]
async fn a_checkpoint_with_a_fake_criu_is_archived_and_restored_with_its_changes() {
    let tools = tempfile::tempdir().expect("tempdir");
    executable(
        &tools.path().join("criu"),
        "#!/bin/sh\n[ \"$1\" = check ]\n",
    );
    executable(&tools.path().join("fake-criu-runc"), FAKE_CRIU_RUNTIME);
    let mut n = Node::new(
        "ck",
        &format!(
            "[runtimes.fakecriu]\nbinary = \"{}\"\nnative_exec = false\n",
            tools.path().join("fake-criu-runc").display()
        ),
    );
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    n.d.env.push(("PATH".into(), path));
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("ckpt", &n.logs())),
            runtime_handler: "fakecriu".into(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let app = running_app(&mut rt, &pod, &n.image).await;
    let (_, code) = sh(
        &mut rt,
        &app,
        "mkdir /work && echo changed >/work/state && rm /etc/group",
    )
    .await;
    assert_eq!(code, 0);

    let location = n.d.dir.path().join("checkpoints/app.tar");
    checkpoint(&mut rt, &app, &location)
        .await
        .expect("CheckpointContainer");
    assert_eq!(
        sh(&mut rt, &app, "echo still running").await.0,
        "still running",
        "a checkpoint leaves the container running"
    );
    let entries = tar_entries(&std::fs::read(&location).expect("the archive"));
    let config: serde_json::Value =
        serde_json::from_slice(&entries["config.dump"]).expect("config.dump");
    assert_eq!(config["id"], app.as_str());
    assert_eq!(config["rootfsImageName"], n.image.as_str());
    assert_eq!(config["runtime"], "fakecriu");
    let spec: serde_json::Value = serde_json::from_slice(&entries["spec.dump"]).expect("spec");
    assert_eq!(spec["process"]["args"][0], "sleep");
    let images = String::from_utf8_lossy(&entries["checkpoint/inventory.img"]).to_string();
    assert!(images.starts_with("fake criu dump of pid "), "{images}");
    let diff = tar_entries(&entries["rootfs-diff.tar"]);
    assert_eq!(diff["work/state"], b"changed\n");
    let deleted: Vec<String> = serde_json::from_slice(&entries["deleted.files"]).expect("list");
    assert_eq!(deleted, ["/etc/group"]);

    // Restored: created from the archive, on the checkpoint's image, with
    // its changes; started by the runtime's restore.
    let mut from = container_config("app-restored", &location.display().to_string(), &[]);
    from.command = vec!["sleep".into(), "1000".into()];
    let restored = create_container(&mut rt, &pod, from)
        .await
        .expect("restore");
    start(&mut rt, &restored).await;
    assert_eq!(sh(&mut rt, &restored, "cat /work/state").await.0, "changed");
    assert_ne!(sh(&mut rt, &restored, "test -e /etc/group").await.1, 0);
    let status = rt
        .container_status(ContainerStatusRequest {
            container_id: restored.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    let image_id = berth_tests::cri::status(&mut n.d.images().await, &n.image)
        .await
        .expect("image")
        .id;
    assert_eq!(status.image_ref, image_id);
    let calls = std::fs::read_to_string(tools.path().join("calls")).expect("runtime calls");
    assert_eq!(calls, format!("checkpoint {app}\nrestore {restored}\n"));

    berth_tests::node::remove_pod(&mut rt, &pod)
        .await
        .expect("remove the pod");
    assert_eq!(
        std::fs::read_dir(n.d.dir.path().join("run/checkpoints"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "no work directory is left"
    );
    n.assert_consistent();
}

#[tokio::test]
async fn this_nodes_criu_is_probed_and_its_reason_given() {
    let check = std::process::Command::new("criu").arg("check").output();
    let Ok(check) = check else {
        panic!("criu is not installed (bin/setup installs it)");
    };
    let mut n = Node::new("cq", "");
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let pod = berth_tests::node::run_pod(&mut rt, pod_config("criu", &n.logs()))
        .await
        .expect("pod");
    let app = running_app(&mut rt, &pod, &n.image).await;
    let location = n.d.dir.path().join("app.tar");
    let answer = checkpoint(&mut rt, &app, &location).await;
    if check.status.success() {
        answer.expect("CRIU works here: the checkpoint is made");
        assert!(location.is_file());
    } else {
        let said = String::from_utf8_lossy(&check.stderr).to_string()
            + &String::from_utf8_lossy(&check.stdout);
        let first = said
            .lines()
            .find_map(|l| {
                l.split_once("Error")
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .unwrap_or_default();
        let err = answer.expect_err("CRIU cannot work here");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("CRIU") && err.message().contains(&first),
            "{err:?} should carry {first:?}"
        );
        assert!(!location.exists(), "no archive");
        // A restore is refused the same way, before anything is made.
        std::fs::write(&location, "an archive").expect("write");
        let from = container_config("restored", &location.display().to_string(), &["true"]);
        let err = create_container(&mut rt, &pod, from)
            .await
            .expect_err("CRIU cannot work here");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    // Bad requests are refused by field.
    for (id, location, code) in [
        (app.as_str(), "", Code::InvalidArgument),
        (app.as_str(), "relative.tar", Code::InvalidArgument),
        ("no-such-container", "/tmp/x.tar", Code::NotFound),
    ] {
        let err = checkpoint(&mut rt, id, Path::new(location))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{id} {location}: {err:?}");
    }
    berth_tests::node::remove_pod(&mut rt, &pod)
        .await
        .expect("remove the pod");
    n.assert_consistent();
}
