//! Builds container images in memory for the pull tests: tar layers
//! (optionally compressed), image configs, manifests and indexes, in either
//! the OCI or the docker schema 2 dialect.
//!
//! Nothing here talks to a registry; [`crate::registry::Registry`] pushes
//! what is built. Everything is deterministic: building the same thing twice
//! gives the same digests.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 image manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema 2 gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 2 uncompressed layer media type.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The modification time entries get unless [`LayerBuilder::mtime`] says
/// otherwise (2023-11-14T22:13:20Z).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// The `created` time written into configs and their history.
const CREATED: &str = "2023-11-14T22:13:20Z";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a layer's tar stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }

    /// The docker schema 2 layer media type. Docker never standardised a
    /// zstd type of its own (it writes the OCI one into docker manifests),
    /// so zstd maps to [`OCI_LAYER_ZSTD`].
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => DOCKER_LAYER,
            Compression::Gzip => DOCKER_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// An OS/architecture pair (and optional CPU variant), as found in configs
/// and index entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Any platform, e.g. `Platform::new("linux", "arm", Some("v7"))`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// linux/amd64.
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    /// linux/arm64/v8.
    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }

    /// The `platform` object of an index entry.
    fn to_json(&self) -> serde_json::Value {
        let mut p = serde_json::Map::new();
        p.insert("architecture".into(), self.architecture.clone().into());
        p.insert("os".into(), self.os.clone().into());
        if let Some(v) = &self.variant {
            p.insert("variant".into(), v.clone().into());
        }
        serde_json::Value::Object(p)
    }
}

impl Default for Platform {
    fn default() -> Platform {
        Platform::linux_amd64()
    }
}

/// Where a file's contents come from. Random contents are generated while
/// the tar is written, so a large benchmark file never sits in memory
/// uncompressed.
enum Body {
    Bytes(Vec<u8>),
    Random { size: u64, seed: u64 },
    Zeros(u64),
}

enum Kind {
    File(Body),
    Dir,
    Symlink(String),
    Hardlink(String),
    CharDevice(u32, u32),
}

struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

enum Item {
    Entry(Entry),
    /// A regular file whose header name is written byte for byte.
    Raw {
        name: Vec<u8>,
        contents: Vec<u8>,
        mtime: u64,
    },
}

