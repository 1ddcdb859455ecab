//! The command line, parsed by hand: a handful of flags do not justify a
//! parser crate in a process whose memory is counted per container.

use std::ffi::OsString;
use std::path::PathBuf;

/// Where runc keeps its state unless told otherwise.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/berth/runc";

/// What `berth-shim start` is told about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub id: String,
    pub bundle: PathBuf,
    pub socket: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub events: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Start(Args),
    Version,
    Help,
}

pub const USAGE: &str = "usage: berth-shim start --id ID --bundle DIR --socket PATH \
[--runtime RUNC] [--runtime-root DIR] [--events SOCKET]";

/// Parses the arguments after the program name.
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
            other => return Err(format!("unknown flag {other}; {USAGE}")),
        }
    }
    let id = id.ok_or("--id is required")?;
    check_id(&id)?;
    let bundle = bundle.ok_or("--bundle is required")?;
    let socket = socket.ok_or("--socket is required")?;
    for (name, path) in [
        ("--bundle", &bundle),
        ("--socket", &socket),
        ("--runtime-root", &runtime_root),
    ] {
        if !path.is_absolute() {
            return Err(format!(
                "{name} {} must be an absolute path",
                path.display()
            ));
        }
    }
    if let Some(events) = &events {
        if !events.is_absolute() {
            return Err(format!(
                "--events {} must be an absolute path",
                events.display()
            ));
        }
    }
    Ok(Command::Start(Args {
        id,
        bundle,
        socket,
        runtime,
        runtime_root,
        events,
    }))
}

/// Container and exec ids end up in file names and runc's arguments, so
/// they keep to the characters runc itself accepts.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn start_with_every_flag() {
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
        ])
        .expect("valid");
        assert_eq!(
            cmd,
            Command::Start(Args {
                id: "c1".into(),
                bundle: "/b".into(),
                socket: "/b/s.sock".into(),
                runtime: "/usr/sbin/runc".into(),
                runtime_root: "/r".into(),
                events: Some("/e.sock".into()),
            })
        );
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
        assert!(parse_strs(&["start", "--id", "x", "--bundle", "/b"])
            .expect_err("an error")
            .contains("--socket"));
        assert!(
            parse_strs(&["start", "--id", "x", "--bundle", "b", "--socket", "/s"])
                .expect_err("an error")
                .contains("absolute")
        );
        assert!(
            parse_strs(&["start", "--id", "../x", "--bundle", "/b", "--socket", "/s"])
                .expect_err("an error")
                .contains("id")
        );
        assert!(parse_strs(&["start", "--id"])
            .expect_err("an error")
            .contains("needs a value"));
        assert!(parse_strs(&["serve"]).is_err());
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
    }
}
