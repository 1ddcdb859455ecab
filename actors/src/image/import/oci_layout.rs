//! An OCI image layout: `index.json`'s entries (an image, or an index
//! of which the node's platform is taken) and their names.

use super::*;

#[derive(Deserialize)]
pub(super) struct LayoutVersion {
    #[serde(rename = "imageLayoutVersion")]
    pub(super) version: String,
}

#[derive(Deserialize)]
pub(super) struct LayoutIndex {
    #[serde(default)]
    pub(super) manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
pub(super) struct LayoutEntry {
    #[serde(flatten)]
    pub(super) descriptor: Descriptor,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

pub(super) fn oci_layout(
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
pub(super) fn layout_name(archive: &Archive<'_>, entry: &LayoutEntry) -> Result<Option<Reference>> {
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

pub(super) fn layout_image(
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

pub(super) fn layer_plans(
    blobs: impl Iterator<Item = Digest>,
    diff_ids: &[Digest],
) -> Vec<LayerPlan> {
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
