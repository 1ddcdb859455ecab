//! The contract between berthd and `berth-shim`, in one place both sides
//! use: the shim's command line, the files it keeps in a container's
//! bundle, and the exit record it leaves there.
//!
//! The task API itself is containerd's (`containerd.task.v3.Task` over
//! ttrpc, crate containerd-shim-protos); this is what lies around it.
//! Nothing here needs an async runtime or a serialization crate: the shim,
//! one per container, keeps its memory small.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The shim's pid, written by the shim once it serves.
pub const SHIM_PID_FILE: &str = "shim.pid";
/// The shim's own log.
pub const SHIM_LOG_FILE: &str = "shim.log";
/// The container's exit ([`ExitRecord`]), written by the shim before it
/// reports the exit to anyone.
pub const EXIT_FILE: &str = "exit";
/// Where an exit record is written before it is renamed into place.
const EXIT_TMP_FILE: &str = ".exit.tmp";
/// The container's OCI runtime spec.
pub const SPEC_FILE: &str = "config.json";
/// The OCI runtime's log (`--log`).
pub const RUNTIME_LOG_FILE: &str = "runc.log";

/// Where the OCI runtime keeps its state unless told otherwise.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/berth/runc";

/// What `berth-shim start` is told about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The container id, as the runtime knows it.
    pub id: String,
    /// The OCI bundle (absolute); the shim keeps its files there.
    pub bundle: PathBuf,
    /// The unix socket the shim serves ttrpc on (absolute).
    pub socket: PathBuf,
    /// The OCI runtime binary: a path, or a name looked up in `PATH`.
    pub runtime: PathBuf,
    /// The runtime's `--root` (absolute).
    pub runtime_root: PathBuf,
    /// berthd's ttrpc socket for TaskExit events, if it takes them.
    pub events: Option<PathBuf>,
    /// Every exec goes through the runtime; otherwise the shim starts
    /// exec'd processes itself where it can.
    pub runtime_exec: bool,
    /// A runtime command that runs longer is killed (default: 120 s).
    pub runtime_timeout: Option<std::time::Duration>,
}

/// What the shim's command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Start(ShimArgs),
    Version,
    Help,
}

pub const USAGE: &str = "usage: berth-shim start --id ID --bundle DIR --socket PATH \
[--runtime RUNC] [--runtime-root DIR] [--events SOCKET] [--runtime-exec] \
[--runtime-timeout SECS]";

impl ShimArgs {
    /// The arguments of `berth-shim` (after the program name) that start
    /// a shim for these.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["start".into()];
        let mut flag = |name: &str, value: &Path| {
            argv.push(name.into());
            argv.push(value.as_os_str().to_owned());
        };
        flag("--id", Path::new(&self.id));
        flag("--bundle", &self.bundle);
        flag("--socket", &self.socket);
        flag("--runtime", &self.runtime);
        flag("--runtime-root", &self.runtime_root);
        if let Some(events) = &self.events {
            flag("--events", events);
        }
        if self.runtime_exec {
            argv.push("--runtime-exec".into());
        }
        if let Some(t) = self.runtime_timeout {
            argv.push("--runtime-timeout".into());
            argv.push(t.as_secs().to_string().into());
        }
        argv
    }
}

