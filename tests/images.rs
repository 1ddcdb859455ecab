//! ImageService end to end: a real registry (docker-registry on a loopback
//! port) serving images the tests build from busybox-static, pulled through
//! berthd's CRI socket.

use berth_protocol::cri::image_service_client::ImageServiceClient;
use berth_protocol::cri::*;
use berth_tests::cri::{list, spec, status};
use berth_tests::image::{sha256_digest, Compression, ImageBuilder, LayerBuilder, Platform};
use berth_tests::registry::{free_port, Registry, StallProxy};
use berth_tests::Daemon;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;
use tonic::Code;

/// A berthd that reaches `hosts` over plain HTTP, with `extra` config.
fn daemon(hosts: &[String], extra: &str) -> Daemon {
    let mut cfg = String::new();
    for h in hosts {
        cfg.push_str(&format!("[registries.\"{h}\"]\ninsecure = true\n"));
    }
    cfg.push_str(extra);
    let mut d = Daemon::configure(&cfg);
    d.spawn();
    d
}

async fn pull(c: &mut ImageServiceClient<Channel>, image: &str) -> Result<String, tonic::Status> {
    pull_with(c, image, None).await
}

async fn pull_with(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) {
    c.remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .expect("RemoveImage");
}

/// The snapshot directories of an image's layers, bottom first.
fn snapshot_dirs(root: &Path, diff_ids: &[String]) -> Vec<PathBuf> {
    let mut chain: Option<String> = None;
    let mut out = Vec::new();
    for d in diff_ids {
        let next = match &chain {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(root.join("snapshots").join(&next["sha256:".len()..]));
        chain = Some(next);
    }
    out
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|e| e.count()).unwrap_or(0)
}

/// Blobs and snapshots berthd keeps, berth's own sandbox image left out.
fn stored(root: &Path) -> (usize, usize) {
    let own = berth_tests::sandbox_image_files(root);
    let count = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !own.contains(e.file_name().to_string_lossy().as_ref()))
            .count()
    };
    (
        count(&root.join("content/blobs/sha256")),
        count(&root.join("snapshots")),
    )
}

fn simple_image(marker: &str) -> berth_tests::image::BuiltImage {
    ImageBuilder::new()
        .layer(LayerBuilder::new().busybox().build(Compression::Gzip))
        .layer(
            LayerBuilder::new()
                .file("marker", marker, 0o644)
                .build(Compression::Zstd),
        )
        .cmd(&["sh"])
        .build()
}

#[tokio::test]
async fn names_follow_every_pull_form_and_status_agrees_by_id_tag_and_digest() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let a = simple_image("a");
    let pushed = reg.push_image("app", Some("v1"), &a);
    reg.push_image("app", Some("v2"), &a);
    let tag1 = reg.image_ref("app", "v1");
    let repo = format!("{}/app", reg.host());

    // By tag: the tag and repo@digest.
    let id = pull(&mut c, &tag1).await.expect("pull by tag");
    assert_eq!(id, pushed.config_digest);
    let img = status(&mut c, &tag1).await.expect("present");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![tag1.clone()]);
    let repo_digest = format!("{repo}@{}", pushed.manifest_digest);
    assert_eq!(img.repo_digests, vec![repo_digest.clone()]);
    assert!(img.size > 0);
    // The same answer by ID (both forms), tag and digest.
    let hex = id.trim_start_matches("sha256:");
    for name in [id.as_str(), hex, tag1.as_str(), repo_digest.as_str()] {
        assert_eq!(status(&mut c, name).await.as_ref(), Some(&img), "{name}");
    }
    assert!(status(&mut c, &reg.image_ref("app", "nope"))
        .await
        .is_none());
    assert!(status(
        &mut c,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    )
    .await
    .is_none());

    // By digest: the same image, no new tag.
    let id2 = pull(&mut c, &repo_digest).await.expect("pull by digest");
    assert_eq!(id2, id);
    // A second tag of the same image: one image with both tags.
    pull(&mut c, &reg.image_ref("app", "v2"))
        .await
        .expect("pull v2");
    let imgs = list(&mut c).await;
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    let mut tags = imgs[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![tag1.clone(), reg.image_ref("app", "v2")]);
    assert_eq!(imgs[0].repo_digests, vec![repo_digest.clone()]);

    // The tag moves to another image: the old one keeps v2 only.
    let b = simple_image("b");
    let pushed_b = reg.push_image("app", Some("v1"), &b);
    let id_b = pull(&mut c, &tag1).await.expect("pull moved tag");
    assert_eq!(id_b, pushed_b.config_digest);
    assert_eq!(status(&mut c, &tag1).await.expect("b").id, id_b);
    let old = status(&mut c, &id).await.expect("a still there");
    assert_eq!(old.repo_tags, vec![reg.image_ref("app", "v2")]);
    assert_eq!(list(&mut c).await.len(), 2);

    // The stream form gives the same images.
    let mut stream = c
        .stream_images(StreamImagesRequest { filter: None })
        .await
        .expect("StreamImages")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        streamed.extend(msg.images);
    }
    let mut ids: Vec<_> = streamed.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    // Every image, the sandbox image too, as ListImages has them.
    let listed = c
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    let mut want: Vec<_> = listed.iter().map(|i| i.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);

    // Filtered list.
    let only = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter { image: spec(&tag1) }),
        })
        .await
        .expect("filtered")
        .into_inner()
        .images;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, id_b);
}

