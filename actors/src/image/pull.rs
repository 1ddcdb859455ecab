//! PullImage: resolve the reference through mirrors and upstream, pick the
//! node's platform from an index, fetch the config, and fetch and unpack
//! every layer at once, each in one streaming pass: the bytes from the
//! registry are hashed and written to the content store while they are
//! decompressed, hashed again (diff ID) and unpacked into a staging
//! snapshot. A layer is committed only when both digests match; the image
//! is recorded (by the actor) only when every layer is in place, so a
//! failed or cancelled pull leaves no visible image and no half snapshot.

use super::backend::{ImageBackend, CONFIG_MAX};
use super::content::{BlobWriter, Tee};
use super::manifest::{Descriptor, ImageConfigFile, Manifest};
use super::reference::{Digest, Reference};
use super::registry::{Credentials, Session};
use super::snapshots::chain_ids;
use super::unpack;
use crate::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a pull produced, for the actor to record.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image ID: its config's digest.
    pub id: Digest,
    pub repo_tag: Option<String>,
    /// `repo@digest` of what the reference resolved to (the index, for a
    /// multi-platform image).
    pub repo_digest: String,
    /// Every blob the image holds on to: index, manifest, config, layers.
    pub blobs: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
    /// Manifest, config and compressed layers, in bytes.
    pub size: u64,
    pub user: String,
    /// Keeps garbage collection away until the image is recorded.
    pub hold: Arc<tokio::sync::OwnedRwLockReadGuard<()>>,
}