/// Builds one layer's tar, entry by entry, in the order the methods are
/// called. Paths may be written with or without a leading `/`; they are
/// stored relative, as image layers are (except with
/// [`LayerBuilder::raw_path_file`]).
pub struct LayerBuilder {
    items: Vec<Item>,
    xattrs: Vec<(String, String, Vec<u8>)>,
    mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

/// Layers store paths relative; callers write them either way.
fn rel(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            items: Vec::new(),
            xattrs: Vec::new(),
            mtime: DEFAULT_MTIME,
        }
    }

    /// Sets the modification time (seconds since the epoch) of the entries
    /// added after this call.
    pub fn mtime(mut self, secs: u64) -> Self {
        self.mtime = secs;
        self
    }

    fn push(mut self, path: &str, kind: Kind, mode: u32, uid: u64, gid: u64) -> Self {
        let mtime = self.mtime;
        self.items.push(Item::Entry(Entry {
            path: rel(path),
            kind,
            mode,
            uid,
            gid,
            mtime,
        }));
        self
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>, mode: u32) -> Self {
        self.file_owned(path, contents, mode, 0, 0)
    }

    /// A regular file with the given owner.
    pub fn file_owned(
        self,
        path: &str,
        contents: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        let body = Body::Bytes(contents.as_ref().to_vec());
        self.push(path, Kind::File(body), mode, uid, gid)
    }

    /// A file of `size` pseudo-random (incompressible) bytes determined by
    /// `seed`, mode 0644. The bytes are produced as the tar is written.
    pub fn random_file(self, path: &str, size: u64, seed: u64) -> Self {
        self.push(path, Kind::File(Body::Random { size, seed }), 0o644, 0, 0)
    }

    /// A file of `size` zero bytes, mode 0644: it compresses about a
    /// thousandfold. Produced as the tar is written.
    pub fn zero_file(self, path: &str, size: u64) -> Self {
        self.push(path, Kind::File(Body::Zeros(size)), 0o644, 0, 0)
    }

    /// A directory owned by root.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_owned(path, mode, 0, 0)
    }

    /// A directory with the given owner.
    pub fn dir_owned(self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        self.push(path, Kind::Dir, mode, uid, gid)
    }

    /// A symbolic link; `target` is stored verbatim (it may be absolute or
    /// contain `..`).
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Symlink(target.to_string()), 0o777, 0, 0)
    }

    /// A hard link to `target`, a path inside the layer (stored relative).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Hardlink(rel(target)), 0o644, 0, 0)
    }

    /// A character device node, mode 0666.
    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, Kind::CharDevice(major, minor), 0o666, 0, 0)
    }

    /// Deletes `path` from the layers below: adds `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Self {
        let path = rel(path);
        let marker = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&marker, b"", 0o644)
    }

    /// Hides everything the layers below have under `dir`: adds
    /// `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let marker = format!("{}/.wh..wh..opq", rel(dir));
        self.file(&marker, b"", 0o644)
    }

    /// Gives the entry at `path` (added before or after this call) an
    /// extended attribute, written as a PAX `SCHILY.xattr.<key>` record.
    pub fn xattr(mut self, path: &str, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .push((rel(path), key.to_string(), value.as_ref().to_vec()));
        self
    }

    /// A regular file (mode 0644) whose header name is exactly `path`, with
    /// no clean-up: `../escape`, `/abs/path` and the like end up in the
    /// archive as written. At most 100 bytes.
    pub fn raw_path_file(mut self, path: impl AsRef<[u8]>, contents: impl AsRef<[u8]>) -> Self {
        let name = path.as_ref().to_vec();
        assert!(
            !name.is_empty() && name.len() <= 100,
            "raw tar names must be 1..=100 bytes"
        );
        self.items.push(Item::Raw {
            name,
            contents: contents.as_ref().to_vec(),
            mtime: self.mtime,
        });
        self
    }

    /// A minimal busybox userland: `/bin/busybox` (copied from the host's
    /// `/bin/busybox`) with applet symlinks in `/bin`, `/etc/passwd` and
    /// `/etc/group` (root 0, www-data 33:33, app 1002:1002 with the
    /// supplementary group extra 1005, nobody 65534:65534), `/tmp` (1777),
    /// and the usual empty top-level directories.
    pub fn busybox(self) -> Self {
        let busybox = std::fs::read("/bin/busybox")
            .expect("read /bin/busybox (apt-get install busybox-static)");
        let mut b = self
            .dir("bin", 0o755)
            .dir("dev", 0o755)
            .dir("etc", 0o755)
            .dir("home", 0o755)
            .dir_owned("home/app", 0o755, 1002, 1002)
            .dir("proc", 0o555)
            .dir("root", 0o700)
            .dir("sys", 0o555)
            .dir("tmp", 0o1777)
            .dir("usr", 0o755)
            .dir("var", 0o755)
            .dir_owned("var/www", 0o755, 33, 33)
            .file("bin/busybox", busybox, 0o755);
        for applet in BUSYBOX_APPLETS {
            b = b.symlink(&format!("bin/{applet}"), "busybox");
        }
        b.file("etc/passwd", PASSWD, 0o644)
            .file("etc/group", GROUP, 0o644)
    }

    /// Writes the tar, compresses it and digests both forms.
    pub fn build(self, compression: Compression) -> BuiltLayer {
        let LayerBuilder { items, xattrs, .. } = self;
        for (path, key, _) in &xattrs {
            let known = items
                .iter()
                .any(|i| matches!(i, Item::Entry(e) if &e.path == path));
            assert!(known, "xattr {key} set on {path}, which the layer lacks");
        }
        let sink = TarSink {
            out: Encoder::new(compression),
            hasher: Sha256::new(),
            size: 0,
        };
        let mut tar = tar::Builder::new(sink);
        for (n, item) in items.into_iter().enumerate() {
            match item {
                Item::Entry(e) => {
                    let records: Vec<_> = xattrs
                        .iter()
                        .filter(|(p, _, _)| *p == e.path)
                        .map(|(_, k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                        .collect();
                    if !records.is_empty() {
                        append_pax(&mut tar, n, &e.path, &records);
                    }
                    append_entry(&mut tar, e);
                }
                Item::Raw {
                    name,
                    contents,
                    mtime,
                } => {
                    let mut h = tar::Header::new_gnu();
                    h.as_old_mut().name[..name.len()].copy_from_slice(&name);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(contents.len() as u64);
                    h.set_mode(0o644);
                    h.set_mtime(mtime);
                    h.set_cksum();
                    tar.append(&h, contents.as_slice())
                        .expect("append raw entry");
                }
            }
        }
        let sink = tar.into_inner().expect("finish tar");
        let diff_id = format!("sha256:{}", hex::encode(sink.hasher.finalize()));
        let (bytes, digest) = sink.out.finish();
        BuiltLayer {
            bytes,
            media_type: compression.oci_media_type().to_string(),
            compression,
            digest: digest.unwrap_or_else(|| diff_id.clone()),
            diff_id,
            uncompressed_size: sink.size,
        }
    }
}

/// Applets linked to busybox by [`LayerBuilder::busybox`].
const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "head",
    "hostname",
    "id",
    "ip",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mknod",
    "mount",
    "mv",
    "nc",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "uniq",
    "wc",
    "wget",
    "whoami",
    "xargs",
    "yes",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
www-data:x:33:33:www-data:/var/www:/bin/sh\n\
app:x:1002:1002:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
www-data:x:33:\n\
app:x:1002:\n\
extra:x:1005:app\n\
nogroup:x:65534:\n";

fn append_entry<W: Write>(tar: &mut tar::Builder<W>, e: Entry) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(0);
    let path = e.path.as_str();
    let done = match e.kind {
        Kind::File(Body::Bytes(data)) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, path, data.as_slice())
        }
        Kind::File(Body::Random { size, seed }) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            tar.append_data(&mut h, path, RandomReader::new(size, seed))
        }
        Kind::File(Body::Zeros(size)) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            tar.append_data(&mut h, path, io::repeat(0).take(size))
        }
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, path, io::empty())
        }
        Kind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, path, target)
        }
        Kind::Hardlink(target) => {
            h.set_entry_type(tar::EntryType::Link);
            tar.append_link(&mut h, path, target)
        }
        Kind::CharDevice(major, minor) => {
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(major).expect("device major");
            h.set_device_minor(minor).expect("device minor");
            tar.append_data(&mut h, path, io::empty())
        }
    };
    done.unwrap_or_else(|err| panic!("add {path} to the layer: {err}"));
}

