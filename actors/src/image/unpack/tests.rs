use super::*;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Builds tar streams with exact headers (also unsafe ones).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Written into the name field directly: set_path refuses '..'.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn add(mut self, mut h: tar::Header, data: &[u8]) -> Self {
        h.set_cksum();
        self.0.append(&h, data).expect("append");
        self
    }

    fn file(self, path: &str, data: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(path, EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(uid);
        self.add(h, data)
    }

    fn dir(self, path: &str) -> Self {
        self.add(Self::header(path, EntryType::Directory, 0o755, 0), &[])
    }

    fn link(self, path: &str, kind: EntryType, target: &str) -> Self {
        let mut h = Self::header(path, kind, 0o777, 0);
        h.set_link_name(target).expect("link name");
        self.add(h, &[])
    }

    fn device(self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(path, EntryType::Char, 0o620, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.add(h, &[])
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().expect("finish")
    }
}

#[test]
fn applies_files_links_devices_and_whiteouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = Tar::new()
        .dir("./etc/")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0)
        .file("bin/tool", b"#!/bin/sh\n", 0o4755, 1000)
        .link("bin/alias", EntryType::Symlink, "/bin/tool")
        .link("bin/hard", EntryType::Link, "bin/tool")
        .device("dev/null", 1, 3)
        .file("gone/.wh.old", b"", 0o644, 0)
        .file("fresh/.wh..wh..opq", b"", 0o644, 0)
        .bytes();
    let applied = apply(&layer[..], dir.path()).expect("apply");
    assert_eq!(applied.whiteouts, 2);
    let root = dir.path();

    let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!((tool.uid(), tool.gid()), (1000, 1000));
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::read_link(root.join("bin/alias")).expect("symlink"),
        Path::new("/bin/tool")
    );
    assert_eq!(
        std::fs::metadata(root.join("bin/hard"))
            .expect("hard")
            .ino(),
        tool.ino()
    );
    let null = std::fs::metadata(root.join("dev/null")).expect("dev");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    let wh = std::fs::symlink_metadata(root.join("gone/old")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!root.join("gone/.wh.old").exists());
    assert_eq!(
        xattr::get(root.join("fresh"), OPAQUE_XATTR).expect("xattr"),
        Some(b"y".to_vec())
    );
    assert_eq!(
        std::fs::metadata(root.join("etc")).expect("etc").mtime(),
        1_600_000_000
    );
}

#[test]
fn refuses_entries_that_escape_the_snapshot() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            Tar::new().file("../escape", b"x", 0o644, 0).bytes(),
        ),
        (
            "nested dot-dot",
            Tar::new().file("a/../../escape", b"x", 0o644, 0).bytes(),
        ),
        (
            "absolute",
            Tar::new().file("/abs/file", b"x", 0o644, 0).bytes(),
        ),
        (
            "through a symlink",
            Tar::new()
                .link("link", EntryType::Symlink, "/tmp")
                .file("link/planted", b"x", 0o644, 0)
                .bytes(),
        ),
        (
            "whiteout through a symlink",
            Tar::new()
                .link("link", EntryType::Symlink, "/etc")
                .file("link/.wh.passwd", b"", 0o644, 0)
                .bytes(),
        ),
        (
            "hard link outside",
            Tar::new()
                .link("h", EntryType::Link, "../../etc/passwd")
                .bytes(),
        ),
    ];
    for (what, layer) in cases {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("snap");
        std::fs::create_dir(&root).expect("mkdir");
        let err = apply(&layer[..], &root).expect_err(what);
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.starts_with("unsafe layer")),
            "{what}: {err}"
        );
        assert!(!outer.path().join("escape").exists(), "{what}");
        assert!(!Path::new("/tmp/planted").exists(), "{what}");
    }
}

#[test]
fn detects_gzip_zstd_and_plain_layers() {
    let plain = Tar::new().file("a", b"hello", 0o644, 0).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = zstd::encode_all(&plain[..], 1).expect("zstd");
    for (what, blob) in [("plain", plain.clone()), ("gzip", gz), ("zstd", zst)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = decompress(&blob[..]).expect(what);
        apply(r, dir.path()).expect(what);
        assert_eq!(std::fs::read(dir.path().join("a")).expect(what), b"hello");
    }
}

#[test]
fn a_truncated_gzip_layer_is_corrupt() {
    let plain = Tar::new().file("a", &vec![7u8; 100_000], 0o644, 0).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let dir = tempfile::tempdir().expect("tempdir");
    let r = decompress(&gz[..gz.len() / 2]).expect("header ok");
    let err = apply(r, dir.path()).expect_err("truncated");
    assert!(matches!(err, Error::DataLoss(_)), "{err}");
}
