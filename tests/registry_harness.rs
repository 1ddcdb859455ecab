//! Checks the registry harness itself: images built by `berth_tests::image`
//! go into a real docker-registry and come back byte for byte, auth works,
//! and the stalling proxy stalls. No berthd is involved.

use berth_tests::image::{
    sha256_digest, Compression, ImageBuilder, LayerBuilder, Platform, DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use berth_tests::registry::{http_get, Registry, StallProxy};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

fn small_image(platform: &Platform, marker: &str) -> berth_tests::image::BuiltImage {
    let layer = LayerBuilder::new()
        .file("/etc/marker", marker, 0o644)
        .build(Compression::Gzip);
    ImageBuilder::new()
        .layer(layer)
        .platform(
            &platform.os,
            &platform.architecture,
            platform.variant.as_deref(),
        )
        .cmd(&["/bin/sh"])
        .build()
}

/// PAX records of one entry, as (key, value).
type Pax = Vec<(String, Vec<u8>)>;

/// Names and PAX records of the entries in an uncompressed tar.
fn tar_entries(tar_bytes: &[u8]) -> Vec<(Vec<u8>, Pax)> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path_bytes().into_owned();
        let mut pax = Vec::new();
        if let Some(exts) = entry.pax_extensions().expect("pax") {
            for ext in exts {
                let ext = ext.expect("pax record");
                pax.push((
                    ext.key().expect("pax key").to_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        out.push((name, pax));
    }
    out
}

#[test]
fn an_image_pushed_by_tag_comes_back_intact() {
    let registry = Registry::start();
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let top = LayerBuilder::new()
        .dir("/srv", 0o755)
        .file_owned("/srv/app.conf", "port=80\n", 0o600, 1002, 1002)
        .xattr("/srv/app.conf", "user.origin", b"harness")
        .symlink("/srv/link", "../etc/passwd")
        .hardlink("/srv/hard", "/srv/app.conf")
        .char_device("/srv/null", 1, 3)
        .whiteout("/etc/motd")
        .opaque("/var")
        .raw_path_file("../escape", "out")
        .build(Compression::Zstd);
    assert_eq!(base.media_type, OCI_LAYER_GZIP);
    assert_eq!(top.media_type, OCI_LAYER_ZSTD);
    let image = ImageBuilder::new()
        .layer(base.clone())
        .layer(top.clone())
        .user("app")
        .env("PATH", "/bin")
        .cmd(&["sleep", "1000"])
        .working_dir("/srv")
        .stop_signal("SIGUSR1")
        .label("harness", "yes")
        .build();
    let pushed = registry.push_image("test/busybox", Some("v1"), &image);
    assert_eq!(pushed.manifest_digest, image.manifest_digest);
    assert_eq!(pushed.config_digest, image.config_digest);

    let r = registry.get("/v2/test/busybox/manifests/v1", Some(OCI_MANIFEST));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(sha256_digest(&r.body), image.manifest_digest);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    let manifest = r.json();
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest"))
        .collect();
    assert_eq!(layers, [base.digest.as_str(), top.digest.as_str()]);
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());

    for layer in [&base, &top] {
        let r = registry.get(&format!("/v2/test/busybox/blobs/{}", layer.digest), None);
        assert_eq!(r.status, 200);
        assert_eq!(sha256_digest(&r.body), layer.digest);
    }
    let config = registry
        .get(
            &format!("/v2/test/busybox/blobs/{}", image.config_digest),
            None,
        )
        .json();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([base.diff_id, top.diff_id])
    );
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(config["config"]["StopSignal"], "SIGUSR1");

    // The layers are what the builder was asked for: the raw name survives
    // unsanitised, the xattr rides in a PAX record, and the diff_id is the
    // digest of the uncompressed tar.
    let tar = zstd::decode_all(top.bytes.as_slice()).expect("unzstd");
    assert_eq!(sha256_digest(&tar), top.diff_id);
    assert_eq!(tar.len() as u64, top.uncompressed_size);
    let entries = tar_entries(&tar);
    let names: Vec<String> = entries
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    for expected in [
        "srv/app.conf",
        "etc/.wh.motd",
        "var/.wh..wh..opq",
        "../escape",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let (_, pax) = entries
        .iter()
        .find(|(n, _)| n == b"srv/app.conf")
        .expect("app.conf entry");
    assert!(pax.contains(&("SCHILY.xattr.user.origin".to_string(), b"harness".to_vec())));

    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(base.bytes.as_slice())
        .read_to_end(&mut gz)
        .expect("gunzip");
    assert_eq!(sha256_digest(&gz), base.diff_id);
    let names: Vec<Vec<u8>> = tar_entries(&gz).into_iter().map(|(n, _)| n).collect();
    for expected in [&b"bin/busybox"[..], b"bin/sh", b"etc/passwd", b"tmp"] {
        assert!(names.iter().any(|n| n.as_slice() == expected));
    }
}

#[test]
fn indexes_and_docker_images_push_and_fetch() {
    let registry = Registry::start();
    let amd64 = small_image(&Platform::linux_amd64(), "amd64");
    let arm64 = small_image(&Platform::linux_arm64(), "arm64");
    let entries = [
        (Platform::linux_amd64(), &amd64),
        (Platform::linux_arm64(), &arm64),
    ];
    let index = registry.push_index("multi", Some("latest"), &entries);
    let r = registry.get("/v2/multi/manifests/latest", Some(ACCEPT_ALL));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(sha256_digest(&r.body), index);
    let listed = r.json();
    let manifests = listed["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[1]["digest"], arm64.manifest_digest.as_str());
    assert_eq!(
        manifests[1]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
    // Each image can be fetched by the digest the index lists.
    let r = registry.get(
        &format!("/v2/multi/manifests/{}", amd64.manifest_digest),
        Some(OCI_MANIFEST),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, amd64.manifest_bytes);

    let list = registry.push_manifest_list("multi", Some("list"), &entries);
    let r = registry.get("/v2/multi/manifests/list", Some(ACCEPT_ALL));
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST_LIST));
    assert_eq!(sha256_digest(&r.body), list);

    let docker = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("a", "b", 0o644)
                .build(Compression::Gzip),
        )
        .docker_schema2()
        .build();
    let pushed = registry.push_image("docker", None, &docker);
    let r = registry.get(
        &format!("/v2/docker/manifests/{}", pushed.manifest_digest),
        Some(DOCKER_MANIFEST),
    );
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    let m = r.json();
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
}

#[test]
fn auth_registry_wants_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let v2 = format!("{}/v2/", registry.url());
    let anonymous = http_get(&v2, None, None);
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.header("www-authenticate").expect("challenge");
    assert!(challenge.starts_with("Basic"), "{challenge}");
    assert_eq!(http_get(&v2, None, Some(("alice", "wrong"))).status, 401);
    assert_eq!(http_get(&v2, None, Some(("alice", "s3cret"))).status, 200);

    let image = small_image(&Platform::linux_amd64(), "private");
    registry.push_image("private/app", Some("v1"), &image);
    let path = "/v2/private/app/manifests/v1";
    let url = format!("{}{path}", registry.url());
    assert_eq!(http_get(&url, Some(OCI_MANIFEST), None).status, 401);
    let r = registry.get(path, Some(OCI_MANIFEST));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, image.manifest_bytes);
}

