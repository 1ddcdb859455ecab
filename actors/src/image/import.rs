//! ImportImage: loading images from a tarball on berthd's host, for nodes
//! that cannot reach a registry. Two formats are read, either of them as a
//! plain tar or compressed as a whole (gzip or zstd, told by the first
//! bytes):
//!
//! - An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), as
//!   `ctr export`, skopeo, buildx and docker 25+ write it. Each entry of
//!   `index.json` is an image, or an index of which the node's platform is
//!   taken. An entry's name is its `io.containerd.image.name` annotation,
//!   or its `org.opencontainers.image.ref.name` when that is a whole
//!   reference. A ref name that is only a tag (`v1`, what the OCI spec
//!   suggests) has no repository to belong to: such an image is imported
//!   under its ID alone, with no tag and no repo digest.
//! - A `docker save` archive (`manifest.json`, a config and one tar per
//!   layer). An OCI manifest is made up for each image and stored, so that
//!   the image has a `repo@digest` name as a pulled one does.
//!
//! An archive may be large, so it is never held in memory: the first pass
//! streams every `blobs/sha256/` member into the content store (its digest
//! checked on the way) and hashes the other members; a second pass, for
//! docker archives only, stores the layer tars the images need, now that
//! their digests are known. Layers are then unpacked from the content store
//! into snapshots exactly as a pull unpacks them, sharing the work with a
//! pull of the same layer. The images are recorded by the actor; until then
//! the import holds off garbage collection, and after a failure the
//! collection removes what it stored.

