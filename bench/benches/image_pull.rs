//! Image pulls: a cold pull of a ~200 MB, 5-layer image (gzip) from a local
//! registry, beside the physical limit measured in the same run (the same
//! blobs fetched with curl and unpacked with GNU tar, all five at once) and
//! containerd's CRI PullImage from the same registry; then ImageStatus and
//! ListImages latency with 200 images.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench image_pull

use berth_bench::{table, time_serial, Peer, Samples};
use berth_protocol::cri::image_service_client::ImageServiceClient;
use berth_protocol::cri::*;
use berth_tests::image::{BuiltImage, Compression, ImageBuilder, LayerBuilder};
use berth_tests::registry::Registry;
use berth_tests::Daemon;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const LAYERS: usize = 5;
const LAYER_BYTES: usize = 40 << 20;
const RUNS: usize = 3;
const MANY: usize = 200;

/// Half random, half text-like bytes: layers compress about as real ones
/// do, so decompression costs what it costs in practice.
fn layer(seed: u64) -> berth_tests::image::BuiltLayer {
    let mut text = Vec::with_capacity(LAYER_BYTES / 2);
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let words = [
        "container",
        "runtime",
        "layer",
        "berth",
        "pod",
        "image",
        "overlay",
        "journal",
    ];
    while text.len() < LAYER_BYTES / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(words[(x % 8) as usize].as_bytes());
        text.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    LayerBuilder::new()
        .random_file(
            &format!("data/random-{seed}"),
            (LAYER_BYTES / 2) as u64,
            seed,
        )
        .file(&format!("data/text-{seed}"), text, 0o644)
        .build(Compression::Gzip)
}

fn big_image() -> BuiltImage {
    let mut b = ImageBuilder::new();
    for i in 0..LAYERS {
        b = b.layer(layer(i as u64 + 1));
    }
    b.build()
}

async fn images(socket: &Path) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(berth_tests::connect(socket).await)
}

async fn pull(c: &mut ImageServiceClient<Channel>, image: &str) -> String {
    c.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("pull {image}: {e}"))
    .into_inner()
    .image_ref
}

async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) {
    c.remove_image(RemoveImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("remove {image}: {e}"));
}

/// The limit: curl | tar -xz for every layer at once, into a fresh dir.
fn curl_tar(reg: &Registry, img: &BuiltImage, sync: bool) -> Duration {
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-tar-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let start = Instant::now();
    let children: Vec<_> = img
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let out = dir.path().join(format!("l{i}"));
            std::fs::create_dir(&out).expect("mkdir");
            let url = format!("{}/v2/bench/blobs/{}", reg.url(), l.digest);
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "curl -sf '{url}' | tar -xzf - -C '{}'",
                    out.display()
                ))
                .spawn()
                .expect("curl | tar")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "curl | tar failed");
    }
    if sync {
        let _ = Command::new("sync").arg("-f").arg(dir.path()).status();
    }
    start.elapsed()
}

fn samples(name: &str, runs: Vec<Duration>) -> Samples {
    let wall = runs.iter().sum();
    Samples::new(name, runs, wall)
}

async fn cold_pulls(name: &str, socket: &Path, image: &str, fresh: impl Fn()) -> Samples {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        fresh();
        let mut c = images(socket).await;
        let t = Instant::now();
        pull(&mut c, image).await;
        runs.push(t.elapsed());
        remove(&mut c, image).await;
    }
    samples(name, runs)
}