/// Writes a PAX extended header applying `records` to the entry that follows.
fn append_pax<W: Write>(
    tar: &mut tar::Builder<W>,
    n: usize,
    path: &str,
    records: &[(String, &[u8])],
) {
    let mut data = Vec::new();
    for (key, value) in records {
        // A record is "<len> <key>=<value>\n" where <len> counts the whole
        // record, its own digits included, so find the fixed point.
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    let base = path.rsplit('/').next().unwrap_or(path);
    let mut name = format!("PaxHeaders.{n}/{base}");
    name.truncate(99);
    h.set_path(&name).expect("pax header name");
    h.set_cksum();
    tar.append(&h, data.as_slice()).expect("append pax header");
}

/// xorshift64* bytes: fast even in debug builds and, for our purposes,
/// incompressible.
struct RandomReader {
    state: u64,
    left: u64,
}

impl RandomReader {
    fn new(size: u64, seed: u64) -> RandomReader {
        // A zero state would stay zero forever; mix the seed so that
        // neighbouring seeds give unrelated streams.
        let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        RandomReader {
            state: if state == 0 { 1 } else { state },
            left: size,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left.try_into().unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Receives the uncompressed tar: digests and counts it on its way to the
/// compressor.
struct TarSink {
    out: Encoder,
    hasher: Sha256,
    size: u64,
}

impl Write for TarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The compressed bytes, digested as they are produced. An uncompressed
/// blob is not digested twice: its digest is the tar's.
struct Blob {
    bytes: Vec<u8>,
    hasher: Option<Sha256>,
}

impl Write for Blob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Encoder {
    None(Blob),
    Gzip(flate2::write::GzEncoder<Blob>),
    Zstd(zstd::Encoder<'static, Blob>),
}

impl Encoder {
    fn new(compression: Compression) -> Encoder {
        let blob = Blob {
            bytes: Vec::new(),
            hasher: (compression != Compression::None).then(Sha256::new),
        };
        // The fastest levels: the tests care about formats, not ratios, and
        // benchmark layers are random data that does not compress anyway.
        match compression {
            Compression::None => Encoder::None(blob),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                blob,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(blob, 1).expect("zstd encoder")),
        }
    }

    /// The compressed bytes and their digest (None when uncompressed).
    fn finish(self) -> (Vec<u8>, Option<String>) {
        let blob = match self {
            Encoder::None(b) => b,
            Encoder::Gzip(e) => e.finish().expect("finish gzip"),
            Encoder::Zstd(e) => e.finish().expect("finish zstd"),
        };
        let digest = blob
            .hasher
            .map(|h| format!("sha256:{}", hex::encode(h.finalize())));
        (blob.bytes, digest)
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(b) => b.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(b) => b.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The blob as pushed (compressed unless [`Compression::None`]).
    pub bytes: Vec<u8>,
    /// The OCI media type for its compression; docker schema 2 images use
    /// [`Compression::docker_media_type`] instead. Overwrite it to describe
    /// the layer wrongly on purpose.
    pub media_type: String,
    pub compression: Compression,
    /// `sha256:` of `bytes`.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Length of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// Builds an image config and manifest over a list of layers (bottom
/// first). The config has no `Env` unless [`ImageBuilder::env`] adds some.
#[derive(Default)]
pub struct ImageBuilder {
    layers: Vec<BuiltLayer>,
    platform: Platform,
    docker: bool,
    user: Option<String>,
    env: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    labels: BTreeMap<String, String>,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl ImageBuilder {
    /// An OCI image for linux/amd64 with no layers.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    /// Appends a layer on top of those already added.
    pub fn layer(mut self, layer: BuiltLayer) -> Self {
        self.layers.push(layer);
        self
    }

    /// `config.User`, e.g. `"1002"`, `"app"`, `"app:extra"`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// Adds `key=value` to `config.Env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// `config.Entrypoint`.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = Some(strings(args));
        self
    }

    /// `config.Cmd`.
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = Some(strings(args));
        self
    }

    /// `config.WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// `config.StopSignal`, e.g. `"SIGUSR1"`.
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.stop_signal = Some(signal.to_string());
        self
    }

    /// Adds a `config.Labels` entry.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// The config's os, architecture and variant (default linux/amd64).
    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.platform = Platform::new(os, architecture, variant);
        self
    }

    /// Docker schema 2 media types for the manifest, config and layers
    /// instead of OCI ones.
    pub fn docker_schema2(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Serialises the config and the manifest.
    pub fn build(self) -> BuiltImage {
        use serde_json::{json, Map, Value};

        let mut config = Map::new();
        if let Some(user) = &self.user {
            config.insert("User".into(), user.clone().into());
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), self.env.clone().into());
        }
        if let Some(e) = &self.entrypoint {
            config.insert("Entrypoint".into(), e.clone().into());
        }
        if let Some(c) = &self.cmd {
            config.insert("Cmd".into(), c.clone().into());
        }
        if let Some(w) = &self.working_dir {
            config.insert("WorkingDir".into(), w.clone().into());
        }
        if let Some(s) = &self.stop_signal {
            config.insert("StopSignal".into(), s.clone().into());
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), json!(self.labels));
        }
        let history: Vec<Value> = (0..self.layers.len())
            .map(|n| json!({"created": CREATED, "created_by": format!("berth-tests layer {n}")}))
            .collect();
        let mut image = Map::new();
        image.insert("created".into(), CREATED.into());
        image.insert(
            "architecture".into(),
            self.platform.architecture.clone().into(),
        );
        image.insert("os".into(), self.platform.os.clone().into());
        if let Some(v) = &self.platform.variant {
            image.insert("variant".into(), v.clone().into());
        }
        image.insert("config".into(), Value::Object(config));
        image.insert(
            "rootfs".into(),
            json!({
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            }),
        );
        image.insert("history".into(), history.into());
        let config_bytes = serde_json::to_vec(&Value::Object(image)).expect("config json");
        let config_digest = sha256_digest(&config_bytes);

        let (manifest_media_type, config_media_type) = if self.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let media_type = if self.docker && l.media_type == l.compression.oci_media_type() {
                    l.compression.docker_media_type()
                } else {
                    l.media_type.as_str()
                };
                json!({"mediaType": media_type, "digest": l.digest, "size": l.bytes.len()})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_media_type,
            "config": {
                "mediaType": config_media_type,
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
        BuiltImage {
            manifest_digest: sha256_digest(&manifest_bytes),
            manifest_bytes,
            manifest_media_type: manifest_media_type.to_string(),
            config_digest,
            config_bytes,
            config_media_type: config_media_type.to_string(),
            layers: self.layers,
            platform: self.platform,
        }
    }
}

/// A finished image: its blobs and manifest, ready to push.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub layers: Vec<BuiltLayer>,
    pub config_bytes: Vec<u8>,
    pub config_digest: String,
    pub config_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The platform written into the config.
    pub platform: Platform,
}