#[tokio::test]
async fn layers_are_unpacked_with_whiteouts_links_owners_and_modes() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let base = LayerBuilder::new()
        .busybox()
        .file("etc/old.conf", "old", 0o644)
        .dir("data", 0o755)
        .file("data/kept-by-lower", "lower", 0o644)
        .file("app/bin/tool", "#!/bin/sh\necho tool\n", 0o4755)
        .hardlink("app/bin/tool-link", "app/bin/tool")
        .build(Compression::Gzip);
    let top = LayerBuilder::new()
        .whiteout("etc/old.conf")
        .opaque("data")
        .file("data/fresh", "upper", 0o600)
        .file_owned("home/app/notes", "mine", 0o640, 1002, 1002)
        .symlink("app/current", "/app/bin/tool")
        .char_device("dev/null", 1, 3)
        .xattr("home/app/notes", "user.berth", "yes")
        .build(Compression::None);
    let img = ImageBuilder::new().layer(base).layer(top).build();
    reg.push_image("files", Some("v1"), &img);
    pull(&mut c, &reg.image_ref("files", "v1"))
        .await
        .expect("pull");

    let diffs: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    let dirs = snapshot_dirs(&d.root(), &diffs);
    let (lower, upper) = (&dirs[0], &dirs[1]);
    assert!(lower.join("bin/busybox").is_file());
    let tool = std::fs::metadata(lower.join("app/bin/tool")).expect("tool");
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    let link = std::fs::metadata(lower.join("app/bin/tool-link")).expect("hard link");
    assert_eq!(link.ino(), tool.ino());
    // Whiteout: a 0/0 character device in the upper snapshot.
    let wh = std::fs::symlink_metadata(upper.join("etc/old.conf")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(upper.join("data"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
    let notes = std::fs::metadata(upper.join("home/app/notes")).expect("notes");
    assert_eq!(
        (notes.uid(), notes.gid(), notes.mode() & 0o777),
        (1002, 1002, 0o640)
    );
    assert_eq!(
        xattr::get(upper.join("home/app/notes"), "user.berth").expect("xattr"),
        Some(b"yes".to_vec())
    );
    assert_eq!(
        std::fs::read_link(upper.join("app/current")).expect("symlink"),
        Path::new("/app/bin/tool")
    );
    let dev = std::fs::metadata(upper.join("dev/null")).expect("dev");
    assert!(dev.file_type().is_char_device());

    // Seen through overlayfs, as a container will see it.
    let merged = tempfile::tempdir().expect("merged");
    let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(
        Some("overlay"),
        merged.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("overlay mount");
    let m = merged.path();
    let seen = (
        m.join("etc/old.conf").exists(),
        m.join("data/kept-by-lower").exists(),
        std::fs::read_to_string(m.join("data/fresh")).ok(),
        m.join("bin/sh").exists(),
    );
    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(seen, (false, false, Some("upper".to_string()), true));
}

#[tokio::test]
async fn users_multi_arch_indexes_and_docker_manifests() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    for (i, (user, uid, name)) in [
        ("1002", Some(1002), ""),
        ("www-data", None, "www-data"),
        ("1003:1004", Some(1003), ""),
        ("www-data:1004", None, "www-data"),
    ]
    .into_iter()
    .enumerate()
    {
        let img = ImageBuilder::new().layer(base.clone()).user(user).build();
        let tag = format!("u{i}");
        reg.push_image("users", Some(&tag), &img);
        pull(&mut c, &reg.image_ref("users", &tag))
            .await
            .expect("pull");
        let s = status(&mut c, &reg.image_ref("users", &tag))
            .await
            .expect("status");
        assert_eq!(s.uid.map(|u| u.value), uid, "{user}");
        assert_eq!(s.username, name, "{user}");
    }

    // An index: the node's platform (amd64) is picked; the repo digest is
    // the index's.
    let amd = ImageBuilder::new()
        .layer(base.clone())
        .label("arch", "amd64")
        .build();
    let arm = ImageBuilder::new()
        .layer(base.clone())
        .label("arch", "arm64")
        .platform("linux", "arm64", Some("v8"))
        .build();
    let index = reg.push_index(
        "multi",
        Some("v1"),
        &[
            (Platform::linux_arm64(), &arm),
            (Platform::linux_amd64(), &amd),
        ],
    );
    let id = pull(&mut c, &reg.image_ref("multi", "v1"))
        .await
        .expect("pull index");
    assert_eq!(id, amd.config_digest);
    let s = status(&mut c, &id).await.expect("status");
    assert_eq!(
        s.repo_digests,
        vec![format!("{}/multi@{index}", reg.host())]
    );

    // A Docker schema 2 image (and a docker manifest list).
    let docker = ImageBuilder::new()
        .layer(base.clone())
        .docker_schema2()
        .build();
    reg.push_manifest_list("dock", Some("v1"), &[(Platform::linux_amd64(), &docker)]);
    let id = pull(&mut c, &reg.image_ref("dock", "v1"))
        .await
        .expect("pull docker list");
    assert_eq!(id, docker.config_digest);

    // Verbose status carries the config.
    let v = c
        .image_status(ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .expect("verbose")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).expect("json");
    assert_eq!(info["imageSpec"]["architecture"], "amd64");
}

#[tokio::test]
async fn remove_by_each_name_and_collect_what_nothing_uses() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let shared = LayerBuilder::new().busybox().build(Compression::Gzip);
    let mk = |m: &str| {
        ImageBuilder::new()
            .layer(shared.clone())
            .layer(
                LayerBuilder::new()
                    .file("m", m, 0o644)
                    .build(Compression::Gzip),
            )
            .build()
    };
    let (one, two, three) = (mk("1"), mk("2"), mk("3"));
    let p1 = reg.push_image("r", Some("one"), &one);
    reg.push_image("r", Some("two"), &two);
    let p3 = reg.push_image("r", Some("three"), &three);
    for t in ["one", "two", "three"] {
        pull(&mut c, &reg.image_ref("r", t)).await.expect("pull");
    }
    // 3 × (manifest, config, top layer) + the shared layer.
    assert_eq!(stored(&d.root()), (10, 4));

    // Unknown images: success, nothing changes.
    remove(&mut c, &reg.image_ref("r", "nope")).await;
    remove(
        &mut c,
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    )
    .await;
    assert_eq!(list(&mut c).await.len(), 3);

    remove(&mut c, &p1.config_digest).await; // by ID
    remove(&mut c, &reg.image_ref("r", "two")).await; // by tag
    assert_eq!(stored(&d.root()), (4, 2), "the shared layer stays");
    let by_digest = format!("{}/r@{}", reg.host(), p3.manifest_digest);
    remove(&mut c, &by_digest).await; // by digest
    assert!(list(&mut c).await.is_empty());
    assert_eq!(stored(&d.root()), (0, 0), "nothing left behind");
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("fs info")
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().expect("id").mountpoint,
        d.root().join("snapshots").display().to_string()
    );
    assert!(usage.inodes_used.as_ref().expect("inodes").value >= 1);
}

