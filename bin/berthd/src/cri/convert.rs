//! Conversions between CRI messages and actor messages and replies. The
//! handlers call these and nothing else of the CRI's shapes.

use berth_actors::image::messages::{FsUsage, ImageInfo};
use berth_actors::image::registry::Credentials;
use berth_actors::Error;
use berth_protocol::cri;
use std::collections::HashMap;

/// The image an `ImageSpec` names; an absent or empty one is bad input.
pub fn image_name(spec: Option<&cri::ImageSpec>) -> Result<String, Error> {
    spec.map(|s| s.image.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidArgument("image spec: no image named".into()))
}

pub fn credentials(auth: Option<cri::AuthConfig>) -> Option<Credentials> {
    auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
}

pub fn image(info: &ImageInfo) -> cri::Image {
    let r = &info.record;
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: info.uid.map(|value| cri::Int64Value { value }),
        username: info.username.clone(),
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: r.pinned,
    }
}

/// The verbose `info` of ImageStatus: the image config and its layers.
pub fn image_info(info: &ImageInfo) -> HashMap<String, String> {
    let Some(config) = &info.config else {
        return HashMap::new();
    };
    let value = serde_json::json!({
        "id": info.record.id,
        "chainIDs": info.record.chain_ids,
        "imageSpec": config,
    });
    HashMap::from([("info".to_string(), value.to_string())])
}

pub fn fs_usage(u: &FsUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: u.timestamp_unix_nanos,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint.clone(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    }
}