use super::backend::ImageBackend;
use super::content::Hashing;
use super::manifest::{Descriptor, ImageConfigFile, Manifest, Platform};
use super::pull::Pulled;
use super::reference::{Digest, Reference};
use super::registry::OCI_MANIFEST;
use super::snapshots::chain_ids;
use super::unpack;
use crate::{Error, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The annotations an OCI layout names its images with.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Members other than blobs up to this size are kept in memory during the
/// first pass (configs and small layers of docker archives), within an
/// overall budget; the rest are stored by the second pass.
const SMALL_MEMBER: u64 = 4 << 20;
const SMALL_BUDGET: u64 = 64 << 20;
/// The archive's own documents (index.json, manifest.json, oci-layout) are
/// always kept, up to this size.
const DOCUMENT_LIMIT: u64 = 16 << 20;

/// One image an import stored, for the actor to record.
pub(super) struct Imported {
    /// The image's content, as a pull describes it. A pull gives an image
    /// one name, an import any number: they are in the fields below, and
    /// this one's `repo_tag` is None and `repo_digest` empty.
    pub image: Pulled,
    /// `repo:tag` names, normalised.
    pub repo_tags: Vec<String>,
    /// `repo@digest` names: the digest of the manifest (or index) each
    /// name resolved to in the archive.
    pub repo_digests: Vec<String>,
}

/// The work of one import; runs off the actor.
pub(super) async fn import(backend: Arc<ImageBackend>, path: PathBuf) -> Result<Vec<Imported>> {
    let hold = Arc::new(backend.gc_lock.clone().read_owned().await);
    let label = path.display().to_string();
    let b = backend.clone();
    let plans = tokio::task::spawn_blocking(move || read_archive(&b, &path))
        .await
        .map_err(|e| Error::Internal(format!("import task: {e}")))??;

    // Each distinct layer once, even when several images of the archive
    // share it.
    let mut seen = HashSet::new();
    let layers: Vec<LayerPlan> = plans
        .iter()
        .flat_map(|p| p.layers.iter())
        .filter(|l| seen.insert(l.chain.clone()))
        .cloned()
        .collect();
    let jobs = layers.into_iter().map(|layer| {
        let backend = backend.clone();
        async move {
            if backend.snapshots.has(&layer.chain) {
                return Ok(());
            }
            let b = backend.clone();
            let key = layer.chain.to_string();
            // Under the same key as a pull's layer, so that an import and a
            // pull of the same layer unpack it once.
            backend
                .layers
                .join(&key, move || async move {
                    tokio::task::spawn_blocking(move || unpack_stored(&b, &layer))
                        .await
                        .map_err(|e| Error::Internal(format!("unpack task: {e}")))?
                })
                .await
        }
    });
    // Every layer settles before the import answers, even after a failure,
    // so that nothing is still being written when the actor collects.
    let outcomes: Vec<Result<()>> = futures::stream::iter(jobs)
        .buffer_unordered(backend.config.max_concurrent_downloads.max(1))
        .collect()
        .await;
    outcomes
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .map_err(|e| within(&label, e))?;

    let b = backend.clone();
    tokio::task::spawn_blocking(move || sync_root(&b))
        .await
        .map_err(|e| Error::Internal(format!("sync task: {e}")))?;
    Ok(plans
        .into_iter()
        .map(|p| p.into_imported(hold.clone()))
        .collect())
}

/// An image found in the archive, with its content stored but its layers
/// not yet unpacked.
struct ImagePlan {
    id: Digest,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    /// Index, manifest, config and layer blobs.
    blobs: Vec<Digest>,
    layers: Vec<LayerPlan>,
    size: u64,
    user: String,
}

#[derive(Clone)]
struct LayerPlan {
    /// The layer blob in the content store.
    blob: Digest,
    diff_id: Digest,
    chain: Digest,
}

impl ImagePlan {
    /// Adds what another entry of the archive says of the same image
    /// (another name for it).
    fn merge(&mut self, other: ImagePlan) {
        for t in other.repo_tags {
            push_new(&mut self.repo_tags, t);
        }
        for d in other.repo_digests {
            push_new(&mut self.repo_digests, d);
        }
        for b in other.blobs {
            push_new(&mut self.blobs, b);
        }
    }

    fn into_imported(self, hold: Arc<tokio::sync::OwnedRwLockReadGuard<()>>) -> Imported {
        Imported {
            image: Pulled {
                id: self.id,
                repo_tag: None,
                repo_digest: String::new(),
                blobs: self.blobs,
                chain_ids: self.layers.iter().map(|l| l.chain.clone()).collect(),
                size: self.size,
                user: self.user,
                hold,
            },
            repo_tags: self.repo_tags,
            repo_digests: self.repo_digests,
        }
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Images with the same ID (several names for one image) become one.
fn merge_plans(plans: Vec<ImagePlan>) -> Vec<ImagePlan> {
    let mut out: Vec<ImagePlan> = Vec::new();
    for p in plans {
        match out.iter_mut().find(|o| o.id == p.id) {
            Some(o) => o.merge(p),
            None => out.push(p),
        }
    }
    out
}

/// Gives an error's message a prefix saying where it happened, keeping its
/// kind.
fn within(what: &str, e: Error) -> Error {
    let m = |m: String| format!("{what}: {m}");
    match e {
        Error::InvalidArgument(s) => Error::InvalidArgument(m(s)),
        Error::NotFound(s) => Error::NotFound(m(s)),
        Error::AlreadyExists(s) => Error::AlreadyExists(m(s)),
        Error::FailedPrecondition(s) => Error::FailedPrecondition(m(s)),
        Error::Unavailable(s) => Error::Unavailable(m(s)),
        Error::DeadlineExceeded(s) => Error::DeadlineExceeded(m(s)),
        Error::Unauthenticated(s) => Error::Unauthenticated(m(s)),
        Error::DataLoss(s) => Error::DataLoss(m(s)),
        Error::Internal(s) => Error::Internal(m(s)),
        Error::Journal(s) => Error::Journal(m(s)),
    }
}

// ---------------------------------------------------------------------------
// Reading the archive.

/// A regular member of the archive.
struct Member {
    digest: Digest,
    size: u64,
}

/// What the first pass learnt of the archive.
#[derive(Default)]
struct Scanned {
    /// Every regular member by name, with its digest.
    members: HashMap<String, Member>,
    /// Symbolic and hard links by name: the member they point at (docker
    /// links a layer tar that two images share).
    links: HashMap<String, String>,
    /// Small members other than blobs, kept in memory.
    small: HashMap<String, Vec<u8>>,
    /// Entries of any kind seen.
    entries: usize,
}

/// The archive, read one pass at a time.
struct Archive<'a> {
    path: &'a Path,
    label: String,
}

type Entry<'r> = tar::Entry<'r, Box<dyn Read>>;

impl<'a> Archive<'a> {
    fn new(path: &'a Path) -> Archive<'a> {
        Archive {
            path,
            label: path.display().to_string(),
        }
    }

    fn not_a_tar(&self, e: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!(
            "{} is not a tar archive (nor a gzip or zstd compressed one): {}",
            self.label,
            one_line(e)
        ))
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> Error {
        Error::DataLoss(format!(
            "{} is truncated or corrupt: {}",
            self.label,
            one_line(e)
        ))
    }

    /// Reads every entry in order, calling `each` with its normalised name.
    /// Entries whose name climbs out with `..` cannot name anything the
    /// formats use, and are skipped.
    fn each_entry(&self, mut each: impl FnMut(&str, &mut Entry<'_>) -> Result<()>) -> Result<()> {
        let file = File::open(self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("{}: no such file", self.label)),
            _ => Error::InvalidArgument(format!("cannot open {}: {e}", self.label)),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::InvalidArgument(format!("cannot open {}: {e}", self.label)))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a regular file",
                self.label
            )));
        }
        let reader = unpack::decompress(file).map_err(|e| self.corrupt(e))?;
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.not_a_tar(e))?;
        for (n, entry) in entries.enumerate() {
            // A bad first header means this was never a tar; a bad later
            // one, that it is damaged.
            let mut entry = entry.map_err(|e| {
                if n == 0 {
                    self.not_a_tar(e)
                } else {
                    self.corrupt(e)
                }
            })?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if let Some(name) = normalise(&raw) {
                each(&name, &mut entry)?;
            }
        }
        Ok(())
    }

    /// Copies a member's bytes to `out`, telling a damaged archive (a read
    /// error) from a failing store (a write error).
    fn copy(&self, name: &str, entry: &mut Entry<'_>, out: &mut impl Write) -> Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(format!("{name}: {e}"))),
            };
            out.write_all(&buf[..n])
                .map_err(|e| Error::Internal(format!("storing {name} of {}: {e}", self.label)))?;
            total += n as u64;
        }
    }

    /// The first pass: blobs into the content store (verified), other
    /// members hashed, small ones kept.
    fn scan(&self, backend: &ImageBackend) -> Result<Scanned> {
        let mut scanned = Scanned::default();
        let mut budget = SMALL_BUDGET;
        self.each_entry(|name, entry| {
            scanned.entries += 1;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                // A symlink is relative to its directory, a hard link to the
                // archive's root.
                let joined = match name.rsplit_once('/') {
                    Some((dir, _)) if kind.is_symlink() && !target.starts_with('/') => {
                        format!("{dir}/{target}")
                    }
                    _ => target,
                };
                if let Some(t) = normalise(&joined) {
                    scanned.links.insert(name.to_string(), t);
                }
                return Ok(());
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                return Ok(());
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            let member = if let Some(digest) = blob_name(name) {
                self.store_blob(backend, name, digest, entry)?
            } else if size <= DOCUMENT_LIMIT && is_document(name)
                || size <= SMALL_MEMBER && size <= budget
            {
                let mut bytes = Vec::with_capacity(size as usize);
                self.copy(name, entry, &mut bytes)?;
                if !is_document(name) {
                    budget = budget.saturating_sub(bytes.len() as u64);
                }
                let member = Member {
                    digest: Digest::of(&bytes),
                    size: bytes.len() as u64,
                };
                scanned.small.insert(name.to_string(), bytes);
                member
            } else {
                let (digest, size) = Hashing::new(&mut *entry)
                    .finish()
                    .map_err(|e| self.corrupt(format!("{name}: {e}")))?;
                Member { digest, size }
            };
            scanned.members.insert(name.to_string(), member);
            Ok(())
        })?;
        if scanned.entries == 0 {
            return Err(self.not_a_tar("no entries"));
        }
        Ok(scanned)
    }

    /// Streams a `blobs/sha256/<hex>` member into the content store; the
    /// writer refuses bytes that do not match the name. A blob already
    /// stored is only checked.
    fn store_blob(
        &self,
        backend: &ImageBackend,
        name: &str,
        digest: Digest,
        entry: &mut Entry<'_>,
    ) -> Result<Member> {
        let mismatch = |got: &Digest| {
            Error::DataLoss(format!(
                "{}: blob {name} does not match its digest (its bytes hash to {got})",
                self.label
            ))
        };
        if backend.content.has(&digest) {
            let (got, size) = Hashing::new(&mut *entry)
                .finish()
                .map_err(|e| self.corrupt(format!("{name}: {e}")))?;
            if got != digest {
                return Err(mismatch(&got));
            }
            return Ok(Member { digest, size });
        }
        let mut writer = backend.content.writer(digest.clone())?;
        let size = self.copy(name, entry, &mut writer)?;
        writer.commit().map_err(|e| match e {
            Error::DataLoss(m) => Error::DataLoss(format!(
                "{}: blob {name} does not match its digest: {m}",
                self.label
            )),
            other => other,
        })?;
        Ok(Member { digest, size })
    }

    /// The second pass: stores the members in `wanted` (name → digest)
    /// into the content store, the writer checking that they are what the
    /// first pass saw.
    fn store_members(
        &self,
        backend: &ImageBackend,
        mut wanted: HashMap<String, Digest>,
    ) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        self.each_entry(|name, entry| {
            let Some(digest) = wanted.remove(name) else {
                return Ok(());
            };
            if backend.content.has(&digest) {
                return Ok(());
            }
            let mut writer = backend.content.writer(digest)?;
            self.copy(name, entry, &mut writer)?;
            writer.commit().map_err(|e| match e {
                Error::DataLoss(m) => Error::DataLoss(format!(
                    "{}: {name} changed while it was being imported ({m})",
                    self.label
                )),
                other => other,
            })
        })?;
        match wanted.keys().next() {
            None => Ok(()),
            Some(name) => Err(Error::DataLoss(format!(
                "{}: {name} vanished while it was being imported",
                self.label
            ))),
        }
    }
}

