//! The CRI container log format kubelet reads: each line is
//! `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`, `F` for a whole line,
//! `P` for a piece (a line longer than [`LINE_MAX`] is cut into pieces;
//! output that ends without a newline is a piece). berth-shim writes it
//! for its containers, berthd for containers under other shims.

use crate::timefmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

/// The longest line written whole; longer ones are cut into `P` pieces.
pub const LINE_MAX: usize = 16 * 1024;

/// Opens (or makes, mode 0640) the log file at `path` for appending:
/// every write lands whole at its end, beside other writers.
pub fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Moves every whole line out of `buf` into `out` as CRI log lines, and a
/// full buffer without a newline as a piece.
pub fn take_lines(buf: &mut Vec<u8>, out: &mut Vec<u8>, now: SystemTime, tag: &str) {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        format_line(out, now, tag, true, &buf[start..start + nl]);
        start += nl + 1;
    }
    if start == 0 && buf.len() == LINE_MAX {
        format_line(out, now, tag, false, buf);
        start = buf.len();
    }
    buf.drain(..start);
}

/// Appends one CRI log line: `text` (no newline in it) as a whole line or a piece.
pub fn format_line(out: &mut Vec<u8>, now: SystemTime, tag: &str, full: bool, text: &[u8]) {
    timefmt::write_rfc3339_nano(out, now);
    out.push(b' ');
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn lines(input: &[&[u8]], tag: &str) -> Vec<String> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        // Fed as the copier reads: never more than the buffer has room for.
        for chunk in input {
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                let n = (LINE_MAX - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                take_lines(&mut buf, &mut out, UNIX_EPOCH, tag);
            }
        }
        if !buf.is_empty() {
            format_line(&mut out, UNIX_EPOCH, tag, false, &buf);
        }
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| {
                l.trim_start_matches("1970-01-01T00:00:00.000000000Z ")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn whole_lines_and_a_tail() {
        assert_eq!(
            lines(&[b"hello\nwor", b"ld\n\nno-newline"], "stdout"),
            vec![
                "stdout F hello",
                "stdout F world",
                "stdout F ",
                "stdout P no-newline"
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_into_pieces() {
        let long = vec![b'a'; LINE_MAX * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = lines(&[&input], "stderr");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], format!("stderr P {}", "a".repeat(LINE_MAX)));
        assert_eq!(got[1], format!("stderr P {}", "a".repeat(LINE_MAX)));
        assert_eq!(got[2], "stderr F aaaaaaaaaa");
    }
}
