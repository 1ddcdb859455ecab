//! The content store: blobs by digest under `<root>/content/blobs/sha256/`.
//! A blob is written to `ingest/` first, its digest checked as it streams,
//! and renamed into place only when complete and verified, so a blob's name
//! always matches its bytes.

use super::reference::Digest;
use crate::{Error, Result};
use sha2::Digest as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error::storing(
        &e,
        format!("{what} {}: {e}", path.display()),
        Error::Internal,
    )
}

/// A unique name for a temporary file or directory.
pub(super) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        crate::journal::unix_nanos()
    )
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        for d in [&blobs, &ingest] {
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.path(digest);
        std::fs::read(&p).map_err(|e| io_err("read blob", &p, e))
    }

    /// Stores `bytes`, which must have `digest`.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if self.has(digest) {
            return Ok(());
        }
        let mut w = self.writer(digest.clone())?;
        w.write_all(bytes)
            .map_err(|e| io_err("write blob", &w.tmp, e))?;
        w.commit()
    }

    /// A writer for a blob that must come out as `digest`.
    pub fn writer(&self, digest: Digest) -> Result<BlobWriter> {
        let tmp = self.ingest.join(unique("blob-"));
        let file = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: self.path(&digest),
            expected: digest,
            hasher: sha2::Sha256::new(),
            size: 0,
        })
    }

    /// Every blob present.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let entries = std::fs::read_dir(&self.blobs).map_err(|e| io_err("list", &self.blobs, e))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect())
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &p, e)),
            _ => Ok(()),
        }
    }

    /// Removes what interrupted writes left in `ingest/`.
    pub fn clean_ingest(&self) -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.ingest)
            .map_err(|e| io_err("list", &self.ingest, e))?
            .flatten()
        {
            if std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Streams a blob to `ingest/`, hashing as it goes; [`BlobWriter::commit`]
/// checks the digest and renames it into place. Dropped uncommitted, it
/// removes its temporary file.
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    expected: Digest,
    hasher: sha2::Sha256,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Checks the digest and moves the blob into the store.
    pub fn commit(mut self) -> Result<()> {
        let got = Digest::from_sha256(&std::mem::take(&mut self.hasher).finalize());
        if got != self.expected {
            return Err(Error::DataLoss(format!(
                "blob {} has digest {got} ({} bytes received)",
                self.expected, self.size
            )));
        }
        drop(self.file.take());
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| io_err("rename", &self.tmp, e))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A reader that hashes what passes through it.
pub struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    pub bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Reads to the end (so that the hash covers everything) and returns
    /// the digest.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_sha256(&self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A reader that copies what passes through it into a blob writer.
pub struct Tee<R> {
    pub inner: R,
    pub out: Option<BlobWriter>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(out) = self.out.as_mut() {
            out.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}