/// The tar reader's errors quote what it found in place of a header, which
/// in a file that is no tar can be any text: the message is kept to one
/// short line.
fn one_line(e: impl std::fmt::Display) -> String {
    const MAX: usize = 120;
    let flat: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// A member name made relative, without `.` and empty parts; `None` if it
/// climbs above the archive's root.
fn normalise(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The digest a `blobs/sha256/<hex>` member name carries.
fn blob_name(name: &str) -> Option<Digest> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

fn is_document(name: &str) -> bool {
    matches!(name, "index.json" | "manifest.json" | "oci-layout")
}

impl Scanned {
    /// The regular member `name` is, following links.
    fn resolve(&self, name: &str) -> Option<(String, &Member)> {
        let mut name = normalise(name)?;
        // Links may chain; a loop ends here rather than spinning.
        for _ in 0..16 {
            if let Some(m) = self.members.get(&name) {
                return Some((name, m));
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}

/// Reads the archive and stores its content; answers the images found.
/// Blocking.
fn read_archive(backend: &ImageBackend, path: &Path) -> Result<Vec<ImagePlan>> {
    let archive = Archive::new(path);
    let scanned = archive.scan(backend)?;
    let plans = if scanned.members.contains_key("index.json") {
        oci_layout(backend, &archive, &scanned)?
    } else if scanned.members.contains_key("manifest.json") {
        docker_save(backend, &archive, &scanned)?
    } else {
        return Err(Error::InvalidArgument(format!(
            "{} holds neither index.json (an OCI image layout) nor manifest.json (a docker save archive)",
            archive.label
        )));
    };
    Ok(merge_plans(plans))
}

/// One of the archive's own documents, as kept by the first pass.
fn document<'s>(archive: &Archive<'_>, scanned: &'s Scanned, name: &str) -> Result<&'s [u8]> {
    scanned.small.get(name).map(Vec::as_slice).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: {name} is larger than {DOCUMENT_LIMIT} bytes",
            archive.label
        ))
    })
}

/// A blob the archive must have held (it is in the content store now).
fn stored_blob(
    backend: &ImageBackend,
    archive: &Archive<'_>,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>> {
    if !backend.content.has(digest) {
        return Err(Error::DataLoss(format!(
            "{}: the archive lacks blob {digest} ({what})",
            archive.label
        )));
    }
    backend.content.read(digest)
}

// ---------------------------------------------------------------------------
// OCI image layout.

#[derive(Deserialize)]
struct LayoutVersion {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
struct LayoutEntry {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn oci_layout(
    backend: &ImageBackend,
    archive: &Archive<'_>,
    scanned: &Scanned,
) -> Result<Vec<ImagePlan>> {
    let label = &archive.label;
    if scanned.members.contains_key("oci-layout") {
        let v: LayoutVersion = serde_json::from_slice(document(archive, scanned, "oci-layout")?)
            .map_err(|e| {
                Error::InvalidArgument(format!("{label}: oci-layout is not valid: {e}"))
            })?;
        if v.version.split('.').next() != Some("1") {
            return Err(Error::FailedPrecondition(format!(
                "{label}: OCI image layout version {} is not supported (only 1.x)",
                v.version
            )));
        }
    }
    let index: LayoutIndex = serde_json::from_slice(document(archive, scanned, "index.json")?)
        .map_err(|e| Error::InvalidArgument(format!("{label}: index.json is not valid: {e}")))?;
    if index.manifests.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{label}: index.json lists no images"
        )));
    }
    let platform = &backend.config.platform;
    let mut plans = Vec::new();
    for entry in &index.manifests {
        // An entry made for another platform is not for this node.
        if entry
            .descriptor
            .platform
            .as_ref()
            .is_some_and(|p| !platform.accepts(p))
        {
            continue;
        }
        plans.push(layout_image(backend, archive, entry, platform)?);
    }
    if plans.is_empty() {
        return Err(Error::NotFound(format!(
            "{label} has no image for platform {platform}"
        )));
    }
    Ok(plans)
}