/// The work of one pull; runs off the actor.
pub async fn pull(
    backend: Arc<ImageBackend>,
    reference: Reference,
    creds: Option<Credentials>,
) -> Result<Pulled> {
    // Taken before the garbage-collection hold, so that pulls waiting
    // their turn do not keep collection away.
    let _turn = backend
        .pull_turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::Unavailable("the image service is shutting down".into()))?;
    let hold = Arc::new(backend.gc_lock.clone().read_owned().await);
    let stall = backend.config.stall_timeout;
    let mut session = resolve(&backend, &reference, creds, stall).await?;
    let top_ref = reference.manifest_reference();
    let (top_bytes, top_type) = with_stall(stall, "manifest", session.manifest(&top_ref)).await?;
    let top_digest = Digest::of(&top_bytes);
    if let Some(want) = &reference.digest {
        if *want != top_digest {
            return Err(Error::DataLoss(format!(
                "manifest of {reference} has digest {top_digest}"
            )));
        }
    }
    let top = Manifest::parse(&top_bytes, &top_type)?;
    let mut blobs = vec![top_digest.clone()];
    let mut documents = vec![(top_digest.clone(), top_bytes.clone())];

    let (manifest, manifest_len) = if top.is_index(&top_type) {
        let platform = &backend.config.platform;
        let entry = top.select(platform).ok_or_else(|| {
            Error::NotFound(format!("{reference} has no image for platform {platform}"))
        })?;
        let digest = entry.digest.clone();
        let (bytes, t) = with_stall(stall, "manifest", session.manifest(digest.as_str())).await?;
        if Digest::of(&bytes) != digest {
            return Err(Error::DataLoss(format!(
                "manifest {digest} of {reference} does not match its digest"
            )));
        }
        let m = Manifest::parse(&bytes, &t)?;
        if m.is_index(&t) {
            return Err(Error::FailedPrecondition(format!(
                "{reference}: nested indexes are not supported"
            )));
        }
        blobs.push(digest.clone());
        let len = bytes.len() as u64;
        documents.push((digest, bytes));
        (m, len)
    } else {
        (top, top_bytes.len() as u64)
    };
    let (config_desc, layers) = manifest.image_parts()?;

    let config_bytes = fetch_small_blob(&backend, &mut session, config_desc, stall).await?;
    let config = ImageConfigFile::parse(&config_bytes)?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != layers.len() {
        return Err(Error::DataLoss(format!(
            "{reference}: the config lists {} layers, the manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    let chains = chain_ids(&diff_ids);

    let session = Arc::new(tokio::sync::Mutex::new(session));
    let work: Vec<(Descriptor, Digest, Digest)> = layers
        .iter()
        .cloned()
        .zip(diff_ids.iter().cloned())
        .zip(chains.iter().cloned())
        .map(|((l, d), c)| (l, d, c))
        .collect();
    let jobs = work.into_iter().map(|(layer, diff, chain)| {
        let backend = backend.clone();
        let session = session.clone();
        async move {
            if backend.snapshots.has(&chain) {
                return Ok(());
            }
            let b = backend.clone();
            let key = chain.to_string();
            backend
                .layers
                .join(&key, move || fetch_layer(b, session, layer, diff, chain))
                .await
        }
    });
    // Every layer settles before the pull answers, even after a failure, so
    // that nothing of this pull is still being written when the actor
    // collects what a failed pull stored.
    let outcomes: Vec<Result<()>> = futures::stream::iter(jobs)
        .buffer_unordered(backend.config.max_concurrent_downloads.max(1))
        .collect()
        .await;
    outcomes.into_iter().collect::<Result<Vec<()>>>()?;

    for (digest, bytes) in &documents {
        backend.content.put(digest, bytes)?;
    }
    blobs.push(config_desc.digest.clone());
    blobs.extend(layers.iter().map(|l| l.digest.clone()));
    sync_root(&backend);
    Ok(Pulled {
        id: config_desc.digest.clone(),
        repo_tag: reference.repo_tag(),
        repo_digest: reference.repo_digest(&top_digest),
        blobs,
        chain_ids: chains,
        size: manifest_len + config_desc.size + layers.iter().map(|l| l.size).sum::<u64>(),
        user: config.user(),
        hold,
    })
}

/// The first endpoint that answers for the reference's manifest: mirrors in
/// order, then the upstream. A mirror's failure falls through; the
/// upstream's is the answer.
async fn resolve(
    backend: &ImageBackend,
    reference: &Reference,
    creds: Option<Credentials>,
    stall: Duration,
) -> Result<Session> {
    let mut tried = Vec::new();
    for endpoint in backend.registries.endpoints(reference)? {
        let mirror = endpoint.mirror;
        let base = endpoint.base.clone();
        let mut session = Session::new(endpoint, reference, creds.clone());
        if !mirror {
            return Ok(session);
        }
        let probe = with_stall(
            stall,
            "manifest",
            session.manifest(&reference.manifest_reference()),
        )
        .await;
        match probe {
            Ok(_) => return Ok(session),
            Err(e) => {
                tracing::info!(mirror = %base, %reference, error = %e, "mirror failed; trying the next endpoint");
                tried.push(format!("{base}: {e}"));
            }
        }
    }
    Err(Error::Unavailable(format!(
        "no endpoint for {reference}: {}",
        tried.join("; ")
    )))
}

async fn with_stall<T>(
    stall: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(stall, fut).await.unwrap_or_else(|_| {
        Err(Error::DeadlineExceeded(format!(
            "registry sent no {what} within {}s",
            stall.as_secs()
        )))
    })
}

/// A small blob (the config), from the content store or the registry.
async fn fetch_small_blob(
    backend: &ImageBackend,
    session: &mut Session,
    desc: &Descriptor,
    stall: Duration,
) -> Result<Vec<u8>> {
    if backend.content.has(&desc.digest) {
        return backend.content.read(&desc.digest);
    }
    if desc.size > CONFIG_MAX {
        return Err(Error::FailedPrecondition(format!(
            "config blob {} is {} bytes; berth reads at most {CONFIG_MAX}",
            desc.digest, desc.size
        )));
    }
    let resp = with_stall(stall, "config", session.blob(&desc.digest)).await?;
    let what = format!("config blob {}", desc.digest);
    let bytes = with_stall(stall, "config", session.read_capped(resp, desc.size, &what)).await?;
    if Digest::of(&bytes) != desc.digest {
        return Err(Error::DataLoss(format!(
            "config blob {} does not match its digest",
            desc.digest
        )));
    }
    backend.content.put(&desc.digest, &bytes)?;
    Ok(bytes.to_vec())
}

/// A reader that fails once more than `limit` bytes came through it.
struct Capped<R> {
    inner: R,
    limit: u64,
    seen: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            self.over = true;
            return Err(io::Error::other("over the unpack limit"));
        }
        Ok(n)
    }
}

/// Feeds a blocking reader from the download task.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Decompresses, checks the diff ID and unpacks one layer into a staging
/// snapshot, keeping the compressed bytes in the content store when they
/// come from the registry. Blocking: runs on the blocking pool.
fn unpack_layer(
    backend: &ImageBackend,
    source: impl Read,
    blob: Option<BlobWriter>,
    layer: &Descriptor,
    diff_id: &Digest,
    chain: &Digest,
) -> Result<()> {
    let staging = backend.snapshots.staging()?;
    let mut tee = Tee {
        inner: source,
        out: blob,
    };
    let corrupt =
        |e: io::Error| Error::storing(&e, format!("layer {}: {e}", layer.digest), Error::DataLoss);
    let limit = backend.config.unpack_limit(layer.size);
    let bomb = || {
        Error::ResourceExhausted(format!(
            "layer {} ({} bytes) unpacks to more than {} bytes; refused as a decompression bomb (image.max_unpack_ratio)",
            layer.digest,
            layer.size,
            limit.unwrap_or(u64::MAX)
        ))
    };
    {
        let decompressed = unpack::decompress(&mut tee).map_err(corrupt)?;
        let mut hashed = super::content::Hashing::new(Capped {
            inner: decompressed,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            over: false,
        });
        let applied = unpack::apply(&mut hashed, staging.path());
        // The rest of the stream (past the tar's end) counts too.
        let rest = applied
            .is_ok()
            .then(|| io::copy(&mut hashed, &mut io::sink()));
        if hashed.inner().over {
            return Err(bomb());
        }
        applied.map_err(|e| match e {
            Error::FailedPrecondition(m) => {
                Error::FailedPrecondition(format!("layer {}: {m}", layer.digest))
            }
            other => other,
        })?;
        rest.transpose().map_err(corrupt)?;
        let (got, _) = hashed.finish().map_err(corrupt)?;
        if got != *diff_id {
            return Err(Error::DataLoss(format!(
                "layer {} unpacks to {got}, not the diff ID {diff_id} its config names",
                layer.digest
            )));
        }
    }
    io::copy(&mut tee, &mut io::sink()).map_err(corrupt)?;
    if let Some(blob) = tee.out.take() {
        blob.commit()?;
    }
    backend.snapshots.commit(staging, chain)
}

/// Fetches and unpacks one layer (from the content store if the blob is
/// already there).
async fn fetch_layer(
    backend: Arc<ImageBackend>,
    session: Arc<tokio::sync::Mutex<Session>>,
    layer: Descriptor,
    diff_id: Digest,
    chain: Digest,
) -> Result<()> {
    if backend.content.has(&layer.digest) {
        let path = backend.content.path(&layer.digest);
        let b = backend.clone();
        return tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
            unpack_layer(&b, file, None, &layer, &diff_id, &chain)
        })
        .await
        .map_err(|e| Error::Internal(format!("unpack task: {e}")))?;
    }
    let stall = backend.config.stall_timeout;
    let resp = {
        let mut s = session.lock().await;
        with_stall(stall, "layer", s.blob(&layer.digest)).await?
    };
    let writer = backend.content.writer(layer.digest.clone())?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
    let b = backend.clone();
    let (l, d, c) = (layer.clone(), diff_id.clone(), chain.clone());
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        unpack_layer(&b, reader, Some(writer), &l, &d, &c)
    });

    let lied = |n: u64| {
        Error::DataLoss(format!(
            "layer {}: the registry sends {n} bytes; its descriptor says {}",
            layer.digest, layer.size
        ))
    };
    if let Some(n) = resp.content_length().filter(|n| *n != layer.size) {
        return Err(lied(n));
    }
    let mut stream = resp.bytes_stream();
    let mut download_error = None;
    let mut received = 0u64;
    loop {
        match tokio::time::timeout(stall, stream.next()).await {
            Err(_) => {
                download_error = Some(Error::DeadlineExceeded(format!(
                    "layer {}: the registry sent nothing for {}s",
                    layer.digest,
                    stall.as_secs()
                )));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                download_error = Some(Error::Unavailable(format!("layer {}: {e}", layer.digest)));
                break;
            }
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if received > layer.size {
                    download_error = Some(Error::DataLoss(format!(
                        "layer {}: the registry sent more than the {} bytes its descriptor says",
                        layer.digest, layer.size
                    )));
                    break;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    // The unpacker stopped: its error is the answer.
                    break;
                }
            }
        }
    }
    if let Some(e) = &download_error {
        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| Error::Internal(format!("unpack task: {e}")))?;
    match download_error {
        Some(e) => Err(e),
        None => unpacked,
    }
}

/// Makes everything the pull wrote durable before the image is recorded.
fn sync_root(backend: &ImageBackend) {
    if let Ok(f) = std::fs::File::open(&backend.config.root) {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on a file descriptor this function owns.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}