/// Parses the shim's arguments after the program name.
pub fn parse(mut argv: impl Iterator<Item = OsString>) -> Result<Command, String> {
    let sub = argv.next().ok_or_else(|| USAGE.to_string())?;
    match sub.to_str() {
        Some("start") => {}
        Some("--version" | "version") => return Ok(Command::Version),
        Some("--help" | "-h" | "help") => return Ok(Command::Help),
        _ => return Err(format!("unknown command {sub:?}; {USAGE}")),
    }
    let (mut id, mut bundle, mut socket, mut events) = (None, None, None, None);
    let mut runtime = PathBuf::from("runc");
    let mut runtime_root = PathBuf::from(DEFAULT_RUNTIME_ROOT);
    let mut runtime_exec = false;
    let mut runtime_timeout = None;
    while let Some(arg) = argv.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("flag {a:?} is not UTF-8"))?;
        // Both `--flag value` and `--flag=value` are accepted.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(OsString::from(v))),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("flag {flag} needs a value"))
        };
        match flag.as_str() {
            "--id" => {
                id = Some(
                    value()?
                        .into_string()
                        .map_err(|v| format!("--id {v:?} is not UTF-8"))?,
                )
            }
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--runtime" => runtime = PathBuf::from(value()?),
            "--runtime-root" => runtime_root = PathBuf::from(value()?),
            "--events" => events = Some(PathBuf::from(value()?)),
            "--runtime-exec" if inline.is_none() => runtime_exec = true,
            "--runtime-timeout" => {
                let v = value()?;
                let secs = v
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("--runtime-timeout {v:?} is not a number of seconds"))?;
                runtime_timeout = Some(std::time::Duration::from_secs(secs));
            }
            other => return Err(format!("unknown flag {other}; {USAGE}")),
        }
    }
    let id = id.ok_or("--id is required")?;
    check_id(&id)?;
    let bundle = bundle.ok_or("--bundle is required")?;
    let socket = socket.ok_or("--socket is required")?;
    for (name, path) in [
        ("--bundle", Some(&bundle)),
        ("--socket", Some(&socket)),
        ("--runtime-root", Some(&runtime_root)),
        ("--events", events.as_ref()),
    ] {
        if let Some(path) = path.filter(|p| !p.is_absolute()) {
            return Err(format!(
                "{name} {} must be an absolute path",
                path.display()
            ));
        }
    }
    Ok(Command::Start(ShimArgs {
        id,
        bundle,
        socket,
        runtime,
        runtime_root,
        events,
        runtime_exec,
        runtime_timeout,
    }))
}

/// Container and exec ids end up in file names and the runtime's
/// arguments, so they keep to the characters runc itself accepts.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id {id:?} must be 1-128 characters of letters, digits, '_', '-', '.', '+', not starting with '.'"
        ))
    }
}

/// The socket beside a shim's ttrpc socket where attaches are asked for
/// (the task API has no attach).
pub fn attach_socket(socket: &Path) -> PathBuf {
    socket.with_extension("attach")
}

/// An attach to the container's own stdio, asked on the attach socket as
/// one line; the shim answers `ok` or `error: WHY` on one line. Each path
/// is a FIFO berthd made and holds open: the shim writes the container's
/// output into `stdout` and `stderr` (as it also logs it) and copies
/// `stdin` into the container's stdin until `stdin` ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// The end of `stdin` closes the container's stdin (CRI `stdin_once`).
    pub close_stdin: bool,
}

/// The attach socket's answer when the attach is made.
pub const ATTACH_OK: &str = "ok";

impl AttachRequest {
    /// The request as its line: `attach` then tab-separated `key=value`.
    pub fn to_line(&self) -> Result<String, String> {
        let mut line = String::from("attach");
        for (key, path) in [
            ("stdin", &self.stdin),
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
        ] {
            if let Some(p) = path {
                let p = p
                    .to_str()
                    .filter(|p| !p.contains(['\t', '\n']))
                    .ok_or_else(|| format!("{key} path {p:?} cannot go in a request line"))?;
                let _ = write!(line, "\t{key}={p}");
            }
        }
        if self.close_stdin {
            line.push_str("\tclose_stdin=1");
        }
        line.push('\n');
        Ok(line)
    }

    pub fn parse(line: &str) -> Result<AttachRequest, String> {
        let mut fields = line.trim_end_matches('\n').split('\t');
        if fields.next() != Some("attach") {
            return Err("not an attach request".to_string());
        }
        let mut req = AttachRequest::default();
        for f in fields {
            let (key, value) = f
                .split_once('=')
                .ok_or_else(|| format!("field {f:?} has no value"))?;
            let path = || {
                let p = PathBuf::from(value);
                if p.is_absolute() {
                    Ok(Some(p))
                } else {
                    Err(format!("{key} path {value:?} is not absolute"))
                }
            };
            match key {
                "stdin" => req.stdin = path()?,
                "stdout" => req.stdout = path()?,
                "stderr" => req.stderr = path()?,
                "close_stdin" => req.close_stdin = value == "1",
                _ => {}
            }
        }
        Ok(req)
    }
}

/// A container's exit as kept in `BUNDLE/exit`, so that berthd learns it
/// even when it was down at the time, or the shim is gone since:
/// `{"status": N, "exited_at_unix_nanos": T}`, with a `"note"` when
/// berthd wrote it for a shim that could not (saying why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal that ended it.
    pub status: u32,
    pub exited_at_unix_nanos: u128,
    pub note: Option<String>,
}