#[tokio::test]
async fn image_fs_info_counts_what_images_use() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let before = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("fs")
        .into_inner();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("blob", 3 << 20, 7)
                .build(Compression::None),
        )
        .build();
    reg.push_image("big", Some("v1"), &img);
    pull(&mut c, &reg.image_ref("big", "v1"))
        .await
        .expect("pull");
    let after = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("fs")
        .into_inner();
    let used = |r: &ImageFsInfoResponse| {
        r.image_filesystems[0]
            .used_bytes
            .as_ref()
            .expect("used")
            .value
    };
    // The blob and its unpacked copy: at least 6 MiB more.
    assert!(
        used(&after) >= used(&before) + (6 << 20),
        "{before:?} {after:?}"
    );
}

#[tokio::test]
async fn a_mirror_is_used_and_the_upstream_is_the_fallback() {
    let reg = Registry::start();
    let img = simple_image("mirrored");
    let pushed = reg.push_image("lib/app", Some("v1"), &img);
    let dead = format!("http://127.0.0.1:{}", free_port());
    // The upstream name does not resolve: only the mirror can serve it.
    let extra = format!(
        "[registries.\"registry.invalid\"]\nmirrors = [\"{dead}\", \"{}\"]\n\
         [registries.\"{}\"]\ninsecure = true\nmirrors = [\"{dead}\"]\n",
        reg.url(),
        reg.host()
    );
    let d = daemon(&[], &extra);
    let mut c = d.images().await;
    let id = pull(&mut c, "registry.invalid/lib/app:v1")
        .await
        .expect("through the mirror");
    assert_eq!(id, pushed.config_digest);
    let s = status(&mut c, "registry.invalid/lib/app:v1")
        .await
        .expect("status");
    assert_eq!(s.repo_tags, vec!["registry.invalid/lib/app:v1".to_string()]);
    assert!(
        reg.log().contains("ns=registry.invalid"),
        "the mirror was asked"
    );
    // The mirror is dead for the registry itself: the upstream serves.
    let id = pull(&mut c, &reg.image_ref("lib/app", "v1"))
        .await
        .expect("upstream fallback");
    assert_eq!(id, pushed.config_digest);
}

