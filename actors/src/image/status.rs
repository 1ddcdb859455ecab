//! ImageStatus and ListImages: finding images by ID, tag or digest, and
//! showing them as the CRI expects.

use super::actor::Images;
use super::messages::ImageInfo;
use super::reference::ImageName;
use super::store::{user_of, ImageRecord};
use crate::Result;

impl Images {
    /// The image `name` (an ID, `repo:tag` or `repo@digest`) names.
    pub(super) fn find(&self, name: &str) -> Result<Option<&ImageRecord>> {
        Ok(match ImageName::parse(name)? {
            ImageName::Id(id) => self.images.get(id.as_str()),
            ImageName::Reference(r) => {
                let wanted = match &r.digest {
                    Some(d) => r.repo_digest(d),
                    None => r.repo_tag().unwrap_or_default(),
                };
                self.images.iter().find(|i| i.named(&wanted))
            }
        })
    }

    pub(super) fn info(&self, record: &ImageRecord, verbose: bool) -> ImageInfo {
        let (uid, username) = user_of(&record.user);
        let config = verbose
            .then(|| record.config_digest())
            .flatten()
            .and_then(|d| self.backend.content.read(&d).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        ImageInfo {
            record: record.clone(),
            uid,
            username,
            config,
        }
    }

    pub(super) fn status(&self, name: &str, verbose: bool) -> Result<Option<ImageInfo>> {
        Ok(self.find(name)?.map(|r| self.info(r, verbose)))
    }

    pub(super) fn list(&self, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        match name.filter(|n| !n.is_empty()) {
            Some(n) => Ok(self
                .find(n)?
                .map(|r| vec![self.info(r, false)])
                .unwrap_or_default()),
            None => Ok(self.images.iter().map(|r| self.info(r, false)).collect()),
        }
    }
}
