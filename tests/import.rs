//! Air-gapped import end to end: OCI image layout and `docker save`
//! tarballs (plain and gzip-compressed) built by the tests, loaded through
//! `berthctl image import`, then seen through berthd's CRI socket, its
//! snapshots and `berthctl image ls`. Bad archives fail with one clear line
//! and leave nothing behind.

use berth_protocol::admin::{ImportImageRequest, PingActorRequest};
use berth_protocol::cri::image_service_client::ImageServiceClient;
use berth_tests::cri::{list, status};
use berth_tests::image::{
    blob_path, build_index, docker_save, gzip, oci_layout, sha256_digest, tar_archive, BuiltImage,
    Compression, ImageBuilder, LayerBuilder, Platform, SaveStyle, CONTAINERD_IMAGE_NAME,
    OCI_REF_NAME,
};
use berth_tests::Daemon;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// Writes an archive into the daemon's temporary directory.
fn write(d: &Daemon, name: &str, bytes: &[u8]) -> PathBuf {
    let path = d.dir.path().join(name);
    std::fs::write(&path, bytes).expect("write archive");
    path
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `berthctl image import PATH`, which must succeed; its output.
fn import(d: &Daemon, path: &Path) -> String {
    let out = d.berthctl(&["image", "import", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "import {} failed: {}\n{}",
        path.display(),
        text(&out.stderr),
        d.log()
    );
    text(&out.stdout)
}

/// `berthctl image import PATH`, which must fail with one line on stderr
/// naming the gRPC code; that line.
fn import_fails(d: &Daemon, path: &str, code: &str) -> String {
    let out: Output = d.berthctl(&["image", "import", path]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "import {path} succeeded: {}",
        text(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("berthctl: "), "{err}");
    assert!(err.contains(code), "{path}: expected {code}: {err}");
    err
}

/// The snapshot directories of a layer stack, bottom first.
fn snapshot_dirs(root: &Path, diff_ids: &[String]) -> Vec<PathBuf> {
    let mut chain: Option<String> = None;
    let mut out = Vec::new();
    for d in diff_ids {
        let next = match &chain {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(
            root.join("snapshots")
                .join(next.trim_start_matches("sha256:")),
        );
        chain = Some(next);
    }
    out
}

fn diff_ids(image: &BuiltImage) -> Vec<String> {
    image.layers.iter().map(|l| l.diff_id.clone()).collect()
}

/// The files under `root`'s `sub` directory, berth's own sandbox image
/// left out.
fn names(root: &Path, sub: &str) -> Vec<String> {
    let own = berth_tests::sandbox_image_files(root);
    let mut v: Vec<String> = std::fs::read_dir(root.join(sub))
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !own.contains(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Blobs and snapshots berthd keeps.
fn stored(root: &Path) -> (usize, usize) {
    (
        names(root, "content/blobs/sha256").len(),
        names(root, "snapshots").len(),
    )
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// An image of busybox and a marker file.
fn marked(base: &berth_tests::image::BuiltLayer, marker: &str) -> BuiltImage {
    ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .file("marker", marker, 0o644)
                .build(Compression::Zstd),
        )
        .user("1002")
        .cmd(&["sh"])
        .build()
}

#[tokio::test]
async fn an_oci_layout_is_imported_under_its_names_and_unpacked() {
    let d = Daemon::start();
    let mut c = d.images().await;
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let a = marked(&base, "a");
    let b = marked(&base, "b");
    // Two entries name image a (a containerd name, and a whole reference
    // as ref name); image b is named by a bare tag only.
    let files = oci_layout(
        vec![
            a.layout_entry(&[
                (CONTAINERD_IMAGE_NAME, "registry.example:5000/team/app:v1"),
                (OCI_REF_NAME, "v1"),
            ]),
            a.layout_entry(&[(OCI_REF_NAME, "app:v2")]),
            b.layout_entry(&[(OCI_REF_NAME, "v3")]),
        ],
        [a.blob_files(), b.blob_files()].concat(),
    );
    let archive = tar_archive(&files);
    let path = write(&d, "layout.tar", &archive);
    let out = import(&d, &path);
    let tag1 = "registry.example:5000/team/app:v1";
    let tag2 = "docker.io/library/app:v2";
    assert_eq!(
        out,
        format!(
            "imported {}  {tag1},{tag2}\nimported {}  <none>\n",
            a.config_digest, b.config_digest
        )
    );

    // Through the CRI: ID, names (normalised), repo digests of the manifest.
    let img = status(&mut c, tag1).await.expect("a by its first tag");
    assert_eq!(img.id, a.config_digest);
    assert_eq!(
        sorted(img.repo_tags.clone()),
        vec![tag2.to_string(), tag1.to_string()]
    );
    assert_eq!(
        sorted(img.repo_digests.clone()),
        vec![
            format!("docker.io/library/app@{}", a.manifest_digest),
            format!("registry.example:5000/team/app@{}", a.manifest_digest),
        ]
    );
    assert_eq!(img.uid.map(|u| u.value), Some(1002));
    assert!(img.size > base.bytes.len() as u64);
    assert_eq!(status(&mut c, "app:v2").await.as_ref(), Some(&img));
    let nameless = status(&mut c, &b.config_digest).await.expect("b by ID");
    assert!(nameless.repo_tags.is_empty(), "{nameless:?}");
    assert!(nameless.repo_digests.is_empty(), "{nameless:?}");
    // A bare tag is no repository: nothing is named `v3`.
    assert!(status(&mut c, "v3").await.is_none());

    // The layers are unpacked, the base once for both images.
    let root = d.root();
    let snaps = snapshot_dirs(&root, &diff_ids(&a));
    assert!(snaps[0].join("bin/busybox").is_file());
    assert!(snaps[0].join("etc/passwd").is_file());
    assert_eq!(
        std::fs::read_to_string(snaps[1].join("marker")).expect("a"),
        "a"
    );
    let snaps_b = snapshot_dirs(&root, &diff_ids(&b));
    assert_eq!(
        std::fs::read_to_string(snaps_b[1].join("marker")).expect("b"),
        "b"
    );
    // 2 × (manifest, config, top layer) + the base; 3 snapshots.
    assert_eq!(stored(&root), (7, 3));

    // berthctl image ls.
    let ls = d.berthctl(&["image", "ls"]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let table = text(&ls.stdout);
    let lines: Vec<&str> = table.lines().collect();
    // The two imported, and berth's own sandbox image.
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines.iter().any(|l| l.contains("berth.local/pause:")),
        "{table}"
    );
    assert!(lines[0].starts_with("IMAGE ID"), "{table}");
    assert!(
        lines[0].contains("TAGS") && lines[0].contains("SIZE"),
        "{table}"
    );
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&hex(&a.config_digest)[..12]))
        .expect("a listed");
    assert!(
        row_a.contains(&format!("{tag2},{tag1}")) || row_a.contains(&format!("{tag1},{tag2}")),
        "{table}"
    );
    assert!(row_a.contains("MB"), "{table}");
    let row_b = lines
        .iter()
        .find(|l| l.starts_with(&hex(&b.config_digest)[..12]))
        .expect("b listed");
    assert!(row_b.contains("<none>"), "{table}");

    // The same file again, and the same archive gzip-compressed: no error,
    // the same images, nothing more stored.
    assert_eq!(import(&d, &path), out);
    let gz = write(&d, "layout.tar.gz", &gzip(&archive));
    assert_eq!(import(&d, &gz), out);
    assert_eq!(list(&mut c).await.len(), 2);
    assert_eq!(status(&mut c, tag1).await.as_ref(), Some(&img));
    assert_eq!(stored(&root), (7, 3));
}

#[tokio::test]
async fn a_multi_platform_layout_gives_the_nodes_image_and_keeps_nothing_else() {
    let d = Daemon::start();
    let mut c = d.images().await;
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let amd = marked(&base, "amd64");
    let arm = ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .file("marker", "arm64", 0o644)
                .build(Compression::Gzip),
        )
        .platform("linux", "arm64", Some("v8"))
        .build();
    let index = build_index(
        &[
            (Platform::linux_arm64(), &arm),
            (Platform::linux_amd64(), &amd),
        ],
        false,
    );
    let entry = serde_json::json!({
        "mediaType": index.media_type,
        "digest": index.digest,
        "size": index.bytes.len(),
        "annotations": { CONTAINERD_IMAGE_NAME: "example.com/multi:v1", OCI_REF_NAME: "v1" },
    });
    let mut blobs = vec![(blob_path(&index.digest), index.bytes.clone())];
    blobs.extend(arm.blob_files());
    blobs.extend(amd.blob_files());
    let path = write(
        &d,
        "multi.tar",
        &tar_archive(&oci_layout(vec![entry], blobs)),
    );
    let out = import(&d, &path);
    assert_eq!(
        out,
        format!("imported {}  example.com/multi:v1\n", amd.config_digest)
    );
    let img = status(&mut c, "example.com/multi:v1")
        .await
        .expect("imported");
    assert_eq!(img.id, amd.config_digest);
    // As for a pull, the repo digest is the index's.
    assert_eq!(
        img.repo_digests,
        vec![format!("example.com/multi@{}", index.digest)]
    );
    let snaps = snapshot_dirs(&d.root(), &diff_ids(&amd));
    assert_eq!(
        std::fs::read_to_string(snaps[1].join("marker")).expect("marker"),
        "amd64"
    );
    // The other platform's blobs came with the archive but are collected:
    // index, manifest, config, two layers remain.
    let blobs = names(&d.root(), "content/blobs/sha256");
    assert!(
        !blobs.contains(&hex(&arm.config_digest).to_string()),
        "{blobs:?}"
    );
    assert!(
        !blobs.contains(&hex(&arm.layers[1].digest).to_string()),
        "{blobs:?}"
    );
    assert_eq!(stored(&d.root()), (5, 2));
}

/// The made-up manifest a docker image's repo digest names, from the
/// content store.
fn stored_manifest(d: &Daemon, repo_digest: &str) -> serde_json::Value {
    let (_, digest) = repo_digest.split_once('@').expect("repo@digest");
    let bytes = std::fs::read(d.root().join("content/blobs/sha256").join(hex(digest)))
        .expect("the manifest is stored");
    assert_eq!(sha256_digest(&bytes), digest);
    serde_json::from_slice(&bytes).expect("manifest json")
}

#[tokio::test]
async fn docker_save_archives_plain_gzip_and_blob_style_are_imported() {
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let busybox = ImageBuilder::new().layer(base.clone()).build();
    let app = marked(&base, "app");
    let images: [(&BuiltImage, &[&str]); 2] = [
        (&busybox, &["busybox:latest"]),
        (&app, &["example.com/app:v2", "app:latest"]),
    ];
    let archive = tar_archive(&docker_save(&images, SaveStyle::Classic));
    let expected = format!(
        "imported {}  docker.io/library/busybox:latest\nimported {}  example.com/app:v2,docker.io/library/app:latest\n",
        busybox.config_digest, app.config_digest
    );

    let d = Daemon::start();
    let mut c = d.images().await;
    let path = write(&d, "saved.tar", &archive);
    assert_eq!(import(&d, &path), expected);
    let bb = status(&mut c, "busybox").await.expect("busybox");
    assert_eq!(bb.id, busybox.config_digest);
    assert_eq!(bb.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(bb.repo_digests.len(), 1, "{bb:?}");
    assert!(bb.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    // The repo digest names an OCI manifest made for the image and stored.
    let m = stored_manifest(&d, &bb.repo_digests[0]);
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["config"]["digest"], busybox.config_digest);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(m["config"]["size"], busybox.config_bytes.len());
    // docker saves layers uncompressed: the blob is the tar itself.
    assert_eq!(m["layers"][0]["digest"], base.diff_id);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(
        status(&mut c, &bb.repo_digests[0]).await.as_ref(),
        Some(&bb)
    );

    let img = status(&mut c, "example.com/app:v2").await.expect("app");
    assert_eq!(img.id, app.config_digest);
    assert_eq!(
        img.repo_tags,
        vec!["example.com/app:v2", "docker.io/library/app:latest"]
    );
    let (_, digest) = img.repo_digests[0].split_once('@').expect("digest");
    assert_eq!(
        sorted(img.repo_digests.clone()),
        vec![
            format!("docker.io/library/app@{digest}"),
            format!("example.com/app@{digest}"),
        ]
    );
    assert_eq!(
        stored_manifest(&d, &img.repo_digests[0])["layers"][1]["digest"],
        app.layers[1].diff_id
    );
    let snaps = snapshot_dirs(&d.root(), &diff_ids(&app));
    assert!(snaps[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(snaps[1].join("marker")).expect("marker"),
        "app"
    );
    // 2 × (manifest, config) + 2 layers; docker's per-layer files are not
    // kept. 2 snapshots.
    assert_eq!(stored(&d.root()), (6, 2));
    let ls = text(&d.berthctl(&["image", "ls"]).stdout);
    assert!(ls.contains(&hex(&busybox.config_digest)[..12]), "{ls}");
    assert!(ls.contains("docker.io/library/busybox:latest"), "{ls}");

    // Twice: the same images, nothing more stored.
    assert_eq!(import(&d, &path), expected);
    assert_eq!(list(&mut c).await.len(), 2);
    assert_eq!(status(&mut c, "busybox").await.as_ref(), Some(&bb));
    assert_eq!(stored(&d.root()), (6, 2));
    drop(d);

    // `docker save | gzip`, and the docker 25 `blobs/sha256/` layout, on
    // fresh daemons: the same images, the same made-up manifests.
    let blob_style = tar_archive(&docker_save(&images, SaveStyle::Blobs));
    for (name, bytes) in [("saved.tar.gz", gzip(&archive)), ("blobs.tar", blob_style)] {
        let d = Daemon::start();
        let mut c = d.images().await;
        let path = write(&d, name, &bytes);
        assert_eq!(import(&d, &path), expected, "{name}");
        let again = status(&mut c, "busybox").await.expect(name);
        assert_eq!(again.repo_digests, bb.repo_digests, "{name}");
        assert_eq!(again.size, bb.size, "{name}");
        assert!(snapshot_dirs(&d.root(), &diff_ids(&app))[1]
            .join("marker")
            .is_file());
    }
}

/// Nothing of a failed import is visible: no image, no blob, no snapshot,
/// nothing half-written.
async fn assert_nothing_left(d: &Daemon, c: &mut ImageServiceClient<Channel>, case: &str) {
    assert!(list(c).await.is_empty(), "{case}: an image was recorded");
    let root = d.root();
    assert_eq!(
        names(&root, "content/blobs/sha256"),
        Vec::<String>::new(),
        "{case}: blobs left behind\n{}",
        d.log()
    );
    assert_eq!(
        names(&root, "snapshots"),
        Vec::<String>::new(),
        "{case}: snapshots or staging left behind"
    );
    assert_eq!(
        names(&root, "content/ingest"),
        Vec::<String>::new(),
        "{case}: ingest left behind"
    );
}

#[tokio::test]
async fn bad_archives_are_one_line_errors_and_leave_nothing_behind() {
    let d = Daemon::start();
    let mut c = d.images().await;
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let victim = LayerBuilder::new()
        .random_file("data", 300_000, 9)
        .build(Compression::Gzip);
    let img = ImageBuilder::new()
        .layer(base.clone())
        .layer(victim.clone())
        .build();

    // An OCI layout whose top layer's bytes do not match its name. The
    // base layer and config before it are stored, then collected.
    let mut files = img.oci_layout_files(&[(OCI_REF_NAME, "example.com/bad:v1")]);
    let victim_path = blob_path(&victim.digest);
    let pos = files
        .iter()
        .position(|(p, _)| *p == victim_path)
        .expect("victim");
    let bytes = &mut files[pos].1;
    let n = bytes.len() - 20;
    bytes[n] ^= 0xff;
    let tampered = tar_archive(&files);

    // An OCI layout that lacks a layer blob.
    let mut files = img.oci_layout_files(&[(OCI_REF_NAME, "example.com/bad:v1")]);
    files.retain(|(p, _)| *p != victim_path);
    let lacking = tar_archive(&files);

    // A docker archive whose layer is another tar than its diff ID says.
    let mut files = docker_save(&[(&img, &["bad:v1"])], SaveStyle::Classic);
    let layer_path = format!("{}/layer.tar", hex(&victim.diff_id));
    let pos = files
        .iter()
        .position(|(p, _)| *p == layer_path)
        .expect("layer");
    files[pos].1 = LayerBuilder::new()
        .file("data", "something else", 0o644)
        .build(Compression::None)
        .bytes;
    let wrong_diff = tar_archive(&files);

    // Layers with an entry that climbs out of the snapshot.
    let unsafe_img = ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .raw_path_file("../escape", "x")
                .build(Compression::Gzip),
        )
        .build();
    let unsafe_oci = unsafe_img.oci_layout_tar("example.com/unsafe:v1");
    let unsafe_docker = unsafe_img.docker_save_tar(&["unsafe:v1"]);

    let mut truncated = gzip(&img.oci_layout_tar("example.com/cut:v1"));
    truncated.truncate(truncated.len() * 2 / 3);

    let long_text = "not an image archive, just words\n".repeat(40);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "short.txt",
            b"hello\n".to_vec(),
            "InvalidArgument",
            "is not a tar archive",
        ),
        (
            "long.txt",
            long_text.into_bytes(),
            "InvalidArgument",
            "is not a tar archive",
        ),
        (
            "empty.tar",
            Vec::new(),
            "InvalidArgument",
            "is not a tar archive",
        ),
        (
            "neither.tar",
            tar_archive(&[("hello.txt".to_string(), b"hi".to_vec())]),
            "InvalidArgument",
            "neither index.json (an OCI image layout) nor manifest.json",
        ),
        (
            "tampered.tar",
            tampered,
            "DataLoss",
            "does not match its digest",
        ),
        ("lacking.tar", lacking, "DataLoss", "lacks layer blob"),
        ("wrong-diff.tar", wrong_diff, "DataLoss", "not the diff ID"),
        (
            "unsafe-oci.tar",
            unsafe_oci,
            "FailedPrecondition",
            "unsafe layer",
        ),
        (
            "unsafe-docker.tar",
            unsafe_docker,
            "FailedPrecondition",
            "unsafe layer",
        ),
        (
            "truncated.tar.gz",
            truncated,
            "DataLoss",
            "truncated or corrupt",
        ),
    ];
    for (name, bytes, code, words) in cases {
        let path = write(&d, name, &bytes);
        let err = import_fails(&d, &path.display().to_string(), code);
        assert!(err.contains(words), "{name}: {err}");
        assert!(err.contains(name), "{name}: the file is not named: {err}");
        assert_nothing_left(&d, &mut c, name).await;
    }
    // The victim blob is named in the mismatch.
    let path = d.dir.path().join("tampered.tar");
    let err = import_fails(&d, &path.display().to_string(), "DataLoss");
    assert!(err.contains(&victim_path), "{err}");
    // The diff ID mismatch names the layer.
    let path = d.dir.path().join("wrong-diff.tar");
    let err = import_fails(&d, &path.display().to_string(), "DataLoss");
    assert!(err.contains(&layer_path), "{err}");
    assert!(!d.root().join("escape").exists());
    assert!(!d.root().join("snapshots/escape").exists());

    // A missing file, and a directory.
    let missing = d.dir.path().join("nothing-here.tar");
    let err = import_fails(&d, &missing.display().to_string(), "NotFound");
    assert!(err.contains("nothing-here.tar: no such file"), "{err}");
    let err = import_fails(&d, &d.dir.path().display().to_string(), "InvalidArgument");
    assert!(err.contains("not a regular file"), "{err}");
    assert_nothing_left(&d, &mut c, "missing").await;

    // berthd refuses a relative path (berthctl never sends one).
    let mut admin = d.admin().await;
    for bad in ["layout.tar", ""] {
        let err = admin
            .import_image(ImportImageRequest { path: bad.into() })
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }

    // After all that, a good archive imports.
    let good = write(&d, "good.tar", &img.oci_layout_tar("example.com/good:v1"));
    import(&d, &good);
    assert_eq!(
        status(&mut c, "example.com/good:v1")
            .await
            .expect("good")
            .id,
        img.config_digest
    );
}

#[tokio::test]
async fn the_image_actor_answers_while_a_large_archive_is_imported() {
    let d = Daemon::start();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 48 << 20, 5)
                .build(Compression::None),
        )
        .build();
    let path = write(&d, "big.tar", &img.docker_save_tar(&["big:v1"]));
    let ctl = berth_tests::bin("berthctl");
    let mut child = std::process::Command::new(ctl)
        .arg("--socket")
        .arg(d.admin_socket())
        .args(["image", "import"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn berthctl");
    let mut admin = d.admin().await;
    let mut pings_during = 0;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the import did not finish");
        let start = Instant::now();
        admin
            .ping_actor(PingActorRequest {
                name: "image".into(),
            })
            .await
            .expect("ping the image actor");
        slowest = slowest.max(start.elapsed());
        if child.try_wait().expect("try_wait").is_none() {
            pings_during += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().expect("berthctl output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(pings_during > 0, "the import finished before any ping");
    assert!(slowest < Duration::from_secs(1), "a ping took {slowest:?}");
    let snaps = snapshot_dirs(&d.root(), &diff_ids(&img));
    assert_eq!(
        std::fs::metadata(snaps[0].join("big")).expect("big").len(),
        48 << 20
    );
}