#[tokio::test]
async fn registry_credentials_are_used_and_a_wrong_password_is_unauthenticated() {
    let reg = Registry::start_with_auth("berth", "s3cret");
    let img = simple_image("private");
    reg.push_image("private", Some("v1"), &img);
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let name = reg.image_ref("private", "v1");
    let err = pull(&mut c, &name).await.expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("requires credentials"), "{err:?}");
    let wrong = AuthConfig {
        username: "berth".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull_with(&mut c, &name, Some(wrong))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(list(&mut c).await.is_empty());
    let right = AuthConfig {
        auth: base64_encode("berth:s3cret"),
        ..Default::default()
    };
    pull_with(&mut c, &name, Some(right))
        .await
        .expect("with credentials");
}

fn base64_encode(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Nothing of a failed pull is visible: no image, no snapshot, no blob
/// beyond what was there, nothing half-written.
fn assert_nothing_left(d: &Daemon, before: (usize, usize)) {
    let own = berth_tests::sandbox_image_files(&d.root());
    let left: Vec<_> = ["content/blobs/sha256", "snapshots"]
        .iter()
        .flat_map(|p| std::fs::read_dir(d.root().join(p)).expect("dir").flatten())
        .filter(|e| !own.contains(e.file_name().to_string_lossy().as_ref()))
        .map(|e| e.path())
        .collect();
    assert_eq!(
        stored(&d.root()),
        before,
        "content or snapshots left behind: {left:?}\n{}",
        d.log()
    );
    assert_eq!(
        entries(&d.root().join("content/ingest")),
        0,
        "ingest left behind"
    );
    let staging = std::fs::read_dir(d.root().join("snapshots"))
        .expect("snapshots")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .count();
    assert_eq!(staging, 0, "staging snapshot left behind");
}

#[tokio::test]
async fn bad_references_unknown_tags_and_dead_registries_are_clear_errors() {
    let reg = Registry::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let d = daemon(&[reg.host(), dead.clone()], "");
    let mut c = d.images().await;
    for bad in ["", "UPPER/case:1", "repo@sha256:abc", "a b"] {
        let err = pull(&mut c, bad).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
    let err = pull(&mut c, &reg.image_ref("nothing", "v1"))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("nothing"), "{err:?}");
    let err = pull(&mut c, &format!("{dead}/app:v1"))
        .await
        .expect_err("down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&dead), "{err:?}");
    assert_nothing_left(&d, (0, 0));
}

#[tokio::test]
async fn corrupt_and_unsafe_content_fails_the_pull_and_leaves_nothing() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "");
    let mut c = d.images().await;
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);

    // A blob whose bytes do not match its digest.
    let victim = LayerBuilder::new()
        .file("x", "x".repeat(5000), 0o644)
        .build(Compression::Gzip);
    let img = ImageBuilder::new()
        .layer(base.clone())
        .layer(victim.clone())
        .build();
    reg.push_image("corrupt", Some("v1"), &img);
    let mut tampered = victim.bytes.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0xff;
    reg.corrupt_blob(&victim.digest, &tampered);
    let err = pull(&mut c, &reg.image_ref("corrupt", "v1"))
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(list(&mut c).await.is_empty());
    // What the failed pull had stored is collected: nothing is left.
    assert_nothing_left(&d, (0, 0));

    // A truncated gzip stream, served under its own (matching) digest.
    let full = LayerBuilder::new()
        .random_file("r", 200_000, 3)
        .build(Compression::Gzip);
    let mut cut = full.clone();
    cut.bytes.truncate(full.bytes.len() / 2);
    cut.digest = sha256_digest(&cut.bytes);
    let img = ImageBuilder::new().layer(cut).build();
    reg.push_image("truncated", Some("v1"), &img);
    let err = pull(&mut c, &reg.image_ref("truncated", "v1"))
        .await
        .expect_err("truncated");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");

    // Entries that would land outside the snapshot.
    let cases = [
        (
            "dotdot",
            LayerBuilder::new().raw_path_file("../escape", "x"),
        ),
        (
            "absolute",
            LayerBuilder::new().raw_path_file("/etc/escape", "x"),
        ),
        (
            "symlink",
            LayerBuilder::new()
                .symlink("link", "/tmp")
                .file("link/berth-escape", "x", 0o644),
        ),
    ];
    for (name, layer) in cases {
        let img = ImageBuilder::new()
            .layer(layer.build(Compression::Gzip))
            .build();
        reg.push_image("unsafe", Some(name), &img);
        let err = pull(&mut c, &reg.image_ref("unsafe", name))
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(err.message().contains("unsafe layer"), "{name}: {err:?}");
    }
    assert!(!Path::new("/tmp/berth-escape").exists());
    assert!(list(&mut c).await.is_empty());
    assert_nothing_left(&d, (0, 0));
}