/// A serialised image index (or docker manifest list).
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

/// An index over `entries`, each listed with the given platform (which
/// need not match the image's own config). `docker_list` selects a docker
/// manifest list rather than an OCI image index.
pub fn build_index(entries: &[(Platform, &BuiltImage)], docker_list: bool) -> BuiltIndex {
    let media_type = if docker_list {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(platform, image)| {
            serde_json::json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest_bytes.len(),
                "platform": platform.to_json(),
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).expect("index json");
    BuiltIndex {
        digest: sha256_digest(&bytes),
        bytes,
        media_type: media_type.to_string(),
    }
}

/// The OCI image layout version written into `oci-layout`.
const OCI_LAYOUT_VERSION: &str = "1.0.0";

/// The annotation an OCI image layout names an image by: a tag, or a whole
/// reference.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd (and docker 25+) name an image by in an OCI
/// image layout: always a whole reference.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// A file of an image archive: its path inside the tar and its bytes.
pub type ArchiveFile = (String, Vec<u8>);

/// `blobs/sha256/<hex>` for a `sha256:` digest.
pub fn blob_path(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").expect("a sha256: digest");
    format!("blobs/sha256/{hex}")
}

/// A tar of `files`, in order, each a regular file (mode 0644, owned by
/// root) as image archives store them. Parent directories are not written,
/// as `docker save` does not write all of them either.
pub fn tar_archive(files: &[ArchiveFile]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(DEFAULT_MTIME);
        tar.append_data(&mut h, path, bytes.as_slice())
            .unwrap_or_else(|e| panic!("add {path} to the archive: {e}"));
    }
    tar.into_inner().expect("finish archive")
}

