//! Checked helpers for what clients send: text without NUL bytes and within
//! a size, absolute paths that stay where they are put, and values shown
//! in error messages cut at a character boundary. Every request validator
//! builds on these; nothing else slices a client's string by byte index.

use crate::{Error, Result};
use std::path::{Component, Path};

/// The longest single argument or environment entry the kernel passes to
/// a new program (`MAX_ARG_STRLEN`, 32 pages).
pub const ARG_MAX_ONE: usize = 128 * 1024;

/// The most the kernel takes for a program's arguments and environment
/// together, with the default 8 MiB stack (a quarter of it).
pub const ARG_MAX_ALL: usize = 2 * 1024 * 1024;

/// Names (pods, containers, namespaces): a Kubernetes object name is at
/// most 253 bytes.
pub const NAME_MAX: usize = 253;

/// Paths: the kernel's `PATH_MAX`.
pub const PATH_MAX: usize = 4096;

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// `s` quoted for an error message, cut to 64 bytes with its full size
/// said when longer.
pub fn shown(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        format!("{s:?}")
    } else {
        format!("{:?}… ({} bytes)", prefix(s, SHOWN), s.len())
    }
}

/// Text with no NUL byte and at most `max` bytes.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(format!(
            "{field} {} is longer than {max} bytes",
            shown(value)
        )));
    }
    if value.contains('\0') {
        return Err(invalid(format!(
            "{field} {} holds a NUL byte",
            shown(value)
        )));
    }
    Ok(())
}

/// Text that must not be empty either.
pub fn required(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    text(field, value, max)
}

/// One line: text with no line break (it goes into a file line by line).
pub fn line(field: &str, value: &str, max: usize) -> Result<()> {
    text(field, value, max)?;
    if value.contains(['\n', '\r']) {
        return Err(invalid(format!(
            "{field} {} holds a line break",
            shown(value)
        )));
    }
    Ok(())
}

/// An absolute path with no `..` component.
pub fn absolute(field: &str, value: &str) -> Result<()> {
    text(field, value, PATH_MAX)?;
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{field} {} is not an absolute path",
            shown(value)
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "{field} {} holds a \"..\" component",
            shown(value)
        )));
    }
    Ok(())
}

/// A relative path that stays below where it is joined: no root, no `..`.
pub fn inside(field: &str, value: &str) -> Result<()> {
    text(field, value, PATH_MAX)?;
    let path = Path::new(value);
    if path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "{field} {} must be relative and stay inside its directory",
            shown(value)
        )));
    }
    Ok(())
}

/// A command line and environment the kernel will take: each entry within
/// `MAX_ARG_STRLEN` and without NUL, all of them within [`ARG_MAX_ALL`].
pub fn exec_strings<'a>(
    field: &str,
    entries: impl IntoIterator<Item = &'a str>,
    total: &mut usize,
) -> Result<()> {
    for e in entries {
        text(field, e, ARG_MAX_ONE)?;
        *total += e.len() + 1;
        if *total > ARG_MAX_ALL {
            return Err(invalid(format!(
                "{field}: the command line and environment together pass the kernel's {ARG_MAX_ALL} bytes"
            )));
        }
    }
    Ok(())
}

/// Labels or annotations: keys non-empty and at most 317 bytes (a 253-byte
/// prefix, '/', a 63-byte name), the whole map within `total_max` bytes.
pub fn string_map<'a>(
    field: &str,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
    total_max: usize,
) -> Result<()> {
    const KEY_MAX: usize = 253 + 1 + 63;
    let mut total = 0usize;
    for (k, v) in map {
        required(&format!("{field} key"), k, KEY_MAX)?;
        text(&format!("{field} {}", shown(k)), v, total_max)?;
        total += k.len() + v.len();
        if total > total_max {
            return Err(invalid(format!(
                "{field}: keys and values together pass {total_max} bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_never_splits_a_character() {
        let s = format!("{}é{}", "a".repeat(63), "é".repeat(3000));
        // Byte 64 is inside the first 'é'.
        assert_eq!(prefix(&s, 64), "a".repeat(63));
        assert_eq!(prefix(&s, 65).len(), 65);
        assert_eq!(prefix("short", 64), "short");
        assert_eq!(prefix("ééé", 0), "");
        assert!(shown(&s).ends_with(&format!("({} bytes)", s.len())));
    }

    #[test]
    fn text_refuses_nul_and_length_naming_the_field() {
        let e = text("working dir", "/a\0b", 10).unwrap_err().to_string();
        assert!(e.contains("working dir") && e.contains("NUL"), "{e}");
        let e = text("name", &"x".repeat(11), 10).unwrap_err().to_string();
        assert!(e.contains("name") && e.contains("longer than 10"), "{e}");
        assert!(required("image", "", 10).is_err());
        assert!(line("option", "a\nb", 10).is_err());
        text("name", "fine", 10).unwrap();
    }

    #[test]
    fn paths_stay_where_they_are_put() {
        absolute("host path", "/var/lib/x").unwrap();
        assert!(absolute("host path", "var").is_err());
        assert!(absolute("host path", "/var/../etc").is_err());
        assert!(absolute("host path", "/a\0").is_err());
        inside("log path", "c/0.log").unwrap();
        assert!(inside("log path", "/etc/passwd").is_err());
        assert!(inside("log path", "../x").is_err());
        assert!(inside("log path", "a/../../x").is_err());
    }

    #[test]
    fn exec_strings_keep_to_the_kernels_limits() {
        let mut total = 0;
        exec_strings("command", ["sh", "-c", "true"], &mut total).unwrap();
        assert_eq!(total, 11);
        let big = "x".repeat(ARG_MAX_ONE + 1);
        assert!(exec_strings("args", [big.as_str()], &mut 0).is_err());
        let near = "x".repeat(ARG_MAX_ONE);
        let many = vec![near.as_str(); 20];
        let e = exec_strings("env", many, &mut 0).unwrap_err().to_string();
        assert!(e.contains("together"), "{e}");
    }

    #[test]
    fn maps_are_bounded_in_keys_and_total() {
        let m: std::collections::BTreeMap<String, String> =
            [("a".to_string(), "b".to_string())].into();
        string_map("labels", &m, 100).unwrap();
        let m: std::collections::BTreeMap<String, String> =
            [(String::new(), "b".to_string())].into();
        assert!(string_map("labels", &m, 100).is_err());
        let m: std::collections::BTreeMap<String, String> =
            [("k".to_string(), "v".repeat(200))].into();
        let e = string_map("annotations", &m, 100).unwrap_err().to_string();
        assert!(e.contains("annotations"), "{e}");
    }
}