#[tokio::test]
async fn a_registry_that_stalls_mid_layer_fails_the_pull_after_the_stall_timeout() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 8 << 20, 1)
                .build(Compression::None),
        )
        .build();
    reg.push_image("slow", Some("v1"), &img);
    let proxy = StallProxy::start(&reg.host(), 1 << 20);
    let d = daemon(&[proxy.host()], "[image]\nstall_timeout_secs = 2\n");
    let mut c = d.images().await;
    let start = std::time::Instant::now();
    let err = pull(&mut c, &format!("{}/slow:v1", proxy.host()))
        .await
        .expect_err("stalled");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("sent nothing for 2s"), "{err:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    assert!(list(&mut c).await.is_empty());
    assert_nothing_left(&d, (0, 0));
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_one_download_and_survive_kill_9() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 4 << 20, 9)
                .build(Compression::Gzip),
        )
        .build();
    let layer = img.layers[0].digest.clone();
    reg.push_image("shared", Some("v1"), &img);
    let mut d = daemon(&[reg.host()], "");
    let name = reg.image_ref("shared", "v1");
    let mut pulls = Vec::new();
    for _ in 0..5 {
        let mut c = d.images().await;
        let name = name.clone();
        pulls.push(tokio::spawn(async move { pull(&mut c, &name).await }));
    }
    for p in pulls {
        assert_eq!(p.await.expect("task").expect("pull"), img.config_digest);
    }
    let fetches = reg
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/shared/blobs/{layer} ")))
        .count();
    assert_eq!(fetches, 1, "one download for five pulls:\n{}", reg.log());

    // The pulled image is in the journal: a crash does not lose it.
    d.kill9();
    d.spawn();
    let mut c = d.images().await;
    assert_eq!(
        status(&mut c, &name).await.expect("after restart").id,
        img.config_digest
    );
}

#[tokio::test]
async fn a_pull_cut_short_by_a_crash_leaves_nothing_after_the_restart() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 8 << 20, 3)
                .build(Compression::None),
        )
        .build();
    reg.push_image("crash", Some("v1"), &img);
    let proxy = StallProxy::start(&reg.host(), 1 << 20);
    let mut d = daemon(&[proxy.host()], "");
    let name = format!("{}/crash:v1", proxy.host());
    let mut c = d.images().await;
    let pulling = tokio::spawn(async move { pull(&mut c, &name).await });
    berth_tests::eventually(
        std::time::Duration::from_secs(20),
        "the layer download to stall half-way",
        || async { (proxy.stalled_connections() > 0).then_some(()) },
    )
    .await;
    // The layer is half in the content store's ingest when berthd dies.
    assert!(entries(&d.root().join("content/ingest")) > 0 || stored(&d.root()).0 > 0);
    d.kill9();
    assert!(
        pulling.await.expect("task").is_err(),
        "the pull died with berthd"
    );
    d.spawn();
    let mut c = d.images().await;
    assert!(list(&mut c).await.is_empty(), "no half-pulled image");
    assert_nothing_left(&d, (0, 0));
}