/// The name of an index.json entry, if it has a repository.
fn layout_name(archive: &Archive<'_>, entry: &LayoutEntry) -> Result<Option<Reference>> {
    let name = match entry.annotations.get(CONTAINERD_NAME) {
        Some(full) => full,
        // A ref name without any of these is a bare tag: no repository.
        None => match entry.annotations.get(OCI_REF_NAME) {
            Some(n) if n.contains(['/', ':', '@']) => n,
            _ => return Ok(None),
        },
    };
    let r =
        Reference::parse(name).map_err(|e| within(&format!("{}: index.json", archive.label), e))?;
    if let Some(d) = &r.digest {
        if *d != entry.descriptor.digest {
            return Err(Error::InvalidArgument(format!(
                "{}: index.json names {name} for manifest {}",
                archive.label, entry.descriptor.digest
            )));
        }
    }
    Ok(Some(r))
}

fn layout_image(
    backend: &ImageBackend,
    archive: &Archive<'_>,
    entry: &LayoutEntry,
    platform: &Platform,
) -> Result<ImagePlan> {
    let label = &archive.label;
    let name = layout_name(archive, entry)?;
    let top_digest = &entry.descriptor.digest;
    let top_bytes = stored_blob(backend, archive, top_digest, "listed in index.json")?;
    let top = Manifest::parse(&top_bytes, &entry.descriptor.media_type)
        .map_err(|e| within(&format!("{label}: manifest {top_digest}"), e))?;
    let mut blobs = vec![top_digest.clone()];
    let (manifest, manifest_len) = if top.is_index(&entry.descriptor.media_type) {
        let chosen = top.select(platform).ok_or_else(|| {
            Error::NotFound(format!(
                "{label}: index {top_digest} has no image for platform {platform}"
            ))
        })?;
        let bytes = stored_blob(
            backend,
            archive,
            &chosen.digest,
            "the image for this platform",
        )?;
        let m = Manifest::parse(&bytes, &chosen.media_type)
            .map_err(|e| within(&format!("{label}: manifest {}", chosen.digest), e))?;
        if m.is_index(&chosen.media_type) {
            return Err(Error::FailedPrecondition(format!(
                "{label}: index {} is nested in another index; only one level is supported",
                chosen.digest
            )));
        }
        blobs.push(chosen.digest.clone());
        (m, bytes.len() as u64)
    } else {
        (top, top_bytes.len() as u64)
    };
    let (config_desc, layers) = manifest
        .image_parts()
        .map_err(|e| within(&format!("{label}: manifest {top_digest}"), e))?;
    let config_bytes = stored_blob(backend, archive, &config_desc.digest, "an image config")?;
    let config = ImageConfigFile::parse(&config_bytes)
        .map_err(|e| within(&format!("{label}: config {}", config_desc.digest), e))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(Error::DataLoss(format!(
            "{label}: image {}: the config lists {} layers, the manifest {}",
            config_desc.digest,
            diff_ids.len(),
            layers.len()
        )));
    }
    for l in layers {
        if !backend.content.has(&l.digest) {
            return Err(Error::DataLoss(format!(
                "{label}: the archive lacks layer blob {} of image {}",
                l.digest, config_desc.digest
            )));
        }
    }
    blobs.push(config_desc.digest.clone());
    blobs.extend(layers.iter().map(|l| l.digest.clone()));
    let (repo_tags, repo_digests) = match &name {
        Some(r) => (
            r.repo_tag().into_iter().collect(),
            vec![r.repo_digest(top_digest)],
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(ImagePlan {
        id: config_desc.digest.clone(),
        repo_tags,
        repo_digests,
        blobs,
        layers: layer_plans(layers.iter().map(|l| l.digest.clone()), diff_ids),
        size: manifest_len + config_desc.size + layers.iter().map(|l| l.size).sum::<u64>(),
        user: config.user(),
    })
}

fn layer_plans(blobs: impl Iterator<Item = Digest>, diff_ids: &[Digest]) -> Vec<LayerPlan> {
    blobs
        .zip(diff_ids.iter().cloned())
        .zip(chain_ids(diff_ids))
        .map(|((blob, diff_id), chain)| LayerPlan {
            blob,
            diff_id,
            chain,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// docker save.

#[derive(Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The OCI manifest made up for a docker archive's image.
#[derive(Serialize)]
struct MadeManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: MadeDescriptor<'a>,
    layers: Vec<MadeDescriptor<'a>>,
}

#[derive(Serialize)]
struct MadeDescriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
}

/// A docker image as read from manifest.json, before its layers are
/// stored.
struct SavedPlan {
    id: Digest,
    config_size: u64,
    config: ImageConfigFile,
    references: Vec<Reference>,
    /// Member name, blob digest and size of each layer, bottom first.
    layers: Vec<(String, Digest, u64)>,
}

fn docker_save(
    backend: &ImageBackend,
    archive: &Archive<'_>,
    scanned: &Scanned,
) -> Result<Vec<ImagePlan>> {
    let label = &archive.label;
    let saved: Vec<SavedImage> =
        serde_json::from_slice(document(archive, scanned, "manifest.json")?).map_err(|e| {
            Error::InvalidArgument(format!("{label}: manifest.json is not valid: {e}"))
        })?;
    if saved.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{label}: manifest.json lists no images"
        )));
    }
    let missing = |name: &str| {
        Error::DataLoss(format!(
            "{label}: manifest.json names {name}, which the archive lacks"
        ))
    };
    // Members to store in the second pass: name → digest.
    let mut wanted: HashMap<String, Digest> = HashMap::new();
    let mut images = Vec::new();
    for s in &saved {
        let (config_name, config_member) = scanned
            .resolve(&s.config)
            .ok_or_else(|| missing(&s.config))?;
        let id = config_member.digest.clone();
        let config_bytes = match scanned.small.get(&config_name) {
            Some(b) => b.clone(),
            // A `blobs/sha256/` config was stored by the first pass.
            None if backend.content.has(&id) => backend.content.read(&id)?,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "{label}: config {config_name} is larger than {SMALL_MEMBER} bytes"
                )))
            }
        };
        backend.content.put(&id, &config_bytes)?;
        let config = ImageConfigFile::parse(&config_bytes)
            .map_err(|e| within(&format!("{label}: config {config_name}"), e))?;
        if config.rootfs.diff_ids.len() != s.layers.len() {
            return Err(Error::DataLoss(format!(
                "{label}: image {id}: the config lists {} layers, manifest.json {}",
                config.rootfs.diff_ids.len(),
                s.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for l in &s.layers {
            let (name, member) = scanned.resolve(l).ok_or_else(|| missing(l))?;
            let digest = member.digest.clone();
            if !backend.content.has(&digest) {
                match scanned.small.get(&name) {
                    Some(bytes) => backend.content.put(&digest, bytes)?,
                    None => {
                        wanted.insert(name.clone(), digest.clone());
                    }
                }
            }
            layers.push((name, digest, member.size));
        }
        let references = s
            .repo_tags
            .iter()
            .flatten()
            .map(|t| Reference::parse(t).map_err(|e| within(&format!("{label}: manifest.json"), e)))
            .collect::<Result<Vec<_>>>()?;
        images.push(SavedPlan {
            id,
            config_size: config_bytes.len() as u64,
            config,
            references,
            layers,
        });
    }
    archive.store_members(backend, wanted)?;
    images
        .into_iter()
        .map(|i| saved_image(backend, label, i))
        .collect()
}

/// Checks a docker image's layers against its config, and makes up and
/// stores its OCI manifest. Its layers are all in the content store now.
fn saved_image(backend: &ImageBackend, label: &str, image: SavedPlan) -> Result<ImagePlan> {
    let diff_ids = &image.config.rootfs.diff_ids;
    let chains = chain_ids(diff_ids);
    let mut descriptors = Vec::new();
    for (((name, digest, size), diff_id), chain) in image.layers.iter().zip(diff_ids).zip(&chains) {
        let (media_type, compressed) = layer_type(backend, digest)?;
        // An uncompressed layer is its own diff ID; a compressed one is
        // checked when it is unpacked, or here if its snapshot exists.
        let got = if !compressed {
            Some(digest.clone())
        } else if backend.snapshots.has(chain) {
            Some(uncompressed_digest(backend, digest)?)
        } else {
            None
        };
        if let Some(got) = got {
            if got != *diff_id {
                return Err(Error::DataLoss(format!(
                    "{label}: layer {name} of image {} is {got}, not the diff ID {diff_id} its config names",
                    image.id
                )));
            }
        }
        descriptors.push(MadeDescriptor {
            media_type,
            digest,
            size: *size,
        });
    }
    let manifest = MadeManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: MadeDescriptor {
            media_type: OCI_CONFIG,
            digest: &image.id,
            size: image.config_size,
        },
        layers: descriptors,
    };
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Internal(format!("manifest of image {}: {e}", image.id)))?;
    let manifest_digest = Digest::of(&bytes);
    backend.content.put(&manifest_digest, &bytes)?;

    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for r in &image.references {
        if let Some(t) = r.repo_tag() {
            push_new(&mut repo_tags, t);
        }
        push_new(&mut repo_digests, r.repo_digest(&manifest_digest));
    }
    let mut blobs = vec![manifest_digest, image.id.clone()];
    for (_, d, _) in &image.layers {
        push_new(&mut blobs, d.clone());
    }
    let layers_size: u64 = image.layers.iter().map(|(_, _, s)| s).sum();
    Ok(ImagePlan {
        id: image.id.clone(),
        repo_tags,
        repo_digests,
        blobs,
        layers: layer_plans(image.layers.iter().map(|(_, d, _)| d.clone()), diff_ids),
        size: bytes.len() as u64 + image.config_size + layers_size,
        user: image.config.user(),
    })
}