/// `bytes` compressed with gzip, as `docker save | gzip` leaves an archive.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("finish gzip")
}

/// An OCI image layout's files: `oci-layout`, `index.json` listing
/// `entries` (descriptors, see [`BuiltImage::layout_entry`]), then `blobs`.
pub fn oci_layout(entries: Vec<serde_json::Value>, blobs: Vec<ArchiveFile>) -> Vec<ArchiveFile> {
    let layout = serde_json::json!({ "imageLayoutVersion": OCI_LAYOUT_VERSION });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    let mut files = vec![
        (
            "oci-layout".to_string(),
            serde_json::to_vec(&layout).expect("oci-layout json"),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).expect("index json"),
        ),
    ];
    for blob in blobs {
        if !files.iter().any(|(p, _)| *p == blob.0) {
            files.push(blob);
        }
    }
    files
}

/// Where `docker save` puts an image's config and layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStyle {
    /// Before docker 25: `<config hex>.json` and `<id>/layer.tar` (here the
    /// id is the layer's diff ID hex), with `<id>/VERSION` and `<id>/json`
    /// beside each layer, and a `repositories` file.
    Classic,
    /// Docker 25+ (without its index.json): `blobs/sha256/<hex>` for both.
    Blobs,
}

/// A `docker save` archive's files for `images`, each with its RepoTags
/// (as docker writes them: `busybox:latest`). Layers are stored
/// uncompressed, as docker does, once even when images share them.
pub fn docker_save(images: &[(&BuiltImage, &[&str])], style: SaveStyle) -> Vec<ArchiveFile> {
    // Shared layers (and their metadata) are written once.
    fn add(files: &mut Vec<ArchiveFile>, path: String, bytes: Vec<u8>) {
        if !files.iter().any(|(p, _)| *p == path) {
            files.push((path, bytes));
        }
    }
    let mut files: Vec<ArchiveFile> = Vec::new();
    let mut entries = Vec::new();
    let mut repositories = serde_json::Map::new();
    for (image, tags) in images {
        let mut layer_paths = Vec::new();
        for layer in &image.layers {
            let tar = layer.tar_bytes();
            let hex = layer.diff_id.trim_start_matches("sha256:");
            let path = match style {
                SaveStyle::Classic => {
                    add(&mut files, format!("{hex}/VERSION"), b"1.0".to_vec());
                    add(
                        &mut files,
                        format!("{hex}/json"),
                        format!("{{\"id\":\"{hex}\"}}").into_bytes(),
                    );
                    format!("{hex}/layer.tar")
                }
                SaveStyle::Blobs => blob_path(&layer.diff_id),
            };
            add(&mut files, path.clone(), tar);
            layer_paths.push(path);
        }
        let config_path = match style {
            SaveStyle::Classic => {
                format!("{}.json", image.config_digest.trim_start_matches("sha256:"))
            }
            SaveStyle::Blobs => blob_path(&image.config_digest),
        };
        add(&mut files, config_path.clone(), image.config_bytes.clone());
        for tag in tags.iter() {
            if let Some((repo, t)) = tag.rsplit_once(':') {
                let last = layer_paths.last().cloned().unwrap_or_default();
                let id = last.split('/').next().unwrap_or_default().to_string();
                repositories
                    .entry(repo.to_string())
                    .or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
                    .expect("repositories object")
                    .insert(t.to_string(), id.into());
            }
        }
        entries.push(serde_json::json!({
            "Config": config_path,
            "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { serde_json::json!(tags) },
            "Layers": layer_paths,
        }));
    }
    if style == SaveStyle::Classic {
        add(
            &mut files,
            "repositories".to_string(),
            serde_json::to_vec(&repositories).expect("repositories json"),
        );
    }
    add(
        &mut files,
        "manifest.json".to_string(),
        serde_json::to_vec(&entries).expect("manifest.json"),
    );
    files
}