impl ExitRecord {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        let mut out = format!(
            "{{\"status\": {}, \"exited_at_unix_nanos\": {}",
            self.status, self.exited_at_unix_nanos
        );
        if let Some(note) = &self.note {
            out.push_str(", \"note\": ");
            json_string(&mut out, note);
        }
        out.push_str("}\n");
        out
    }

    /// Writes the record into `bundle`, whole or not at all: to a
    /// temporary file, made durable, then renamed into place, so a reader
    /// finds no file or a whole one, even after the node crashed.
    pub fn write_to(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(EXIT_TMP_FILE);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(self.to_json().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, bundle.join(EXIT_FILE))
    }

    /// The record in `bundle`, or None when the container has not exited.
    pub fn read_from(bundle: &Path) -> std::io::Result<Option<ExitRecord>> {
        let path = bundle.join(EXIT_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8(text).map_err(|_| bad_record(&path, "not UTF-8"))?;
        ExitRecord::parse(&text)
            .map(Some)
            .map_err(|why| bad_record(&path, &why))
    }

    /// Reads a record as [`to_json`](Self::to_json) writes it: one flat
    /// JSON object, numbers and strings, fields in any order, unknown
    /// fields ignored.
    pub fn parse(text: &str) -> Result<ExitRecord, String> {
        let mut p = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let (mut status, mut at, mut note) = (None, None, None);
        p.expect(b'{')?;
        if !p.eat(b'}') {
            loop {
                let key = p.string()?;
                p.expect(b':')?;
                match key.as_str() {
                    "status" => status = Some(p.number()?),
                    "exited_at_unix_nanos" => at = Some(p.number()?),
                    "note" => note = Some(p.string()?),
                    _ => p.skip_value()?,
                }
                if p.eat(b'}') {
                    break;
                }
                p.expect(b',')?;
            }
        }
        p.end()?;
        let status = status.ok_or("no status")?;
        Ok(ExitRecord {
            status: u32::try_from(status).map_err(|_| format!("status {status} is too large"))?,
            exited_at_unix_nanos: at.ok_or("no exited_at_unix_nanos")?,
            note,
        })
    }
}

fn bad_record(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{} is not an exit record: {why}", path.display()),
    )
}

