//! The JSON documents of an image, as far as berth reads them: indexes
//! (manifest lists), manifests (OCI and Docker schema 2, which share their
//! shape) and image configs.

use super::reference::Digest;
use super::registry::{DOCKER_LIST, OCI_INDEX};
use crate::{Error, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The node's own platform, in OCI's names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(String::from),
        }
    }

    /// Whether an index entry for `other` runs here. A missing variant
    /// matches (arm64 images rarely name `v8`).
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest or an index: which one is told by `manifests` being there.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

const LAYER_TYPES: [&str; 8] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

impl Manifest {
    pub fn parse(bytes: &[u8], header_type: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::DataLoss(format!("manifest is not valid JSON: {e}")))?;
        if m.schema_version != 2 {
            return Err(Error::FailedPrecondition(format!(
                "manifest schema version {} is not supported (only 2: OCI and Docker schema 2)",
                m.schema_version
            )));
        }
        let _ = header_type;
        Ok(m)
    }

    pub fn is_index(&self, header_type: &str) -> bool {
        self.manifests.is_some()
            || [OCI_INDEX, DOCKER_LIST].contains(&self.media_type.as_str())
            || [OCI_INDEX, DOCKER_LIST].contains(&header_type)
    }

    /// The entry of an index for `platform`.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.accepts(p)))
    }

    /// The config and layers of an image manifest, with their media types
    /// checked.
    pub fn image_parts(&self) -> Result<(&Descriptor, &[Descriptor])> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| Error::DataLoss("image manifest without a config".into()))?;
        for l in &self.layers {
            if !l.media_type.is_empty() && !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(Error::FailedPrecondition(format!(
                    "layer {} has unsupported media type {}",
                    l.digest, l.media_type
                )));
            }
        }
        Ok((config, &self.layers))
    }
}

/// The parts of an image config berth uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: String,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: String,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfigFile {
    pub fn parse(bytes: &[u8]) -> Result<ImageConfigFile> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::DataLoss(format!("image config is not valid: {e}")))
    }

    pub fn user(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default()
    }
}