impl BuiltLayer {
    /// The layer's tar, uncompressed.
    pub fn tar_bytes(&self) -> Vec<u8> {
        match self.compression {
            Compression::None => self.bytes.clone(),
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(self.bytes.as_slice())
                    .read_to_end(&mut out)
                    .expect("gunzip layer");
                out
            }
            Compression::Zstd => zstd::decode_all(self.bytes.as_slice()).expect("unzstd layer"),
        }
    }
}

impl BuiltImage {
    /// Its manifest, config and layers as `blobs/sha256/<hex>` files.
    pub fn blob_files(&self) -> Vec<ArchiveFile> {
        let mut files = vec![
            (
                blob_path(&self.manifest_digest),
                self.manifest_bytes.clone(),
            ),
            (blob_path(&self.config_digest), self.config_bytes.clone()),
        ];
        for l in &self.layers {
            files.push((blob_path(&l.digest), l.bytes.clone()));
        }
        files
    }

    /// An `index.json` entry for its manifest, with `annotations`.
    pub fn layout_entry(&self, annotations: &[(&str, &str)]) -> serde_json::Value {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::json!({
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": self.manifest_bytes.len(),
            "annotations": annotations,
        })
    }

    /// The image as an OCI image layout's files, its one `index.json`
    /// entry annotated with `annotations`.
    pub fn oci_layout_files(&self, annotations: &[(&str, &str)]) -> Vec<ArchiveFile> {
        oci_layout(vec![self.layout_entry(annotations)], self.blob_files())
    }

    /// The image as an OCI image layout tarball (as `ctr export` or skopeo
    /// write it), named by `org.opencontainers.image.ref.name` = `ref_name`
    /// (a tag, or a whole reference).
    pub fn oci_layout_tar(&self, ref_name: &str) -> Vec<u8> {
        tar_archive(&self.oci_layout_files(&[(OCI_REF_NAME, ref_name)]))
    }

    /// The image as a classic `docker save` tarball, with `repo_tags` as
    /// docker writes them (`busybox:latest`).
    pub fn docker_save_tar(&self, repo_tags: &[&str]) -> Vec<u8> {
        tar_archive(&docker_save(&[(self, repo_tags)], SaveStyle::Classic))
    }
}