/// A registry that answers every request with a manifest of `size` bytes
/// (no length given, so only what arrives tells): serves until dropped.
fn endless_manifest_registry(size: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < size && conn.write_all(&chunk).is_ok() {
                    sent += chunk.len();
                }
            });
        }
    });
    host
}

#[tokio::test]
async fn a_registry_that_sends_a_huge_manifest_is_refused_before_memory_fills() {
    let host = endless_manifest_registry(64 << 20);
    let d = daemon(std::slice::from_ref(&host), "");
    let mut c = d.images().await;
    let err = pull(&mut c, &format!("{host}/huge:v1"))
        .await
        .expect_err("a 64 MiB manifest");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("larger than 4194304 bytes"),
        "{err:?}"
    );
    assert!(list(&mut c).await.is_empty());
    assert_nothing_left(&d, (0, 0));
}

#[tokio::test]
async fn a_registry_lying_about_sizes_and_a_decompression_bomb_are_refused() {
    let reg = Registry::start();
    let d = daemon(&[reg.host()], "[image]\nmax_unpack_ratio = 10\n");
    let mut c = d.images().await;

    // A blob longer than its descriptor says: refused as soon as it runs
    // past, not after the whole of it is stored.
    let layer = LayerBuilder::new()
        .file("x", "x".repeat(5000), 0o644)
        .build(Compression::Gzip);
    let img = ImageBuilder::new().layer(layer.clone()).build();
    reg.push_image("long", Some("v1"), &img);
    let mut longer = layer.bytes.clone();
    longer.extend(std::iter::repeat_n(7u8, 4 << 20));
    reg.corrupt_blob(&layer.digest, &longer);
    let err = pull(&mut c, &reg.image_ref("long", "v1"))
        .await
        .expect_err("a longer blob");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("descriptor says"), "{err:?}");
    assert_nothing_left(&d, (0, 0));

    // 300 MiB of zeros in a few MiB: past 256 MiB (10 times its size is
    // less) the pull stops, with nothing kept.
    let bomb = LayerBuilder::new()
        .zero_file("zeros", 300 << 20)
        .build(Compression::Gzip);
    assert!(bomb.bytes.len() < 8 << 20, "{} bytes", bomb.bytes.len());
    let img = ImageBuilder::new().layer(bomb).build();
    reg.push_image("bomb", Some("v1"), &img);
    let err = pull(&mut c, &reg.image_ref("bomb", "v1"))
        .await
        .expect_err("a bomb");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("decompression bomb"), "{err:?}");
    assert!(list(&mut c).await.is_empty());
    assert_nothing_left(&d, (0, 0));

    // An honest image still comes through the same daemon.
    let fine = simple_image("after");
    reg.push_image("fine", Some("v1"), &fine);
    pull(&mut c, &reg.image_ref("fine", "v1"))
        .await
        .expect("an honest image");
}

#[tokio::test]
async fn pulls_of_different_images_wait_their_turn() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .random_file("big", 4 << 20, 5)
                .build(Compression::None),
        )
        .build();
    reg.push_image("slow", Some("v1"), &img);
    reg.push_image("quick", Some("v1"), &simple_image("quick"));
    let proxy = StallProxy::start(&reg.host(), 1 << 20);
    // One turn: a pull that stalls holds it until its stall timeout, and
    // the next pull starts only then.
    for (turns, waits) in [(1, true), (2, false)] {
        let config = format!("[image]\nstall_timeout_secs = 3\nmax_concurrent_pulls = {turns}\n");
        let d = daemon(&[proxy.host(), reg.host()], &config);
        let mut slow_client = d.images().await;
        let mut c = d.images().await;
        let slow_name = format!("{}/slow:v1", proxy.host());
        let slow = tokio::spawn(async move { pull(&mut slow_client, &slow_name).await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let start = std::time::Instant::now();
        pull(&mut c, &reg.image_ref("quick", "v1"))
            .await
            .expect("the quick image");
        let waited = start.elapsed() >= std::time::Duration::from_secs(2);
        assert_eq!(waited, waits, "{turns} turns: {:?}", start.elapsed());
        let err = slow.await.expect("join").expect_err("stalled");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
}
