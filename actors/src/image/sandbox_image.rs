//! berth's own sandbox image, made at start-up from the berth-pause program
//! beside berthd: one layer holding `/pause` and the shared libraries the
//! dynamic loader names for it (none when it is static), so that pods run
//! with no registry at all. The layer is built deterministically, so the
//! same program always gives the same image ID.

use super::backend::ImageBackend;
use super::pull::Pulled;
use super::reference::Digest;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name the sandbox image is recorded under.
pub fn sandbox_image_name() -> String {
    format!("berth.local/pause:{}", env!("CARGO_PKG_VERSION"))
}

/// The shared libraries `ldd` lists for `binary` (loader included).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::Internal(format!("ldd {}: {e}", binary.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The layer: `/pause` and its libraries, and the directories the runtime
/// mounts `/dev`, `/proc` and `/sys` on, as a tar with fixed metadata
/// (also used by the benchmarks to give a peer runtime the same pause).
pub fn layer(binary: &Path) -> Result<Vec<u8>> {
    let mut files = vec![(PathBuf::from("pause"), binary.to_path_buf(), 0o755)];
    for lib in libraries(binary)? {
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
        files.push((inside, lib, 0o755));
    }
    files.sort();
    let mut tar = tar::Builder::new(Vec::new());
    // The mount points the runtime mounts on: a pod in its own user
    // namespace cannot make them in a root it does not own.
    let mut dirs: std::collections::BTreeSet<PathBuf> = ["dev", "proc", "sys"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    for (inside, _, _) in &files {
        let mut p = PathBuf::new();
        for c in inside.parent().into_iter().flat_map(|p| p.components()) {
            p.push(c);
            dirs.insert(p.clone());
        }
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let fail = |e: std::io::Error| Error::Internal(format!("sandbox image layer: {e}"));
    for d in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, &d, std::io::empty())
            .map_err(fail)?;
    }
    for (inside, host, mode) in files {
        let bytes = std::fs::read(&host).map_err(|e| {
            Error::FailedPrecondition(format!("sandbox image: {}: {e}", host.display()))
        })?;
        let mut h = header(tar::EntryType::Regular, mode, bytes.len() as u64);
        tar.append_data(&mut h, &inside, &bytes[..]).map_err(fail)?;
    }
    tar.into_inner().map_err(fail)
}

/// Builds (or finds) the sandbox image's content and snapshot. Blocking.
pub fn build(backend: &Arc<ImageBackend>, pause: &Path) -> Result<Pulled> {
    if !pause.is_file() {
        return Err(Error::FailedPrecondition(format!(
            "the pause program {} is missing (build the workspace, or set sandbox.pause_binary)",
            pause.display()
        )));
    }
    let layer = layer(pause)?;
    let diff_id = Digest::of(&layer);
    let platform = &backend.config.platform;
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Entrypoint": ["/pause"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::Internal(e.to_string()))?;
    let config_digest = Digest::of(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": diff_id, "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    let manifest_digest = Digest::of(&manifest);
    for (d, bytes) in [
        (&diff_id, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        backend.content.put(d, bytes)?;
    }
    // One layer: its chain ID is its diff ID.
    if !backend.snapshots.has(&diff_id) {
        let staging = backend.snapshots.staging()?;
        super::unpack::apply(&layer[..], staging.path())?;
        backend.snapshots.commit(staging, &diff_id)?;
    }
    let name = sandbox_image_name();
    let repo = name.split(':').next().unwrap_or(&name).to_string();
    Ok(Pulled {
        id: config_digest.clone(),
        repo_tag: Some(name),
        repo_digest: format!("{repo}@{manifest_digest}"),
        blobs: vec![manifest_digest, config_digest, diff_id.clone()],
        chain_ids: vec![diff_id],
        size: (manifest.len() + config.len() + layer.len()) as u64,
        user: String::new(),
        hold: Arc::new(
            backend
                .gc_lock
                .clone()
                .try_read_owned()
                .map_err(|_| Error::Unavailable("image collection in progress; retry".into()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_holds_the_program_and_its_libraries_deterministically() {
        let ls = Path::new("/bin/ls");
        let a = layer(ls).expect("layer");
        let b = layer(ls).expect("layer");
        assert_eq!(Digest::of(&a), Digest::of(&b), "deterministic");
        let names = crate::image::unpack::tar_names(&a[..]);
        assert!(names.contains(&"pause".to_string()), "{names:?}");
        assert!(names.iter().any(|n| n.contains("libc.so")), "{names:?}");
    }
}