async fn lookups(name: &str, socket: &Path, tags: &[String]) -> (Samples, Samples) {
    let c = images(socket).await;
    let mut i = 0;
    let status = time_serial(&format!("{name} ImageStatus, {MANY} images"), 2000, || {
        let mut c = c.clone();
        i = (i + 1) % tags.len();
        let image = tags[i].clone();
        async move {
            c.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("status");
        }
    })
    .await;
    let list = time_serial(&format!("{name} ListImages, {MANY} images"), 500, || {
        let mut c = c.clone();
        async move {
            let n = c
                .list_images(ListImagesRequest { filter: None })
                .await
                .expect("list")
                .into_inner()
                .images
                .len();
            assert!(n >= MANY);
        }
    })
    .await;
    (status, list)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reg = Registry::start();
    eprintln!("building a {}-layer image...", LAYERS);
    let img = big_image();
    let compressed: usize = img.layers.iter().map(|l| l.bytes.len()).sum();
    let unpacked: u64 = img.layers.iter().map(|l| l.uncompressed_size).sum();
    reg.push_image("bench", Some("v1"), &img);
    let image = reg.image_ref("bench", "v1");
    // Read every blob once so that the registry's files are in the page
    // cache alike for every contender.
    curl_tar(&reg, &img, false);

    let limit = samples(
        "limit: curl | tar -xz, 5 at once",
        (0..RUNS).map(|_| curl_tar(&reg, &img, false)).collect(),
    );
    let limit_sync = samples(
        "limit + sync",
        (0..RUNS).map(|_| curl_tar(&reg, &img, true)).collect(),
    );

    let extra = format!("[registries.\"{}\"]\ninsecure = true\n", reg.host());
    let mut d = Daemon::configure_logging(&extra, "warn");
    d.spawn();
    let berth = cold_pulls("berth PullImage (cold)", &d.cri_socket(), &image, || {}).await;

    let peer = Peer::start(&["--mirror".into(), format!("{}={}", reg.host(), reg.url())]);
    let containerd = match &peer {
        Some(p) => {
            Some(cold_pulls("containerd PullImage (cold)", &p.socket(), &image, || {}).await)
        }
        None => {
            println!("(containerd peer not available)");
            None
        }
    };

    let mut rows = vec![&limit, &limit_sync, &berth];
    if let Some(c) = &containerd {
        rows.push(c);
    }
    let mut refs = vec![&limit, &limit_sync];
    if let Some(c) = &containerd {
        refs.push(c);
    }
    table(
        &format!(
            "cold pull of a {LAYERS}-layer image: {:.0} MB compressed, {:.0} MB unpacked",
            compressed as f64 / 1e6,
            unpacked as f64 / 1e6
        ),
        &rows,
        &refs,
    );
    for s in &rows {
        let secs = s.p50().as_secs_f64();
        println!(
            "{:<40} {:>6.2} s   {:>7.1} MB/s compressed   {:>7.1} MB/s unpacked",
            s.name,
            secs,
            compressed as f64 / 1e6 / secs,
            unpacked as f64 / 1e6 / secs
        );
    }
    println!(
        "berth at {:.2}× the speed of the limit ({:.2}× with sync){}",
        limit.p50().as_secs_f64() / berth.p50().as_secs_f64(),
        limit_sync.p50().as_secs_f64() / berth.p50().as_secs_f64(),
        containerd
            .as_ref()
            .map(|c| format!(
                ", {:.2}× containerd's",
                c.p50().as_secs_f64() / berth.p50().as_secs_f64()
            ))
            .unwrap_or_default()
    );

    // 200 small images for the lookups.
    let base = LayerBuilder::new().busybox().build(Compression::Gzip);
    let mut tags = Vec::new();
    for i in 0..MANY {
        let small = ImageBuilder::new()
            .layer(base.clone())
            .label("n", &i.to_string())
            .build();
        reg.push_image("many", Some(&format!("t{i}")), &small);
        tags.push(reg.image_ref("many", &format!("t{i}")));
    }
    let mut c = images(&d.cri_socket()).await;
    for t in &tags {
        pull(&mut c, t).await;
    }
    let (bs, bl) = lookups("berth", &d.cri_socket(), &tags).await;
    let mut rows = vec![bs, bl];
    if let Some(p) = &peer {
        let mut c = images(&p.socket()).await;
        for t in &tags {
            pull(&mut c, t).await;
        }
        let (cs, cl) = lookups("containerd", &p.socket(), &tags).await;
        rows.extend([cs, cl]);
    }
    let refs: Vec<&Samples> = rows.iter().skip(2).collect();
    let all: Vec<&Samples> = rows.iter().collect();
    table("image lookups", &all, &refs);
    d.kill9();
}
