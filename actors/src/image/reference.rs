//! Image references, parsed and normalised as docker and kubelet do:
//! `busybox` is `docker.io/library/busybox:latest`; a first component with a
//! `.` or `:` (or `localhost`) is a registry host; a digest pins content.

use crate::{Error, Result};
use std::fmt;

/// Where docker.io's images are really served.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A content digest (`sha256:<64 lowercase hex>`), checked on construction
/// so that it is safe to use in a path.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            Error::InvalidArgument(format!("digest {s:?}: only sha256 digests are supported"))
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidArgument(format!(
                "digest {s:?}: not 64 lowercase hex digits"
            )));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    pub fn from_sha256(hash: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, used as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Digest::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host as named (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// What a CRI image spec names: an image ID, or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    Id(Digest),
    Reference(Reference),
}

impl ImageName {
    /// Parses what kubelet passes as `ImageSpec.image`: an ID (`sha256:…`
    /// or 64 hex digits) or a reference.
    pub fn parse(s: &str) -> Result<ImageName> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ImageName::Id(Digest::parse(&format!("sha256:{s}"))?));
        }
        if s.starts_with("sha256:") {
            return Ok(ImageName::Id(Digest::parse(s)?));
        }
        Reference::parse(s).map(ImageName::Reference)
    }
}

/// The longest repository name, registry host included.
const NAME_MAX: usize = 255;

fn invalid(s: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "invalid image reference {}: {why}",
        crate::checked::shown(s)
    ))
}

fn valid_component(c: &str) -> bool {
    // Lowercase alphanumerics, separated by one `.`, one or two `_`, or any
    // number of `-`.
    let bytes = c.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        // Anything else (an uppercase letter, a space) is no separator.
        let ok = !sep.is_empty()
            && (sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-'));
        if !ok {
            return false;
        }
    }
    true
}

fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if name.starts_with('[') && name.ends_with(']') {
        return name.len() > 2;
    }
    !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            return Err(invalid(s, "empty"));
        }
        if s.len() > 4096 {
            return Err(invalid(s, "longer than 4096 bytes"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|e| invalid(s, &e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(s, &format!("tag {t:?} is not valid")));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(invalid(s, &format!("registry host {first:?} is not valid")));
                }
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.split('/').any(|c| !valid_component(c)) {
            return Err(invalid(
                s,
                "repository path must be lowercase letters, digits and separators",
            ));
        }
        // The distribution spec's bound on a whole name, host included
        // (so also after "docker.io/library/" is added).
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(invalid(
                s,
                &format!("the name is longer than {NAME_MAX} bytes"),
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when pulled by tag (and not by digest).
    pub fn repo_tag(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), None) => Some(format!("{}:{t}", self.name())),
            _ => None,
        }
    }

    /// `registry/repository@digest`.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host that really serves this registry (docker.io's images live
    /// on another host).
    pub fn endpoint_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_reference_with_multibyte_characters_is_refused_not_a_panic() {
        // Byte 64 falls inside an 'é'.
        let r = format!(
            "registry.example/{}{}:tag",
            "a".repeat(46),
            "é".repeat(2100)
        );
        let e = Reference::parse(&r).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("longer than 4096")),
            "{e:?}"
        );
    }

    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        Reference::parse(s).expect(s).to_string()
    }

    #[test]
    fn normalises_as_docker_does() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("someone/tool:v1"), "docker.io/someone/tool:v1");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("localhost/x:y"), "localhost/x:y");
        assert_eq!(
            norm(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        let r = Reference::parse(&format!("127.0.0.1:5000/a@{D}")).expect("digest");
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(
            Reference::parse("busybox").expect("p").endpoint_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "UPPER/case",
            "busybox:",
            "busybox:bad tag",
            "busybox@sha256:short",
            "busybox@md5:0123",
            "a//b",
            "-lead",
            "bad_host:99999999/x",
            "x:tag:more",
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
            assert!(err.to_string().contains("invalid image reference"), "{err}");
        }
    }

    #[test]
    fn image_names_are_ids_or_references() {
        let hex = &D["sha256:".len()..];
        assert!(matches!(ImageName::parse(D), Ok(ImageName::Id(_))));
        assert!(matches!(ImageName::parse(hex), Ok(ImageName::Id(_))));
        assert!(matches!(
            ImageName::parse("busybox"),
            Ok(ImageName::Reference(_))
        ));
        assert!(ImageName::parse("sha256:nothex").is_err());
    }

    #[test]
    fn digests_are_safe_path_names() {
        assert!(Digest::parse("sha256:../../etc").is_err());
        assert_eq!(Digest::parse(D).expect("ok").hex().len(), 64);
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