/// `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Just enough JSON for a flat record.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_space();
        if self.bytes.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", b as char, self.at))
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_space();
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("trailing bytes at byte {}", self.at))
        }
    }

    fn number(&mut self) -> Result<u128, String> {
        self.skip_space();
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        std::str::from_utf8(&self.bytes[start..self.at])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("expected a whole number at byte {start}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let b = *self.bytes.get(self.at).ok_or("an unterminated string")?;
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = *self.bytes.get(self.at).ok_or("an unterminated escape")?;
                    self.at += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("a bad \\u escape")?;
                            self.at += 4;
                            let c = char::from_u32(hex).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(format!("a bad escape at byte {}", self.at)),
                    }
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| "a string that is not UTF-8".to_string())
    }

    /// A value of a field the record does not know: a string or a number.
    fn skip_value(&mut self) -> Result<(), String> {
        self.skip_space();
        if self.bytes.get(self.at) == Some(&b'"') {
            self.string().map(|_| ())
        } else {
            self.number().map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    fn args() -> ShimArgs {
        ShimArgs {
            id: "c1".into(),
            bundle: "/b".into(),
            socket: "/b/s.sock".into(),
            runtime: "/usr/sbin/runc".into(),
            runtime_root: "/r".into(),
            events: Some("/e.sock".into()),
            runtime_exec: false,
            runtime_timeout: Some(std::time::Duration::from_secs(7)),
        }
    }

    #[test]
    fn the_command_line_berthd_writes_is_the_one_the_shim_reads() {
        let mut a = args();
        assert_eq!(
            parse(a.to_argv().into_iter()),
            Ok(Command::Start(a.clone()))
        );
        a.events = None;
        a.runtime_exec = true;
        assert_eq!(parse(a.to_argv().into_iter()), Ok(Command::Start(a)));
        let cmd = parse_strs(&[
            "start",
            "--id",
            "c1",
            "--bundle=/b",
            "--socket",
            "/b/s.sock",
            "--runtime",
            "/usr/sbin/runc",
            "--runtime-root",
            "/r",
            "--events",
            "/e.sock",
            "--runtime-timeout=7",
        ]);
        assert_eq!(cmd, Ok(Command::Start(args())));
    }

    #[test]
    fn defaults_and_errors() {
        let Ok(Command::Start(a)) =
            parse_strs(&["start", "--id", "x", "--bundle", "/b", "--socket", "/s"])
        else {
            panic!("should parse");
        };
        assert_eq!(a.runtime, PathBuf::from("runc"));
        assert_eq!(a.runtime_root, PathBuf::from(DEFAULT_RUNTIME_ROOT));
        let err = |args: &[&str]| parse_strs(args).expect_err("an error");
        assert!(err(&["start", "--id", "x", "--bundle", "/b"]).contains("--socket"));
        assert!(
            err(&["start", "--id", "x", "--bundle", "b", "--socket", "/s"]).contains("absolute")
        );
        assert!(
            err(&["start", "--id", "x", "--bundle", "/b", "--socket", "/s", "--events", "e"])
                .contains("--events")
        );
        assert!(err(&["start", "--id", "../x", "--bundle", "/b", "--socket", "/s"]).contains("id"));
        assert!(err(&["start", "--id"]).contains("needs a value"));
        let base = ["start", "--id", "x", "--bundle", "/b", "--socket", "/s"];
        for bad in ["0", "-1", "ten"] {
            let mut args = base.to_vec();
            args.extend(["--runtime-timeout", bad]);
            assert!(err(&args).contains("--runtime-timeout"), "{bad}");
        }
        assert!(parse_strs(&["serve"]).is_err());
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn exit_records_round_trip_with_or_without_a_note() {
        let plain = ExitRecord {
            status: 143,
            exited_at_unix_nanos: 1_700_000_000_000_000_001,
            note: None,
        };
        assert_eq!(
            plain.to_json(),
            "{\"status\": 143, \"exited_at_unix_nanos\": 1700000000000000001}\n"
        );
        assert_eq!(ExitRecord::parse(&plain.to_json()), Ok(plain.clone()));
        let noted = ExitRecord {
            note: Some("the shim died: \"gone\"\n\\ é \u{1}".into()),
            ..plain
        };
        assert_eq!(ExitRecord::parse(&noted.to_json()), Ok(noted.clone()));
        let dir = std::env::temp_dir().join(format!("berth-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(ExitRecord::read_from(&dir).expect("read"), None);
        noted.write_to(&dir).expect("write");
        assert_eq!(ExitRecord::read_from(&dir).expect("read"), Some(noted));
        assert!(!dir.join(EXIT_TMP_FILE).exists());
        std::fs::write(dir.join(EXIT_FILE), "garbage").expect("garbage");
        let err = ExitRecord::read_from(&dir).expect_err("garbage");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_records_are_errors_never_panics() {
        for text in [
            "",
            "{",
            "{}",
            "{\"status\": }",
            "{\"status\": 1}",
            "{\"status\": 99999999999, \"exited_at_unix_nanos\": 1}",
            "{\"status\": 1, \"exited_at_unix_nanos\": 1} x",
            "{\"status\": 1, \"exited_at_unix_nanos\": 1, \"note\": \"\\u12\"}",
            "{\"status\": 1, \"exited_at_unix_nanos\": 1, \"note\": \"\\",
            "{\"status\": -1, \"exited_at_unix_nanos\": 1}",
        ] {
            assert!(ExitRecord::parse(text).is_err(), "{text:?}");
        }
        let extra = "{\"other\": \"x\", \"status\": 0, \"exited_at_unix_nanos\": 5, \"n\": 7}";
        assert_eq!(
            ExitRecord::parse(extra).map(|r| (r.status, r.exited_at_unix_nanos)),
            Ok((0, 5))
        );
    }

    #[test]
    fn attach_requests_round_trip_and_bad_ones_are_refused() {
        let req = AttachRequest {
            stdin: Some("/run/berth/io/a/stdin".into()),
            stdout: Some("/run/berth/io/a/stdout".into()),
            stderr: None,
            close_stdin: true,
        };
        let line = req.to_line().expect("line");
        assert_eq!(
            line,
            "attach\tstdin=/run/berth/io/a/stdin\tstdout=/run/berth/io/a/stdout\tclose_stdin=1\n"
        );
        assert_eq!(AttachRequest::parse(&line), Ok(req));
        assert!(AttachRequest::parse("exec\n").is_err());
        assert!(AttachRequest::parse("attach\tstdout=relative\n").is_err());
        assert!(AttachRequest::parse("attach\tstdout\n").is_err());
        let bad = AttachRequest {
            stdout: Some("/a\tb".into()),
            ..Default::default()
        };
        assert!(bad.to_line().is_err());
        assert_eq!(
            attach_socket(Path::new("/run/berth/s/abc.sock")),
            PathBuf::from("/run/berth/s/abc.attach")
        );
    }
}