/// A stored layer's media type, from its first bytes, and whether it is
/// compressed.
fn layer_type(backend: &ImageBackend, digest: &Digest) -> Result<(&'static str, bool)> {
    let path = backend.content.path(digest);
    let mut head = [0u8; 4];
    let mut file =
        File::open(&path).map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
    let n = read_up_to(&mut file, &mut head)
        .map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))?;
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        (OCI_LAYER_GZIP, true)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        (OCI_LAYER_ZSTD, true)
    } else {
        (OCI_LAYER, false)
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The digest of a stored compressed layer's tar.
fn uncompressed_digest(backend: &ImageBackend, digest: &Digest) -> Result<Digest> {
    let path = backend.content.path(digest);
    let file =
        File::open(&path).map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
    let corrupt = |e: io::Error| Error::DataLoss(format!("layer {digest}: {e}"));
    let reader = unpack::decompress(file).map_err(corrupt)?;
    Hashing::new(reader)
        .finish()
        .map(|(d, _)| d)
        .map_err(corrupt)
}

// ---------------------------------------------------------------------------
// Unpacking.

/// Unpacks a stored layer into its snapshot: into a staging directory
/// first, committed only once the tar's digest is the diff ID. Unsafe
/// entries fail it as they fail a pull. Blocking.
fn unpack_stored(backend: &ImageBackend, layer: &LayerPlan) -> Result<()> {
    if backend.snapshots.has(&layer.chain) {
        return Ok(());
    }
    let blob = &layer.blob;
    let path = backend.content.path(blob);
    let file =
        File::open(&path).map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
    let staging = backend.snapshots.staging()?;
    let corrupt = |e: io::Error| Error::DataLoss(format!("layer {blob}: {e}"));
    let mut hashed = Hashing::new(unpack::decompress(file).map_err(corrupt)?);
    unpack::apply(&mut hashed, staging.path()).map_err(|e| match e {
        Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("layer {blob}: {m}")),
        other => other,
    })?;
    let (got, _) = hashed.finish().map_err(corrupt)?;
    if got != layer.diff_id {
        return Err(Error::DataLoss(format!(
            "layer {blob} unpacks to {got}, not the diff ID {} its config names",
            layer.diff_id
        )));
    }
    backend.snapshots.commit(staging, &layer.chain)
}

