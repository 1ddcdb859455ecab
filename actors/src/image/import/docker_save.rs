//! A `docker save` archive: `manifest.json`, configs and layer tars; an
//! OCI manifest is made up for each image, so that it has a repo digest.

use super::*;

#[derive(Deserialize)]
pub(super) struct SavedImage {
    #[serde(rename = "Config")]
    pub(super) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(super) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub(super) layers: Vec<String>,
}

/// The OCI manifest made up for a docker archive's image.
#[derive(Serialize)]
pub(super) struct MadeManifest<'a> {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: u32,
    #[serde(rename = "mediaType")]
    pub(super) media_type: &'a str,
    pub(super) config: MadeDescriptor<'a>,
    pub(super) layers: Vec<MadeDescriptor<'a>>,
}

#[derive(Serialize)]
pub(super) struct MadeDescriptor<'a> {
    #[serde(rename = "mediaType")]
    pub(super) media_type: &'a str,
    pub(super) digest: &'a Digest,
    pub(super) size: u64,
}

/// A docker image as read from manifest.json, before its layers are
/// stored.
pub(super) struct SavedPlan {
    pub(super) id: Digest,
    pub(super) config_size: u64,
    pub(super) config: ImageConfigFile,
    pub(super) references: Vec<Reference>,
    /// Member name, blob digest and size of each layer, bottom first.
    pub(super) layers: Vec<(String, Digest, u64)>,
}

pub(super) fn docker_save(
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
pub(super) fn saved_image(
    backend: &ImageBackend,
    label: &str,
    image: SavedPlan,
) -> Result<ImagePlan> {
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
pub(super) fn layer_type(backend: &ImageBackend, digest: &Digest) -> Result<(&'static str, bool)> {
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

pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
pub(super) fn uncompressed_digest(backend: &ImageBackend, digest: &Digest) -> Result<Digest> {
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
