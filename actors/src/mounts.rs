//! The node's mount table (`/proc/self/mountinfo`), as berth reads it.

use std::path::{Path, PathBuf};

/// Every mount point on the node, with mountinfo's octal escapes (`\040`
/// for a space, and so on) undone.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(|p| PathBuf::from(unescape(p)))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `path` is a mount point now.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_are_undone() {
        assert_eq!(super::unescape("/run/a\\040b"), "/run/a b");
        assert_eq!(super::unescape("/plain/path"), "/plain/path");
        assert_eq!(super::unescape("/x\\"), "/x\\");
    }
}