/// Makes what the import wrote durable before the images are recorded.
fn sync_root(backend: &ImageBackend) {
    if let Ok(f) = File::open(&backend.config.root) {
        use std::os::fd::AsRawFd;
        if let Err(e) = nix::unistd::syncfs(f.as_raw_fd()) {
            tracing::warn!(error = %e, "syncfs after import");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalised() {
        assert_eq!(normalise("./index.json").as_deref(), Some("index.json"));
        assert_eq!(normalise("a/./b//c").as_deref(), Some("a/b/c"));
        assert_eq!(
            normalise("a/../b/layer.tar").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalise("/abs").as_deref(), Some("abs"));
        assert_eq!(normalise("../escape"), None);
    }

    #[test]
    fn reader_errors_become_one_short_line() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let long = one_line("x".repeat(500));
        assert_eq!(long.chars().count(), 121);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn blob_names_carry_their_digest() {
        let d = Digest::of(b"x");
        assert_eq!(blob_name(&format!("blobs/sha256/{}", d.hex())), Some(d));
        assert_eq!(blob_name("blobs/sha256/nothex"), None);
        assert_eq!(blob_name("blobs/sha512/00"), None);
    }

    #[test]
    fn links_are_followed_to_a_member() {
        let mut s = Scanned::default();
        let d = Digest::of(b"layer");
        s.members.insert(
            "a/layer.tar".into(),
            Member {
                digest: d.clone(),
                size: 5,
            },
        );
        s.links.insert("b/layer.tar".into(), "a/layer.tar".into());
        s.links.insert("c".into(), "c".into());
        let (name, m) = s.resolve("./b/layer.tar").expect("resolved");
        assert_eq!((name.as_str(), &m.digest), ("a/layer.tar", &d));
        assert!(s.resolve("c").is_none());
        assert!(s.resolve("missing").is_none());
    }
}