#[test]
fn a_corrupted_blob_is_served_under_its_old_digest() {
    let registry = Registry::start();
    let image = small_image(&Platform::linux_amd64(), "corrupt me");
    registry.push_image("bad", Some("v1"), &image);
    let layer = &image.layers[0];
    registry.corrupt_blob(&layer.digest, b"not the layer at all");
    let r = registry.get(&format!("/v2/bad/blobs/{}", layer.digest), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"not the layer at all");
    // The manifest still points at it.
    let r = registry.get("/v2/bad/manifests/v1", Some(OCI_MANIFEST));
    assert_eq!(r.body, image.manifest_bytes);
}

#[test]
fn the_stall_proxy_passes_small_replies_and_stalls_big_ones() {
    let registry = Registry::start();
    let big = LayerBuilder::new()
        .random_file("blob", 4 << 20, 7)
        .build(Compression::None);
    let digest = registry.push_blob("big", &big.bytes);
    let limit = 64 * 1024;
    let proxy = StallProxy::start(&registry.host(), limit);

    let r = http_get(&format!("{}/v2/", proxy.url()), None, None);
    assert_eq!(r.status, 200);
    assert_eq!(proxy.stalled_connections(), 0);

    let mut conn = TcpStream::connect(proxy.host()).expect("connect to proxy");
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    write!(
        conn,
        "GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        registry.host()
    )
    .expect("send request");
    let mut got = 0usize;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "unexpected read error {e}"
                );
                break;
            }
        }
    }
    assert_eq!(
        got, limit,
        "the proxy passes exactly the first {limit} bytes"
    );
    assert!(got < big.bytes.len());
    assert_eq!(proxy.stalled_connections(), 1);
}
