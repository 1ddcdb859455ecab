//! Reading an archive (plain, gzip or zstd): one streaming pass that
//! stores `blobs/sha256/` members in the content store, digests checked,
//! and hashes the others; small documents kept for the second look.

use super::*;

/// A regular member of the archive.
pub(super) struct Member {
    pub(super) digest: Digest,
    pub(super) size: u64,
}

/// What the first pass learnt of the archive.
#[derive(Default)]
pub(super) struct Scanned {
    /// Every regular member by name, with its digest.
    pub(super) members: HashMap<String, Member>,
    /// Symbolic and hard links by name: the member they point at (docker
    /// links a layer tar that two images share).
    pub(super) links: HashMap<String, String>,
    /// Small members other than blobs, kept in memory.
    pub(super) small: HashMap<String, Vec<u8>>,
    /// Entries of any kind seen.
    pub(super) entries: usize,
}

/// The archive, read one pass at a time.
pub(super) struct Archive<'a> {
    pub(super) path: &'a Path,
    pub(super) label: String,
}

pub(super) type Entry<'r> = tar::Entry<'r, Box<dyn Read>>;

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
    pub(super) fn store_members(
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
pub(super) fn one_line(e: impl std::fmt::Display) -> String {
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
pub(super) fn normalise(name: &str) -> Option<String> {
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
pub(super) fn blob_name(name: &str) -> Option<Digest> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

pub(super) fn is_document(name: &str) -> bool {
    matches!(name, "index.json" | "manifest.json" | "oci-layout")
}

impl Scanned {
    /// The regular member `name` is, following links.
    pub(super) fn resolve(&self, name: &str) -> Option<(String, &Member)> {
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
pub(super) fn read_archive(backend: &ImageBackend, path: &Path) -> Result<Vec<ImagePlan>> {
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
pub(super) fn document<'s>(
    archive: &Archive<'_>,
    scanned: &'s Scanned,
    name: &str,
) -> Result<&'s [u8]> {
    scanned.small.get(name).map(Vec::as_slice).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: {name} is larger than {DOCUMENT_LIMIT} bytes",
            archive.label
        ))
    })
}

/// A blob the archive must have held (it is in the content store now).
pub(super) fn stored_blob(
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
